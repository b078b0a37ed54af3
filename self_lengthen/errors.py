"""One clear line for bad input: `UsageError` carries it, `cli_main` prints it and exits non-zero."""
import functools
import os
import select
import signal
import sys


class UsageError(Exception):
    """Bad input or a missing prerequisite. The message says what was wrong and what to do."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C does."""


def _raise_terminated(signum, frame):
    raise Terminated()


def cli_main(func):
    """Wrap a command's main(): a UsageError becomes `error: <message>` on stderr and exit code 2; a reader that
    closes stdout early (`| head`) ends the command quietly."""

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
        except BrokenPipeError:
            if not _stdout_is_closed():
                raise
            # the reader left (`... | head`): stop quietly, as other command-line tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)

    return wrapper


def _stdout_is_closed() -> bool:
    """Whether stdout's reader has gone (a BrokenPipeError can also come from a socket: a real error). A pipe with
    no reader left polls as an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # stdout replaced or already closed: not a pipe we can ask
        return False


class NotWholeNumber(ValueError):
    pass


class OutOfRange(ValueError):
    pass


def whole_number_in_range(text: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """`text` as an int within [minimum, maximum]; the error's message says which rule it broke."""
    try:
        value = int(text)
    except ValueError:
        raise NotWholeNumber(f"{text!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise OutOfRange(f"{value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise OutOfRange(f"{value} must be at most {maximum}")
    return value


def _argparse_type(minimum: int, maximum: int | None = None):
    def parse(text: str) -> int:
        import argparse

        try:
            return whole_number_in_range(text, minimum, maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


# argparse types; the parser turns their error into one line.
positive_int = _argparse_type(1)  # a count: a whole number of at least 1
port_number = _argparse_type(1, 65535)  # a TCP port to listen on


class ArgParser:
    """argparse.ArgumentParser whose errors are one `error:` line (via UsageError), not usage text."""

    def __new__(cls, *args, **kwargs):
        import argparse

        class _Parser(argparse.ArgumentParser):
            def error(self, message):
                raise UsageError(f"{self.prog}: {message} (see --help)")

        return _Parser(*args, **kwargs)
