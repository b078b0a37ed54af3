"""Iteration 2's engines on CPU: the base model and the two merged copies started one after another, or together.

Runs the real worker (serve/worker.py, the environment run_server.sh gives it) with iteration 1's adapters as
zero LoRAs (synthesis.zero_adapters), --engine-start in-turn and together in turns, after one start that is not
counted (it merges the copies, which later starts reuse). Each start is timed from the worker's launch to its first
answer on /worker_get_status (uvicorn starts once every engine is up); then one greedy request to each engine shows
that all three serve, and the worker is stopped by its process group.

Usage: .venv/bin/python bench/engine_start.py [--repeats 2]   (needs the machine to itself)
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from self_lengthen.default_model import ensure_default_model  # noqa: E402
from self_lengthen.serve.cluster import engine_env  # noqa: E402
from synthesis import zero_adapters  # noqa: E402

PORT = 18902
NAMES = ("base", "gen_sft", "ext_sft")


def post(path: str, payload: dict | None = None, timeout: float = 5.0):
    return requests.post(f"http://127.0.0.1:{PORT}{path}", json=payload or {}, timeout=timeout)


def start_once(model: Path, workdir: Path, mode: str, log: Path, timeout: float = 600.0) -> dict:
    lora = workdir / "results" / "iter_1" / "lora"
    cmd = [sys.executable, "-m", "self_lengthen.serve.worker", "--model-path", str(model), "--base-name", "base",
           "--lora", f"gen_sft={lora / 'gen_sft'}", "--lora", f"ext_sft={lora / 'ext_sft'}",
           "--adapter-mode", "merged", "--merge-dir", str(workdir / "merged"), "--port", str(PORT),
           "--controller-address", "http://127.0.0.1:9", "--engine-start", mode]  # no controller: it retries, unheard
    with open(log, "ab") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**engine_env(), "LOGDIR": str(workdir)},  # FastChat's own logs
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited ({proc.returncode}) while starting; see {log}")
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"the worker did not start within {timeout:.0f} s; see {log}")
            try:
                if post("/worker_get_status", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        ready = time.monotonic() - t0
        texts = {}
        for name in NAMES:
            out = post("/worker_generate", {"model": name, "prompt": "The capital of France is", "temperature": 0.0,
                                            "max_new_tokens": 8}, timeout=120).json()
            if out.get("error_code"):
                raise SystemExit(f"{name} did not answer: {out}")
            texts[name] = out["text"]
        return {"ready_s": ready, "texts": texts}
    finally:
        t1 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # the engines' processes are in the worker's group: wait for all of them
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        print(f"  ({mode}: stopped in {time.monotonic() - t1:.1f} s)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="timed starts per way")
    args = p.parse_args()
    model = ensure_default_model()
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-start-"))
    zero_adapters(workdir, model)
    log = workdir / "worker.log"
    print(f"worker log: {log}", flush=True)
    start_once(model, workdir, "together", log)  # merges the copies; not counted
    times = {"in-turn": [], "together": []}
    for _ in range(args.repeats):
        for mode in times:
            run = start_once(model, workdir, mode, log)
            times[mode].append(run["ready_s"])
            print(f"{mode}: ready in {run['ready_s']:.1f} s; answers {run['texts']}", flush=True)
    mean = {mode: sum(t) / len(t) for mode, t in times.items()}
    print(f"mean: in turn {mean['in-turn']:.1f} s, together {mean['together']:.1f} s, "
          f"ratio {mean['in-turn'] / mean['together']:.2f}")


if __name__ == "__main__":
    main()
