"""Which wording of the Extender's request lets more of step2's rounds pass? (issue 13, E3: rows per iteration)

A chat answer that opens with draft talk ("Here is the revised version ...") dooms its round in an English run:
step2 keeps the answer's first blocks as the prefix of the round's output, and the response check rejects draft
words in a text's first lines. Round 1 of every chain on the fixed initial responses
(bench/data/step2_initial_responses.jsonl), with the real stage functions and the method's sampling at the
profile's cap, in an engine in this process, once per prompt-template directory given, in turns (so a slower or
faster moment of the machine falls on every wording alike). Prints per wording: chat answers whose head holds a
draft word, rounds passed, the reasons of the others, completion tokens.

Usage: .venv/bin/python bench/extend_prompt.py llama/prompt_templates /tmp/wording_b [--attempts 2]
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

from self_lengthen.text import count_words, mentions_meta_words  # noqa: E402


def main():
    from synthesis import run_with_engine_env

    run_with_engine_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("templates", type=Path, nargs="+", help="prompt-template directories (ours: extend.txt)")
    p.add_argument("--profile", default="cpu-demo", help="whose step2 max_tokens")
    p.add_argument("--attempts", type=int, default=2, help="chains per initial response (step2 makes 2)")
    p.add_argument("--turns", type=int, default=2, help="the wordings take turns this many times")
    p.add_argument("--workers", type=int, default=48)
    args = p.parse_args()

    from synthesis import FLAVOUR, InProcessEngine, fixture_rows

    from self_lengthen.chat_template import load_tokenizer
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.profile import load_profile
    from self_lengthen.stages.common import STOP_STRINGS
    from self_lengthen.stages.extend import finish_round, start_round

    cap = int(load_profile(args.profile)["generation"]["max_tokens"]["extend"])
    model = ensure_default_model()
    tokenizer = load_tokenizer(model)
    engine = InProcessEngine(model)
    rows = [row for row in fixture_rows() for _ in range(args.attempts)]

    def round_one(prompts, row):
        def sampling(**extra):  # the stage's request (ctx.sampling)
            return {"max_tokens": cap, "stop": list(STOP_STRINGS), **extra}

        # the stage's context, without reject_early: every completion runs to its own end
        ctx = SimpleNamespace(client=engine, prompts=prompts, sampling=sampling, flavour=prompts.flavour,
                              checked_whole=lambda prefix="": {})
        prefix, head = start_round(ctx, "base", row["prompt"], row["initial_response"])
        text, reason, rest = finish_round(ctx, "base", row["prompt"], row["initial_response"], prefix)
        return {"head_meta": mentions_meta_words("\n".join(head.text.split("\n")[:2]),
                                                 prompts.flavour.config.meta_words),
                "tokens": head.completion_tokens + rest.completion_tokens, "reason": reason,
                "growth": count_words(text) / max(1, count_words(row["initial_response"])) if text else None}

    results = {str(t): [] for t in args.templates}
    try:
        with ThreadPoolExecutor(args.workers) as pool:
            for turn in range(args.turns):
                for directory in args.templates:
                    prompts = PromptBuilder(Flavour(FLAVOUR, prompt_templates=directory), tokenizer)
                    got = list(pool.map(lambda row: round_one(prompts, row), rows))
                    results[str(directory)] += got
                    print(f"turn {turn + 1}: {directory} done", flush=True)
    finally:
        engine.close()

    print(f"step2 round 1, {len(rows)} chains per turn, {args.turns} turns, cap {cap} ({args.profile})")
    print("| wording | rounds | chat answers opening with draft words | rounds passed | passed: mean growth | "
          "reasons of the others | tokens per round |")
    print("|---|---|---|---|---|---|---|")
    for name, got in results.items():
        passed = [r for r in got if r["reason"] is None]
        growth = sum(r["growth"] for r in passed) / len(passed) if passed else 0.0
        reasons = dict(Counter(r["reason"] for r in got if r["reason"]).most_common())
        print(f"| {name} | {len(got)} | {sum(r['head_meta'] for r in got)} | {len(passed)} | {growth:.2f}x | "
              f"{reasons} | {sum(r['tokens'] for r in got) / len(got):.0f} |")
    sys.stdout.flush()
    os._exit(0)  # the engine's threads' teardown at exit can hang (as in bench/serving.py)


if __name__ == "__main__":
    main()
