"""A fake OpenAI-compatible endpoint for fault injection only (timeouts, 5xx, garbage, empty text).

The real path is always tested against the real stack; this stands in only where a fault must be provoked.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# The request fields of OpenAI's own chat and completion APIs (no top_k, no repetition_penalty).
OPENAI_FIELDS = {"model", "messages", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream",
                 "presence_penalty", "frequency_penalty", "logit_bias", "user", "logprobs", "echo", "suffix"}


class FakeEndpoint:
    """mode: ok | 500 | timeout | garbage | empty | 400 | strict (a hosted API: 400 for any field it does not know).
    GET /models lists `models`, except under garbage (HTML) and 400 (a 401 refusal).
    `text` is what ok answers (or a function of the request), with `finish_reason` (likewise);
    `requests` counts calls and `payloads` keeps their bodies, to check what a stage sends."""

    def __init__(self, mode: str = "ok", text: str = "A complete answer.", models=("base",), delay: float = 5.0,
                 finish_reason="stop"):
        self.mode, self.text, self.models, self.delay = mode, text, list(models), delay
        self.finish_reason = finish_reason  # or a function of the request
        self.requests = 0
        self.payloads: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if fake.mode == "garbage":
                    return self._send(200, b"<html>not json at all", "text/html")
                if fake.mode == "400":
                    return self._send(401, b'{"message": "a key is required"}')
                data = [{"id": m, "object": "model"} for m in fake.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                fake.requests += 1
                fake.payloads.append(payload)
                if fake.mode == "500":
                    return self._send(500, b'{"message": "engine exploded"}')
                unknown = set(payload) - OPENAI_FIELDS
                if fake.mode == "strict" and unknown:
                    return self._send(400, json.dumps({"message": f"unknown fields {sorted(unknown)}"}).encode())
                if fake.mode == "400":
                    return self._send(400, b'{"message": "Only base allowed now, your model x"}')
                if fake.mode == "timeout":
                    time.sleep(fake.delay)
                    return self._send(200, b"{}")
                if fake.mode == "garbage":
                    return self._send(200, b"<html>not json at all", "text/html")
                text = "" if fake.mode == "empty" else (fake.text(payload) if callable(fake.text) else fake.text)
                choice = ({"message": {"role": "assistant", "content": text}} if "messages" in payload
                          else {"text": text})
                finish = fake.finish_reason(payload) if callable(fake.finish_reason) else fake.finish_reason
                body = {"choices": [{"index": 0, "finish_reason": finish, **choice}],
                        "usage": {"completion_tokens": len(text.split())}}
                self._send(200, json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
