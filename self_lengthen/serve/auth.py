"""The cluster key: when one is set, every port of ours (API server, controller, workers) refuses a request without
it, and every call between our servers carries it.

The key comes from a file (--api_key_file, or $SELF_LENGTHEN_API_KEY_FILE) or from $SELF_LENGTHEN_API_KEY; never from
a command line (where `ps` would show it), and is
never logged. With no key set every port is open, which is only allowed on loopback (see cluster.Launch).
"""
import hmac
import json
import os
from pathlib import Path

from ..errors import UsageError

API_KEY_ENV = "SELF_LENGTHEN_API_KEY"
API_KEY_FILE_ENV = "SELF_LENGTHEN_API_KEY_FILE"


def read_key(key_file: str | None = None) -> str | None:
    """The key from `key_file`, else from the file $SELF_LENGTHEN_API_KEY_FILE names, else $SELF_LENGTHEN_API_KEY;
    None when none is set."""
    key_file = key_file or os.environ.get(API_KEY_FILE_ENV, "").strip() or None
    if key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
        if not key:
            raise UsageError(f"the API key file {key_file} is empty; put the key in it")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


def auth_headers(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _presented(scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class RequireKey:
    """ASGI middleware: an HTTP request without `Authorization: Bearer <key>` gets 401, whatever its route."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            token = _presented(scope)
            if token is None or not hmac.compare_digest(token, self.key):
                body = json.dumps({"error": {"message": "a valid API key is required (Authorization: Bearer KEY)",
                                             "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def protect(app, key: str | None):
    """`app` behind RequireKey when a key is set; `app` itself otherwise."""
    if key:
        app.add_middleware(RequireKey, key=key)
    return app
