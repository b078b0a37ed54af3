"""How many tokens would ending a request at a certain rejection save? (issue 13's lead on aborting doomed texts)

Round 1 of every chain on the fixed initial responses (bench/data/step2_initial_responses.jsonl), with the real
stage functions and the method's sampling, in an engine in this process: the chat request, then the completion at
the profile's cap, recording the engine's text after every step, as the worker sees it. At every `--every`-th
token, `certain_rejection` judges prefix + that text as the worker would (tokens left to the cap, the stop strings'
hold-back). Prints the tokens after the first such verdict (what the worker would not generate), and checks each
verdict against the stage's round check on the finished completion: a verdict on a round that passes is a bug.
Also checks that every step's text is a prefix of the final text, less the hold-back (what the verdict assumes).

`--corpus FILE` writes every completion (prefix, texts per step, final reason) as JSON lines, for tests.

Usage: .venv/bin/python bench/reject_early.py [--profile cpu-demo] [--attempts 2] [--corpus FILE]
"""
import argparse
import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from self_lengthen.text import TokenBounds, certain_rejection  # noqa: E402


def corpus_case(result: dict, cap: int) -> dict:
    """A completion for tests: its final text, and each step at a multiple of 16 tokens (where the worker checks)
    as (tokens, length of its text), the text being the final text's first `length` characters (checked above;
    a step whose text is not is left out), and the last step."""
    final = result["steps"][-1][1]
    steps = [[t, len(text)] for t, text, _ in result["steps"] if final.startswith(text) and t % 16 == 0]
    steps.append([result["steps"][-1][0], len(final)])
    return {"prefix": result["prefix"], "cap": cap, "reason": result["reason"], "final": final, "steps": steps}


def main():
    from synthesis import run_with_engine_env

    run_with_engine_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="cpu-demo", help="whose step2 max_tokens")
    p.add_argument("--attempts", type=int, default=2, help="chains per initial response (step2 makes 2)")
    p.add_argument("--every", type=int, default=16, help="judge the text every this many tokens")
    p.add_argument("--workers", type=int, default=32)
    p.add_argument("--corpus", type=Path, default=None)
    args = p.parse_args()

    from synthesis import FLAVOUR, InProcessEngine, fixture_rows

    from self_lengthen.chat_template import load_tokenizer, needs_special_tokens
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.profile import load_profile
    from self_lengthen.serve.worker import sampling_params
    from self_lengthen.stages.common import STOP_STRINGS
    from self_lengthen.stages.extend import round_reason, start_round

    cap = int(load_profile(args.profile)["generation"]["max_tokens"]["extend"])
    held_back = max(map(len, STOP_STRINGS)) - 1
    model = ensure_default_model()
    flavour = Flavour(FLAVOUR)
    tokenizer = load_tokenizer(model)
    prompts = PromptBuilder(flavour, tokenizer)
    bounds = TokenBounds.of(tokenizer)
    engine = InProcessEngine(model)
    meta = flavour.config.meta_words
    chains = [row for row in fixture_rows() for _ in range(args.attempts)]

    def stepwise(prompt: str) -> list[tuple[int, str, str | None]]:
        """(tokens, text, finish reason) after every engine step of one completion request."""
        from vllm.inputs import TokensPrompt

        ids = engine.tokenizer.encode(prompt, add_special_tokens=needs_special_tokens(engine.tokenizer, prompt))
        params = {**engine.sampling, "stop": list(STOP_STRINGS),
                  "max_new_tokens": min(cap, engine.context_len - len(ids))}

        async def run():
            steps = []
            async for out in engine.engine.generate(TokensPrompt(prompt_token_ids=ids),
                                                    sampling_params(params, engine.eos_ids), uuid.uuid4().hex):
                choice = out.outputs[0]
                steps.append((len(choice.token_ids), choice.text, choice.finish_reason if out.finished else None))
            return steps

        return asyncio.run_coroutine_threadsafe(run(), engine.loop).result(timeout=1800)

    def one(row):
        def sampling(**extra):  # the stage's request (ctx.sampling)
            return {"max_tokens": cap, "stop": list(STOP_STRINGS), **extra}

        ctx = SimpleNamespace(client=engine, prompts=prompts, sampling=sampling)
        prefix, _ = start_round(ctx, "base", row["prompt"], row["initial_response"])
        steps = stepwise(prompts.extend_completion(row["prompt"], row["initial_response"], prefix))
        final_tokens, final, finish = steps[-1]
        reason = round_reason(prefix + final, row["initial_response"], meta)
        verdict, at, next_check = None, None, args.every
        not_prefix = 0
        for tokens, text, _ in steps[:-1]:
            if not final.startswith(text[: max(0, len(text) - held_back)]):
                not_prefix += 1
            if verdict is None and tokens >= next_check:
                next_check = tokens + args.every
                verdict = certain_rejection(prefix + text, cap - tokens, bounds, held_back, meta)
                at = tokens if verdict else None
        return {"prefix": prefix, "steps": steps, "reason": reason, "verdict": verdict, "at": at,
                "tokens": final_tokens, "finish": finish, "not_prefix": not_prefix}

    try:
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(one, chains))
    finally:
        engine.close()

    total = sum(r["tokens"] for r in results)
    judged = [r for r in results if r["verdict"]]
    wrong = [r for r in judged if r["reason"] is None]
    saved = sum(r["tokens"] - r["at"] for r in judged)
    print(f"step2 round 1 on {len(results)} chains ({args.profile}: completions capped at {cap}; judged every "
          f"{args.every} tokens; one token adds at most {bounds.ideographs} ideographs, {bounds.visible} visible "
          f"characters)")
    print(f"completion tokens {total}; rejected at the end: {sum(r['reason'] is not None for r in results)} "
          f"{dict(Counter(r['reason'] for r in results if r['reason']))}; capped: "
          f"{sum(r['finish'] == 'length' for r in results)}")
    print(f"certain rejections: {len(judged)} {dict(Counter(r['verdict'] for r in judged))}, at token "
          f"{sorted(r['at'] for r in judged)}; tokens after them: {saved} ({saved / max(total, 1):.1%} of the "
          f"completion tokens)")
    print(f"verdicts on rounds that pass (must be 0): {len(wrong)}; step texts that are not a prefix of the final "
          f"text less {held_back} characters (must be 0): {sum(r['not_prefix'] for r in results)}")
    if args.corpus:
        with args.corpus.open("w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(corpus_case(r, cap), ensure_ascii=False) + "\n")
        print(f"corpus: {args.corpus}")
    sys.stdout.flush()
    os._exit(0)  # the engine's threads' teardown at exit can hang (as in bench/serving.py)


if __name__ == "__main__":
    main()
