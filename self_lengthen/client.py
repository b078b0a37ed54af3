"""The OpenAI-compatible client every stage uses: the method's sampling defaults, timeouts, retries, one clear error.

Connection errors, timeouts, 5xx answers and bodies that are not the expected JSON are retried with exponential
backoff; after the last try an `EndpointError` says what failed. A 4xx (an unknown model, say) is not retried: it
raises `RequestRejected` at once with the server's message. The base URL and API key come from the arguments or
$SELF_LENGTHEN_BASE_URL (else the master's API server) and the cluster key ($SELF_LENGTHEN_API_KEY[_FILE]).
"""
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import requests

from .env import env_int, env_port, is_http_url
from .errors import UsageError
from .serve.auth import read_key



def default_base_url() -> str:
    """The API server run_server.sh starts: on the master, at $SELF_LENGTHEN_API_PORT (8000)."""
    multi_node = env_int("WORLD_SIZE", 1, minimum=1) > 1
    host = os.environ.get("MASTER_ADDR") if multi_node and os.environ.get("MASTER_ADDR") else "127.0.0.1"
    return f"http://{host}:{env_port('SELF_LENGTHEN_API_PORT', 8000)}/v1"

# Self-Lengthen's sampling for generation and extension.
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}


# Fields our API server (like vLLM's) takes but OpenAI-style hosted APIs reject.
ENGINE_ONLY = ("top_k", "repetition_penalty", "min_tokens", "ignore_eos", "reject_early")


class EndpointError(UsageError):
    """The endpoint kept failing (unreachable, timing out, 5xx or garbage) through every retry."""


class RequestRejected(UsageError):
    """The endpoint refused the request (4xx): retrying will not help."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    completion_tokens: int


class RequestCount:
    """What the stages read from whatever answers their requests, kept right across threads: requests sent and not
    yet answered (in_flight) and completion tokens of every answer received (tokens_received)."""

    def __init__(self):
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.tokens_received = 0

    @contextmanager
    def sending(self):
        with self._count_lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._count_lock:
                self.in_flight -= 1

    def received(self, tokens: int) -> None:
        with self._count_lock:
            self.tokens_received += tokens


class Client(RequestCount):
    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 1800.0,
                 retries: int = 4, backoff: float = 2.0, sampling: dict | None = None, engine_fields: bool = True):
        """engine_fields=False: a hosted API (a judge, say) that rejects the engine's extra sampling fields.
        api_key=None: the cluster key (see serve/auth.py); "" sends none."""
        self.base_url = (base_url or os.environ.get("SELF_LENGTHEN_BASE_URL") or default_base_url()).rstrip("/")
        if not is_http_url(self.base_url):
            raise UsageError(f"the endpoint {self.base_url!r} is not an http(s) URL; give one like "
                             f"http://HOST:8000/v1")
        self.api_key = (api_key if api_key is not None else read_key()) or None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}
        self.engine_fields = engine_fields
        self._local = threading.local()
        super().__init__()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            if self.api_key:
                self._local.session.headers["Authorization"] = f"Bearer {self.api_key}"
        return self._local.session

    def _post(self, path: str, payload: dict) -> Completion:
        url = f"{self.base_url}{path}"
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with self.sending():
                    r = self._session().post(url, json=payload, timeout=self.timeout)
            except requests.Timeout:
                last = f"timed out after {self.timeout:.0f}s"
                continue
            except requests.ConnectionError as exc:
                last = f"cannot connect ({type(exc).__name__})"
                continue
            if 400 <= r.status_code < 500:
                raise RequestRejected(f"{url} refused the request ({r.status_code}): {_error_message(r)}")
            if r.status_code >= 500:
                last = f"server error {r.status_code}: {_error_message(r)}"
                continue
            try:
                body = r.json()
                choice = body["choices"][0]
                text = choice["message"]["content"] if "message" in choice else choice["text"]
                if not isinstance(text, str):
                    raise TypeError(text)
                tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
                self.received(tokens)
                return Completion(text, choice.get("finish_reason"), tokens)
            except (ValueError, KeyError, IndexError, TypeError):
                last = f"unexpected answer {r.text[:120]!r}"
        raise EndpointError(f"{url} failed after {self.retries + 1} attempts: {last}; is the server running "
                            f"(run_server.sh) and is --base_url right?")

    def _params(self, model: str, overrides: dict) -> dict:
        params = {**self.sampling, **{k: v for k, v in overrides.items() if v is not None}, "model": model}
        return params if self.engine_fields else {k: v for k, v in params.items() if k not in ENGINE_ONLY}

    def chat(self, model: str, messages: list[dict], **sampling) -> Completion:
        return self._post("/chat/completions", {**self._params(model, sampling), "messages": messages})

    def complete(self, model: str, prompt: str, **sampling) -> Completion:
        return self._post("/completions", {**self._params(model, sampling), "prompt": prompt})

    def models(self) -> list[str]:
        """The names the endpoint serves; one try (a check before the work starts), one line if it fails."""
        url = f"{self.base_url}/models"
        try:
            r = self._session().get(url, timeout=30)
        except requests.RequestException as exc:
            raise EndpointError(f"cannot reach the endpoint at {self.base_url} ({type(exc).__name__}); is the server "
                                f"running (run_server.sh) and is --base_url right?") from None
        if r.status_code >= 400:
            raise RequestRejected(f"{url} answered {r.status_code}: {_error_message(r)}")
        try:
            return [m["id"] for m in r.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise EndpointError(f"{url} gave an unexpected answer {r.text[:120]!r}; is --base_url an "
                                f"OpenAI-compatible endpoint?") from None


def _error_message(r: requests.Response) -> str:
    try:
        body = r.json()
        return str(body.get("message") or body.get("error") or body)[:300]
    except ValueError:
        return r.text[:300]
