"""Serving throughput: the whole stack (API server -> controller -> our worker -> vLLM) against vLLM's offline
LLM.generate on the same 32 chat requests of 256 generated tokens, in one run. Prints the ratio (goal >= 0.90).

Usage: .venv/bin/python bench/serving.py [--requests 32] [--tokens 256]
Starts its own stack (ports 18900-18902) and stops it before the offline run, so both get the machine alone.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOPICS = ["rivers", "bridges", "libraries", "trains", "gardens", "markets", "lighthouses", "bicycles"]


def prompts(n):
    return [[{"role": "user", "content": f"Write an essay about {TOPICS[i % len(TOPICS)]} (variant {i})."}]
            for i in range(n)]


def through_stack(model_dir, messages, tokens):
    from self_lengthen.client import Client

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    ports = ["--api_port=18900", "--controller_port=18901", "--worker_port=18902"]
    subprocess.run(["bash", str(ROOT / "llama" / "run_server.sh"), f"--base_model={model_dir}", "--iter=0",
                    f"--workdir={workdir}", *ports], check=True)
    try:
        client = Client("http://127.0.0.1:18900/v1")
        client.chat("base", messages[0], max_tokens=8)  # warm-up
        start = time.monotonic()
        with ThreadPoolExecutor(len(messages)) as pool:
            outs = list(pool.map(lambda m: client.chat("base", m, max_tokens=tokens, ignore_eos=True), messages))
        wall = time.monotonic() - start
        return sum(o.completion_tokens for o in outs) / wall
    finally:
        subprocess.run(["bash", str(ROOT / "llama" / "stop_server.sh"), f"--workdir={workdir}"], check=False)


def offline(model_dir, messages, tokens, raw_prompts=None, engine_args=None):
    """The engine saturated offline, each request generating `tokens`: tokens/s over `messages` (chat) and over
    `raw_prompts` (already formatted), one figure per list given, from one engine built with `engine_args` (vllm.LLM's
    keywords; default what our worker gives its engines). Returns the one figure, or (chat rate, raw rate) when both lists are given."""
    from self_lengthen.serve.cluster import engine_env_defaults, gpu_count
    from self_lengthen.serve.worker import engine_defaults

    for key, value in engine_env_defaults(gpu_count()).items():  # the environment run_server.sh gives its workers
        os.environ.setdefault(key, value)
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), **(engine_args or engine_defaults()))
    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1, max_tokens=tokens,
                            ignore_eos=True)
    sends = [(send, batch) for send, batch in ((llm.chat, messages), (llm.generate, raw_prompts)) if batch]
    try:
        send, batch = sends[0]
        send(batch[:1], SamplingParams(max_tokens=8))  # a warm-up request
        rates = []
        for send, batch in sends:
            start = time.monotonic()
            outs = send(batch, params)
            rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.monotonic() - start))
        return rates[0] if len(rates) == 1 else tuple(rates)
    finally:
        llm.llm_engine.engine_core.shutdown()  # its core process outlives the os._exit below otherwise


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=256)
    args = p.parse_args()
    from self_lengthen.default_model import ensure_default_model

    model = ensure_default_model()
    messages = prompts(args.requests)
    stack = through_stack(model, messages, args.tokens)
    print(f"stack {stack:.1f} tok/s", flush=True)
    direct = offline(model, messages, args.tokens)
    print(f"stack {stack:.1f} tok/s, offline {direct:.1f} tok/s, ratio {stack / direct:.2f} "
          f"({args.requests} requests x {args.tokens} tokens)", flush=True)
    # The engine is shut down, but its threads' teardown at interpreter exit hung here: leave now.
    os._exit(0)


if __name__ == "__main__":
    main()
