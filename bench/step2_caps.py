"""Does step2's max_tokens cut texts that would have finished? (issue 13's lead on capped requests, issue 14's
"do max_tokens caps bind?")

Round 1 of every chain on the fixed initial responses (bench/data/step2_initial_responses.jsonl), with the real
stage functions and the method's sampling, in an engine in this process: the chat request at the profile's cap, as
step2 sends it, then the completion at `--factor` times that cap. Sampling does not depend on max_tokens, so the
first `cap` tokens of the longer completion are a sample of what the stage's request would have written: each
completion is judged at both caps from one run (requests carry no seed, as in the runs bench/RESULTS.md records).
Prints, for the completions the cap cuts, how many already repeat a 10-gram at the cut (a larger cap cannot save
them) and how many finish and pass the stage's round check under the larger cap (rounds the cap alone rejected),
with their tokens.

Usage: .venv/bin/python bench/step2_caps.py [--profile cpu-demo] [--factor 3] [--attempts 1]
"""
import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from self_lengthen.text import has_repeated_ngram  # noqa: E402


def main():
    from synthesis import run_with_engine_env

    run_with_engine_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu-demo", help="whose step2 max_tokens")
    p.add_argument("--factor", type=float, default=3.0, help="the completions' cap, in times the profile's")
    p.add_argument("--attempts", type=int, default=1, help="chains per initial response (step2 makes 2)")
    p.add_argument("--workers", type=int, default=32)
    args = p.parse_args()

    from synthesis import FLAVOUR, InProcessEngine, fixture_rows

    from self_lengthen.chat_template import load_tokenizer
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.profile import load_profile
    from self_lengthen.stages.common import STOP_STRINGS
    from self_lengthen.stages.extend import round_reason, start_round

    cap = int(load_profile(args.profile)["generation"]["max_tokens"]["extend"])
    longer = int(cap * args.factor)
    model = ensure_default_model()
    flavour = Flavour(FLAVOUR)
    prompts = PromptBuilder(flavour, load_tokenizer(model))
    engine = InProcessEngine(model)
    meta = flavour.config.meta_words
    chains = [row for row in fixture_rows() for _ in range(args.attempts)]

    def one(row):
        def sampling(**extra):  # the stage's request (ctx.sampling)
            return {"max_tokens": cap, "stop": list(STOP_STRINGS), **extra}

        ctx = SimpleNamespace(client=engine, prompts=prompts, sampling=sampling)
        prefix, head = start_round(ctx, "base", row["prompt"], row["initial_response"])
        prompt = prompts.extend_completion(row["prompt"], row["initial_response"], prefix)
        rest, ids = engine.complete_with_ids("base", prompt, **sampling(max_tokens=longer))
        at_cap = rest.text if len(ids) <= cap else engine.tokenizer.decode(ids[:cap], skip_special_tokens=True)
        return {"head_tokens": head.completion_tokens, "head_capped": head.finish_reason == "length",
                "tokens": len(ids), "finish": rest.finish_reason, "cut": len(ids) > cap,
                "repeats_at_cap": has_repeated_ngram(at_cap), "repeats": has_repeated_ngram(rest.text),
                "reason_at_cap": round_reason(prefix + at_cap, row["initial_response"], meta),
                "reason": round_reason(prefix + rest.text, row["initial_response"], meta)}

    try:
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(one, chains))
    finally:
        engine.close()

    cut = [r for r in results if r["cut"]]
    whole = [r for r in results if not r["cut"]]
    saved = [r for r in cut if r["reason"] is None]
    tokens_at_cap = sum(min(r["tokens"], cap) for r in results)
    print(f"step2 round 1 on {len(results)} chains ({args.profile}: cap {cap}, completions run to {longer}); "
          f"chat requests capped: {sum(r['head_capped'] for r in results)}")
    print(f"completions under the cap: {len(whole)}, passed {sum(r['reason'] is None for r in whole)}; "
          f"reasons {dict(Counter(r['reason'] for r in whole if r['reason']))}")
    print(f"completions the cap cuts: {len(cut)}, {cap * len(cut)} of the {tokens_at_cap} completion tokens "
          f"at the cap; passed at the cap anyway {sum(r['reason_at_cap'] is None for r in cut)}")
    print(f"  already repeating at the cut: {sum(r['repeats_at_cap'] for r in cut)}")
    print(f"  at {longer}: finished {sum(r['finish'] != 'length' for r in cut)}, passed {len(saved)} (tokens "
          f"{sum(r['tokens'] for r in saved)}), reasons {dict(Counter(r['reason'] for r in cut if r['reason']))}; "
          f"repeating {sum(r['repeats'] for r in cut)}")
    print(f"rounds passed: {sum(r['reason_at_cap'] is None for r in results)} at {cap}, "
          f"{sum(r['reason'] is None for r in results)} at {longer}; completion tokens "
          f"{tokens_at_cap} at {cap}, {sum(r['tokens'] for r in results)} at {longer}")
    sys.stdout.flush()
    os._exit(0)  # the engine's threads' teardown at exit can hang (as in bench/serving.py)


if __name__ == "__main__":
    main()
