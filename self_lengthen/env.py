"""Numbers read from the environment, checked where they are read: a bad value is one line that names the variable
and says what it takes (a UsageError), never a traceback and never a silently accepted negative."""
import ipaddress
import os
import re

from .errors import NotWholeNumber, OutOfRange, UsageError, whole_number_in_range


def _raw(name: str) -> str | None:
    raw = os.environ.get(name, "").strip()
    return raw or None


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        return whole_number_in_range(raw, minimum, maximum)
    except NotWholeNumber:
        raise UsageError(f"{name}={raw!r} is not a whole number; set it to an integer") from None
    except OutOfRange:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise UsageError(f"{name}={int(raw)} is out of range: it must be {bounds}") from None


def env_port(name: str, default: int) -> int:
    return env_int(name, default, minimum=1, maximum=65535)


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds."""
    raw = _raw(name)
    if raw is None:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number; set it to a positive number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{name}={raw} must be a positive, finite number of seconds")
    return value


def env_gib(name: str, default: int) -> int:
    """A positive whole number of GiB (vLLM's VLLM_CPU_KVCACHE_SPACE)."""
    return env_int(name, default, minimum=1)


def is_http_url(text: str) -> bool:
    return bool(re.fullmatch(r"https?://[^/\s]+(/\S*)?", text))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def check_environment() -> None:
    """Every number the project reads from the environment, checked at once before a run starts anything."""
    env_int("WORLD_SIZE", 1, minimum=1)
    env_int("RANK", 0, minimum=0)
    for name, default in (("MASTER_PORT", 29500), ("SELF_LENGTHEN_API_PORT", 8000),
                          ("SELF_LENGTHEN_CONTROLLER_PORT", 21001), ("SELF_LENGTHEN_WORKER_PORT", 21002)):
        env_port(name, default)
    for name, default in (("SELF_LENGTHEN_BARRIER_TIMEOUT", 3600), ("SELF_LENGTHEN_HEARTBEAT_TIMEOUT", 300),
                          ("FASTCHAT_WORKER_API_TIMEOUT", 3600)):
        env_seconds(name, default)
    env_gib("VLLM_CPU_KVCACHE_SPACE", 4)
    base_url = _raw("SELF_LENGTHEN_BASE_URL")
    if base_url and not is_http_url(base_url):
        raise UsageError(f"SELF_LENGTHEN_BASE_URL={base_url!r} is not an http(s) URL; set it like http://HOST:8000/v1")
    for name, what in (("NODE_ADDR", "this node's address"), ("MASTER_ADDR", "the master node's address")):
        addr = _raw(name)
        if addr and not (_is_ip(addr) or re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", addr)):
            raise UsageError(f"{name}={addr!r} is not an IP address or host name; set it to {what} on the network "
                             f"the nodes share")
    from .serve.auth import read_key

    read_key()  # a key file that is missing or empty
