"""One clear line for bad input: `UsageError` carries it, `cli_main` prints it and exits non-zero."""
import functools
import signal
import sys


class UsageError(Exception):
    """Bad input or a missing prerequisite. The message says what was wrong and what to do."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C does."""


def _raise_terminated(signum, frame):
    raise Terminated()


def cli_main(func):
    """Wrap a command's main(): a UsageError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, _raise_terminated)  # so `finally` blocks stop what this process started
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Terminated:
            print("terminated", file=sys.stderr)
            sys.exit(143)

    return wrapper


def positive_int(text: str, maximum: int | None = None) -> int:
    """An argparse type for counts: a whole number of at least 1 (the parser turns its error into one line)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(f"{value} must be at most {maximum}")
    return value


def port_number(text: str) -> int:
    """An argparse type for a TCP port to listen on: 1 to 65535."""
    return positive_int(text, maximum=65535)


class ArgParser:
    """argparse.ArgumentParser whose errors are one `error:` line (via UsageError), not usage text."""

    def __new__(cls, *args, **kwargs):
        import argparse

        class _Parser(argparse.ArgumentParser):
            def error(self, message):
                raise UsageError(f"{self.prog}: {message} (see --help)")

        return _Parser(*args, **kwargs)
