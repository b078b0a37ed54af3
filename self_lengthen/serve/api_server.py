"""FastChat's OpenAI-compatible API server, extended minimally rather than rewritten.

Six changes, all applied by `extend()`:
- chat prompts are rendered from the model's own chat template, which the worker ships (byte-identical to
  `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`);
- fields FastChat's request models drop (repetition_penalty, min_tokens, ignore_eos, seed, and our reject_early)
  are read from the raw request body and forwarded to the worker, on /v1/chat/completions and /v1/completions;
- an answer may end with finish_reason "rejected" (a reject_early request the worker ended, see worker.py);
- a client that disconnects cancels its request, so the worker aborts it in the engine;
- streaming works under pydantic 2 (FastChat calls `.json(ensure_ascii=...)`, which pydantic 2 rejects);
- with a cluster key, every route needs it (FastChat leaves /api/v1/* open) and every call to the controller and the
  workers carries it (see auth.py).

Run: python -m self_lengthen.serve.api_server --host 127.0.0.1 --port 8000 [--api-key-file F]
The API key, when required, comes from $SELF_LENGTHEN_API_KEY or a file, never from the command line.
"""
import argparse
import asyncio
import contextlib
import contextvars
import json
import os
from typing import Optional

import httpx
import pydantic
import uvicorn

from fastchat.constants import ErrorCode

from ..chat_template import render_chat
from ..errors import UsageError
from .auth import API_KEY_ENV, auth_headers, protect, read_key

EXTRA_FIELDS = ("repetition_penalty", "min_tokens", "ignore_eos", "seed", "reject_early")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
WORKER_TIMEOUT = float(os.environ.get("FASTCHAT_WORKER_API_TIMEOUT", 3 * 3600))
_extra_fields: contextvars.ContextVar[dict] = contextvars.ContextVar("extra_sampling_fields", default={})


class GenerationRequests:
    """ASGI middleware for the generation routes.

    - Remembers the extra sampling fields of the JSON body for `get_gen_params`.
    - Cancels the request when its client disconnects, streaming or not, so the worker sees the connection close
      and aborts the engine request (FastChat's non-streaming handlers would otherwise run to the end).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its request
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        extra = {k: data[k] for k in EXTRA_FIELDS if isinstance(data, dict) and data.get(k) is not None}
        disconnected = asyncio.Event()
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        token = _extra_fields.set(extra)
        try:
            handler = asyncio.ensure_future(self.app(scope, replay, send))  # copies the context, with `extra`
        finally:
            _extra_fields.reset(token)
        watcher = asyncio.ensure_future(watch())
        await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if handler.done():
            watcher.cancel()
            return handler.result()
        handler.cancel()  # the client went away: closing our worker connection aborts the engine request
        with contextlib.suppress(asyncio.CancelledError):
            await handler


def _message_text(content) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def extend(fc, key: str | None = None) -> None:
    """Patch FastChat's openai_api_server module `fc` in place."""
    fc.headers.update(auth_headers(key))  # FastChat's streaming call to a worker sends these

    # A client builds its TLS context (the CA bundle) unless given one: 17 ms of CPU each, 5 times per generation
    # request, which the engine's threads lose on a small machine (bench/RESULTS.md, 2026-12-04). Built once here.
    tls = httpx.create_ssl_context()

    def client():
        # httpx closes the connection as soon as a call is cancelled (aiohttp, FastChat's choice, may not), and the
        # worker aborts the engine request when it sees that.
        return httpx.AsyncClient(timeout=httpx.Timeout(WORKER_TIMEOUT, connect=30.0), headers=fc.headers, verify=tls)

    async def fetch_remote(url, pload=None, name=None):
        """FastChat's call to the controller or a worker (same results, errors included), with our headers."""
        async with client() as c:
            r = await c.post(url, json=pload)
        if r.status_code != 200:
            return json.dumps({"text": f"HTTP {r.status_code}", "error_code": ErrorCode.INTERNAL_ERROR})
        if name is None:
            return r.content
        out = r.json()
        return out[name] if name else out

    fc.fetch_remote = fetch_remote
    original_get_gen_params = fc.get_gen_params

    async def get_gen_params(model_name, worker_addr, messages, **kwargs):
        if not isinstance(messages, str):
            conv = await fc.get_conv(model_name, worker_addr)
            if conv.get("chat_template"):
                chat = [{"role": m["role"], "content": _message_text(m["content"])} for m in messages]
                messages = render_chat(conv, chat)
        params = await original_get_gen_params(model_name, worker_addr, messages, **kwargs)
        params.update(_extra_fields.get())
        return params

    fc.get_gen_params = get_gen_params

    async def generate_completion(payload, worker_addr):
        async with client() as c:
            r = await c.post(worker_addr + "/worker_generate", json=payload)
        if r.status_code != 200:
            return {"text": f"worker error {r.status_code}: {r.text[:200]}", "error_code": ErrorCode.INTERNAL_ERROR}
        return r.json()

    fc.generate_completion = generate_completion

    def json_compat(self, **kwargs):
        kwargs.pop("ensure_ascii", None)  # model_dump_json writes UTF-8 as is
        return self.model_dump_json(**kwargs)

    from fastchat.protocol import api_protocol, openai_api_protocol

    for module in (openai_api_protocol, api_protocol):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, pydantic.BaseModel):
                obj.json = json_compat

    # FastChat allows only "stop" and "length"; the worker may also end a request as "rejected".
    p = openai_api_protocol
    for choice in (p.CompletionResponseChoice, p.CompletionResponseStreamChoice, p.ChatCompletionResponseChoice,
                   p.ChatCompletionResponseStreamChoice):
        choice.model_fields["finish_reason"].annotation = Optional[str]
        choice.model_rebuild(force=True)
    for response in (p.CompletionResponse, p.CompletionStreamResponse, p.ChatCompletionResponse,
                     p.ChatCompletionStreamResponse):
        response.model_rebuild(force=True)

    fc.app.add_middleware(GenerationRequests)
    protect(fc.app, key)  # added last, so it is the outermost: a request without the key is refused first


def main(argv=None):
    p = argparse.ArgumentParser(description="OpenAI-compatible API server (FastChat, extended)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--api-key-file", default=None, help=f"file holding the API key (else ${API_KEY_ENV}; none: open)")
    args = p.parse_args(argv)
    from fastchat.serve import openai_api_server as fc

    try:
        key = read_key(args.api_key_file)
    except UsageError as exc:
        raise SystemExit(f"api_server: {exc}") from None
    extend(fc, key)
    fc.app_settings.controller_address = args.controller_address
    fc.app_settings.api_keys = [key] if key else None
    uvicorn.run(fc.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
