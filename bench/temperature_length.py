"""Does a sharper model write shorter? The base model on the held-out instructions at several sampling temperatures
(issue 14, item 6: why the demo's Generator ends up shorter than the base).

bench/end_hazard.py found the demo's trained Generators sharper than the base model (lower next-token entropy on
the base's own answers) without being quicker to stop. Lowering the temperature sharpens the base model the same
way, with nothing trained: if its answers then shorten, sharpening alone is enough to explain the Generator's.
Each held-out instruction is answered --samples times per temperature by the held-out stage's own request (the
method's other sampling settings, the profile's step1 max_tokens), the temperatures taking turns; in an engine in
this process. Prints per temperature: mean words (95% CI), clean answers (n, mean), shares at max_tokens and with
a repeated n-gram.

--settings compares whole sampling settings instead, each the method's with some fields replaced, such as
"temperature=1,top_p=1,top_k=-1,repetition_penalty=1" (the model's own distribution) beside "method".

Usage: .venv/bin/python bench/temperature_length.py [--temperatures 0.7 0.5 | --settings method FIELD=V,...]
                                                    [--samples 2]
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
    from synthesis import run_with_engine_env

    run_with_engine_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.5], help="the method's is 0.7")
    p.add_argument("--settings", nargs="+", default=None,
                   help="sampling settings to compare: 'method', or comma-separated FIELD=VALUE replacing the "
                        "method's temperature, top_p, top_k or repetition_penalty")
    p.add_argument("--samples", type=int, default=2, help="answers per instruction and temperature")
    p.add_argument("--profile", default="cpu-demo", help="whose step1 max_tokens")
    p.add_argument("--workers", type=int, default=48)
    args = p.parse_args()
    from self_lengthen.profile import parse_sampling
    from self_lengthen.errors import UsageError

    try:
        settings = ({s: {} if s == "method" else parse_sampling(s) for s in args.settings} if args.settings
                    else {str(t): {"temperature": t} for t in args.temperatures})
    except UsageError as exc:
        sys.exit(f"error: {exc}")

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
    results = {name: [] for name in settings}
    never = threading.Event()
    try:
        with ThreadPoolExecutor(args.workers) as pool:
            for turn in range(args.samples):
                for name, fields in settings.items():
                    ctx = SimpleNamespace(client=engine, prompts=prompts, sampling=lambda fields=fields, **extra: {
                        "max_tokens": cap, "stop": list(STOP_STRINGS), **fields, **extra})
                    work = make_work(ctx, "base")
                    results[name] += pool.map(lambda s: work(s, {"prompt": s}, never), instructions)
                    print(f"turn {turn + 1}: {name} done", flush=True)
    finally:
        engine.close()

    print(f"the base model on {len(instructions)} held-out instructions, {args.samples} answers each per "
          f"setting, max_tokens {cap} ({args.profile})")
    print("| sampling | answers | mean words (95% CI) | median | clean: n, mean | at max_tokens % | repetition % |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        s = length_stats([r["words"] for r in rows])
        print(f"| {name} | {s['n']} | {s['mean']} ({s['ci95'][0]}-{s['ci95'][1]}) | {s['median']} | "
              f"{sum(map(is_clean, rows))}, {mean_words(rows, is_clean):.1f} | {share(rows, 'capped'):.1f} | "
              f"{share(rows, 'repetition'):.1f} |")
    sys.stdout.flush()
    os._exit(0)  # the engine's threads' teardown at exit can hang (as in bench/serving.py)


if __name__ == "__main__":
    main()
