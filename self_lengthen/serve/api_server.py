"""FastChat's OpenAI-compatible API server, extended minimally rather than rewritten.

Three changes, all applied by `extend()`:
- chat prompts are rendered from the model's own chat template, which the worker ships (byte-identical to
  `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`);
- sampling fields FastChat's request models drop (repetition_penalty, min_tokens, ignore_eos, seed) are read from
  the raw request body and forwarded to the worker, on /v1/chat/completions and /v1/completions;
- streaming works under pydantic 2 (FastChat calls `.json(ensure_ascii=...)`, which pydantic 2 rejects).

Run: python -m self_lengthen.serve.api_server --host 127.0.0.1 --port 8000 [--api-key-file F]
The API key, when required, comes from $SELF_LENGTHEN_API_KEY or a file, never from the command line.
"""
import argparse
import contextvars
import json
import os
from pathlib import Path

import pydantic
import uvicorn

from ..chat_template import render_chat

EXTRA_FIELDS = ("repetition_penalty", "min_tokens", "ignore_eos", "seed")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
API_KEY_ENV = "SELF_LENGTHEN_API_KEY"
_extra_fields: contextvars.ContextVar[dict] = contextvars.ContextVar("extra_sampling_fields", default={})


class ExtraSamplingFields:
    """ASGI middleware: remember the extra sampling fields of a generation request's JSON body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        extra = {k: data[k] for k in EXTRA_FIELDS if isinstance(data, dict) and data.get(k) is not None}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = _extra_fields.set(extra)
        try:
            await self.app(scope, replay, send)
        finally:
            _extra_fields.reset(token)


def _message_text(content) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def extend(fc) -> None:
    """Patch FastChat's openai_api_server module `fc` in place."""
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

    def json_compat(self, **kwargs):
        kwargs.pop("ensure_ascii", None)  # model_dump_json writes UTF-8 as is
        return self.model_dump_json(**kwargs)

    from fastchat.protocol import api_protocol, openai_api_protocol

    for module in (openai_api_protocol, api_protocol):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, pydantic.BaseModel):
                obj.json = json_compat

    fc.app.add_middleware(ExtraSamplingFields)


def read_api_key(key_file: str | None) -> str | None:
    if key_file:
        key = Path(key_file).read_text().strip()
        if not key:
            raise SystemExit(f"api_server: {key_file} is empty; put the API key in it")
        return key
    return os.environ.get(API_KEY_ENV) or None


def main(argv=None):
    p = argparse.ArgumentParser(description="OpenAI-compatible API server (FastChat, extended)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--api-key-file", default=None, help=f"file holding the API key (else ${API_KEY_ENV}; none: open)")
    args = p.parse_args(argv)
    from fastchat.serve import openai_api_server as fc

    extend(fc)
    fc.app_settings.controller_address = args.controller_address
    key = read_api_key(args.api_key_file)
    fc.app_settings.api_keys = [key] if key else None
    uvicorn.run(fc.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
