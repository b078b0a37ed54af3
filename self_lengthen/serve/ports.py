"""Port checks shared by the launcher and the servers."""
import socket
import time


def port_in_use(host: str, port: int) -> str | None:
    """None if host:port can be bound now, else a one-line reason."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"port {port} on {host} is already in use ({exc.strerror}); stop what holds it or pick another port"
    return None


def wait_port_free(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while port_in_use(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
