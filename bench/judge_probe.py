"""What does a model answer when asked for LongBench-Write's verdict? Fills eval/longbench_write_quality.md with the
first N answers of a finished held-out stage, samples each 3 times in-process (vLLM, the judge's temperature and
max_tokens), and counts the answers that are a verdict of the model's own, the prompt's example copied (whole or with
dimensions left out), or anything else. Raw answers go to --out.

Usage: .venv/bin/python bench/judge_probe.py llama/study/results/iter_1/heldout --count 8 --out /tmp/judge_raw.json
Needs the machine to itself.
"""
import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "eval")]

import longbench_write_quality as lbw  # noqa: E402

from self_lengthen.judge import parse_scores  # noqa: E402


def kind(text: str) -> str:
    """own verdict, the example copied (all six or some), or other."""
    if parse_scores(text, lbw.DIMENSIONS, 0, 10) is not None:
        return "a verdict of its own" if lbw.PARSE(text) is not None else "the example, copied"
    for left_out in lbw.DIMENSIONS:
        if parse_scores(text, tuple(d for d in lbw.DIMENSIONS if d != left_out), 0, 10) is not None:
            return f"a verdict without `{left_out}` (copied from the example or not)"
    return "other text"


def main() -> None:
    from synthesis import run_with_engine_env

    run_with_engine_env()  # the engine as our workers run it
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("heldout", type=Path, help="a finished held-out stage's dataset dir (prompt, response)")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from datasets import load_from_disk

    from self_lengthen.default_model import ensure_default_model
    from vllm import LLM, SamplingParams

    rows = load_from_disk(str(args.heldout)).to_list()[:args.count]
    llm = LLM(str(ensure_default_model()), max_model_len=8192, dtype="bfloat16")
    messages = [[{"role": "user", "content": lbw.PROMPT.substitute(prompt=r["prompt"], response=r["response"])}]
                for r in rows]
    outs = llm.chat(messages, SamplingParams(temperature=0.2, max_tokens=300, n=3))
    answers = [c.text for o in outs for c in o.outputs]
    llm.llm_engine.engine_core.shutdown()
    args.out.write_text(json.dumps(answers, indent=1, ensure_ascii=False))
    for name, n in Counter(kind(a) for a in answers).most_common():
        print(f"| {name} | {n} of {len(answers)} |")
    sys.stdout.flush()
    os._exit(0)  # the engine's threads can outlive main otherwise


if __name__ == "__main__":
    main()
