"""Does a sharper model write shorter? The base model on the held-out instructions at several sampling temperatures
(issue 14, item 6: why the demo's Generator ends up shorter than the base).

bench/end_hazard.py found the demo's trained Generators sharper than the base model (lower next-token entropy on
the base's own answers) without being quicker to stop. Lowering the temperature sharpens the base model the same
way, with nothing trained: if its answers then shorten, sharpening alone is enough to explain the Generator's.
Each held-out instruction is answered --samples times per temperature by the held-out stage's own request (the
method's other sampling settings, the profile's step1 max_tokens), the temperatures taking turns; in an engine in
this process. Prints per temperature: mean words (95% CI), clean answers (n, mean), shares at max_tokens and with
a repeated n-gram.

Usage: .venv/bin/python bench/temperature_length.py [--temperatures 0.7 0.5] [--samples 2]
"""
import argparse
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.5], help="the method's is 0.7")
    p.add_argument("--samples", type=int, default=2, help="answers per instruction and temperature")
    p.add_argument("--profile", default="cpu-demo", help="whose step1 max_tokens")
    p.add_argument("--workers", type=int, default=48)
    args = p.parse_args()

    from heldout_runs import mean_words, share
    from synthesis import FLAVOUR, InProcessEngine

    from self_lengthen.chat_template import load_tokenizer
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.profile import load_profile
    from self_lengthen.stages.common import STOP_STRINGS
    from self_lengthen.stages.heldout import heldout_prompts, is_clean, length_stats, make_work

    cap = int(load_profile(args.profile)["generation"]["max_tokens"]["generate"])
    model = ensure_default_model()
    flavour = Flavour(FLAVOUR)
    prompts = PromptBuilder(flavour, load_tokenizer(model))
    instructions = heldout_prompts(flavour)
    engine = InProcessEngine(model)
    results = {t: [] for t in args.temperatures}
    never = threading.Event()
    try:
        with ThreadPoolExecutor(args.workers) as pool:
            for turn in range(args.samples):
                for t in args.temperatures:
                    ctx = SimpleNamespace(client=engine, prompts=prompts, sampling=lambda t=t, **extra: {
                        "max_tokens": cap, "stop": list(STOP_STRINGS), "temperature": t, **extra})
                    work = make_work(ctx, "base")
                    results[t] += pool.map(lambda s: work(s, {"prompt": s}, never), instructions)
                    print(f"turn {turn + 1}: temperature {t} done", flush=True)
    finally:
        engine.close()

    print(f"the base model on {len(instructions)} held-out instructions, {args.samples} answers each per "
          f"temperature, max_tokens {cap} ({args.profile})")
    print("| temperature | answers | mean words (95% CI) | median | clean: n, mean | at max_tokens % | repetition % |")
    print("|---|---|---|---|---|---|---|")
    for t, rows in results.items():
        s = length_stats([r["words"] for r in rows])
        print(f"| {t} | {s['n']} | {s['mean']} ({s['ci95'][0]}-{s['ci95'][1]}) | {s['median']} | "
              f"{sum(map(is_clean, rows))}, {mean_words(rows, is_clean):.1f} | {share(rows, 'capped'):.1f} | "
              f"{share(rows, 'repetition'):.1f} |")
    sys.stdout.flush()
    os._exit(0)  # the engine's threads' teardown at exit can hang (as in bench/serving.py)


if __name__ == "__main__":
    main()
