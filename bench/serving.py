"""Serving throughput: the whole stack (API server -> controller -> our worker -> vLLM) against vLLM's offline
LLM.generate on the same 32 chat requests of 256 generated tokens, in one run. Prints the ratio (goal >= 0.90).

Usage: .venv/bin/python bench/serving.py [--requests 32] [--tokens 256]
Starts its own stack (ports 18900-18902) and stops it before the offline run, so both get the machine alone; the
offline engine runs in a process of its own with the stack's engine environment (offline()).
"""
import argparse
import json
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
    try:
        subprocess.run(["bash", str(ROOT / "llama" / "run_server.sh"), f"--base_model={model_dir}", "--iter=0",
                        f"--workdir={workdir}", *ports], check=True, timeout=1800)
        client = Client("http://127.0.0.1:18900/v1")
        client.chat("base", messages[0], max_tokens=8)  # warm-up
        start = time.monotonic()
        with ThreadPoolExecutor(len(messages)) as pool:
            outs = list(pool.map(lambda m: client.chat("base", m, max_tokens=tokens, ignore_eos=True), messages))
        wall = time.monotonic() - start
        return sum(o.completion_tokens for o in outs) / wall
    finally:
        subprocess.run(["bash", str(ROOT / "llama" / "stop_server.sh"), f"--workdir={workdir}"], check=False,
                       timeout=300)


def offline(model_dir, messages, tokens, raw_prompts=None, engine_args=None, preload=None):
    """The engine saturated offline, each request generating `tokens`: tokens/s over `messages` (chat) and over
    `raw_prompts` (already formatted), one figure per list given, from one engine built with `engine_args` (vllm.LLM's
    keywords; default what our worker gives its engines). Returns the one figure, or (chat rate, raw rate) when both
    lists are given. See offline_run for `preload`."""
    run = offline_run(model_dir, messages, tokens, raw_prompts, engine_args, preload)
    print(f"offline engine: {', '.join(run['preloaded']) or 'no library'} preloaded; built in {run['start_s']:.1f} s",
          flush=True)
    rates = run["rates"]
    return rates[0] if len(rates) == 1 else tuple(rates)


def offline_run(model_dir, messages, tokens, raw_prompts=None, engine_args=None, preload=None) -> dict:
    """offline()'s measurement: {"rates": [...], "preloaded": the libraries of ENGINE_PRELOAD mapped in the engine's
    every process, "start_s": seconds to build the engine (vllm.LLM(), its warm-up included)}.

    The engine runs in a process of its own, started with the environment run_server.sh gives its workers
    (cluster.engine_env: on CPU, tcmalloc and Intel's OpenMP preloaded where found), so that it matches the
    stack's engine: a library in LD_PRELOAD only loads when a process starts, and vLLM forks its engine core.
    `preload`: the libraries' paths to preload instead ([] for none)."""
    from self_lengthen.serve.cluster import engine_env

    env = engine_env()
    if preload is not None:
        env.pop("LD_PRELOAD", None)
        if preload:
            env["LD_PRELOAD"] = ":".join(preload)
    job = {"model_dir": str(model_dir), "messages": messages, "tokens": tokens, "raw_prompts": raw_prompts,
           "engine_args": engine_args}
    out = subprocess.run([sys.executable, __file__, "--offline_job"], input=json.dumps(job), capture_output=True,
                         text=True, timeout=1800, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("OFFLINE ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"the offline engine failed (exit {out.returncode}): {out.stderr[-800:]}")
    return json.loads(lines[-1][len("OFFLINE "):])


def offline_here(model_dir, messages, tokens, raw_prompts, engine_args) -> dict:
    """offline_run's measurement, in this process as it was started."""
    import psutil
    from vllm import LLM, SamplingParams

    from self_lengthen.devices import ENGINE_PRELOAD
    from self_lengthen.serve.worker import engine_defaults

    start = time.monotonic()
    llm = LLM(model=str(model_dir), **(engine_args or engine_defaults()))
    started = time.monotonic() - start
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
        me = psutil.Process()
        maps = [Path(f"/proc/{p.pid}/maps").read_text() for p in [me, *me.children(recursive=True)]]
        return {"rates": rates, "preloaded": [lib for lib in ENGINE_PRELOAD if all(lib in m for m in maps)],
                "start_s": started}
    finally:
        llm.llm_engine.engine_core.shutdown()  # its core process outlives the os._exit below otherwise


def ran_past(script: str, exc: subprocess.TimeoutExpired) -> str:
    """The one line a bench ends with when a command it waited on ran past its timeout (and was stopped)."""
    return f"{script}: `{' '.join(map(str, exc.cmd))[:200]}` ran past {exc.timeout:.0f} s and was stopped"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--offline_job", action="store_true", help=argparse.SUPPRESS)  # offline()'s child: JSON on stdin
    args = p.parse_args()
    if args.offline_job:
        job = json.load(sys.stdin)
        print("OFFLINE", json.dumps(offline_here(**job)), flush=True)
        os._exit(0)  # the engine is shut down; its threads' teardown at interpreter exit can hang
    from self_lengthen.default_model import ensure_default_model

    model = ensure_default_model()
    messages = prompts(args.requests)
    try:
        stack = through_stack(model, messages, args.tokens)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(ran_past("bench/serving.py", exc))
    print(f"stack {stack:.1f} tok/s", flush=True)
    direct = offline(model, messages, args.tokens)
    print(f"stack {stack:.1f} tok/s, offline {direct:.1f} tok/s, ratio {stack / direct:.2f} "
          f"({args.requests} requests x {args.tokens} tokens)", flush=True)
    # The engine is shut down, but its threads' teardown at interpreter exit hung here: leave now.
    os._exit(0)


if __name__ == "__main__":
    main()
