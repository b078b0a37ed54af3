"""The engine's settings (scheduler, dtype) on step2's own requests: vLLM offline on the mix step2 sends (bench/synthesis.py
(c): half chat requests over the first half of an initial response, half completions over the whole text), each
request generating --tokens, once per setting, in tok/s and as a ratio against the first setting run. Until 2026-12-03
our worker's engines had vLLM's defaults for an engine it does not start itself (on CPU chunked prefill, 2,048 batched
tokens, 128 sequences); since, on CPU, whole prefills (serve/worker.py engine_defaults: 8,192 batched tokens, the
default model's length).

Usage: .venv/bin/python bench/engine_settings.py [--tokens 512] [--requests 32] [--only WORD,WORD ...] [--rounds N]
Each setting's engine runs in its own process (serving.offline), one after the other, with exactly the
preloads the setting names; needs the machine to itself.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from self_lengthen.devices import ENGINE_PRELOAD, INTEL_OPENMP, TCMALLOC, find_shared_library  # noqa: E402

# The worker's engine (AsyncLLM.from_engine_args) gets vLLM's plain defaults (and on CPU, whole prefills since
# 2026-12-03); LLM() gets its offline ones.
WORKER = {"dtype": "bfloat16", "max_num_batched_tokens": 2048, "max_num_seqs": 128}
SETTINGS = {
    "bfloat16, 2048 batched tokens, 128 sequences": WORKER,
    "vLLM offline's (4096, 256)": {**WORKER, "max_num_batched_tokens": 4096, "max_num_seqs": 256},
    "8192 batched tokens": {**WORKER, "max_num_batched_tokens": 8192, "max_num_seqs": 256},
    "float32": {**WORKER, "dtype": "float32"},
    "float16": {**WORKER, "dtype": "float16"},
    "float32 without chunked prefill (the worker's on a CPU without native bfloat16, since 2026-12-03)": {
        **WORKER, "dtype": "float32", "max_num_batched_tokens": 8192, "enable_chunked_prefill": False},
    # vLLM's CPU guide asks for these allocators in LD_PRELOAD (its worker warns without them). "preload" is the
    # process's environment, not an engine argument; a library not on this machine skips the setting.
    "tcmalloc preloaded": {**WORKER, "preload": [TCMALLOC]},
    "Intel OpenMP preloaded": {**WORKER, "preload": [INTEL_OPENMP]},
    "tcmalloc and Intel OpenMP preloaded (the worker's on CPU where both are found, since 2026-12-05)": {
        **WORKER, "preload": list(ENGINE_PRELOAD)},
    # "defaults": start from what the worker gives its engines today (serve/worker.py engine_defaults).
    "the worker's today (engine_defaults, preloaded)": {"defaults": True, "preload": list(ENGINE_PRELOAD)},
    "the worker's today, eager (no torch.compile)": {"defaults": True, "enforce_eager": True,
                                                      "preload": list(ENGINE_PRELOAD)},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--only", default="", help="comma-separated words: run the settings whose names hold one "
                   "(the first one run is the ratios' baseline)")
    p.add_argument("--rounds", type=int, default=1, help="run the chosen settings this many times, in turn; "
                   "each setting's rate is the mean of its runs")
    args = p.parse_args()
    words = [w for w in args.only.split(",") if w]
    chosen = {name: s for name, s in SETTINGS.items() if not words or any(w in name for w in words)}
    if not chosen:
        raise SystemExit(f"--only {args.only!r} names none of the settings: {list(SETTINGS)}")
    from self_lengthen.default_model import ensure_default_model
    from serving import offline
    from synthesis import fixture_rows, step2_requests

    model = ensure_default_model()
    _, mix = step2_requests(fixture_rows(), model, args.requests)
    rates, runs = {}, {}
    for name, setting in [item for _ in range(max(1, args.rounds)) for item in chosen.items()]:
        setting = dict(setting)
        if setting.pop("defaults", False):
            from self_lengthen.serve.worker import engine_defaults

            setting = {**engine_defaults(), **setting}
        paths = [find_shared_library(lib) for lib in setting.pop("preload", [])]
        if None in paths:
            print(f"{name}: skipped (not all of its libraries are on this machine)", flush=True)
            continue
        rate = offline(model, None, args.tokens, raw_prompts=mix, engine_args=setting, preload=paths)
        runs.setdefault(name, []).append(rate)
        rates[name] = sum(runs[name]) / len(runs[name])
        print(f"{name}: {runs[name][-1]:.1f} tok/s", flush=True)
    baseline = next(iter(rates.values()))
    print(f"step2's mix, {args.requests} requests x {args.tokens} tokens: " + "; ".join(
        f"{name} {rate:.1f} tok/s ({rate / baseline:.2f})" for name, rate in rates.items()))


if __name__ == "__main__":
    main()
