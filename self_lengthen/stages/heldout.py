"""The Generator on held-out instructions: how long the model that writes step1's answers writes on tasks it never
sees in training. Each iteration K measures its Generator before step0 (the base model for K=1, then `gen_sft` of
K-1), with the method's sampling and the profile's step1 max_tokens, one answer per instruction and no retries.

The instructions are eval/data/heldout_{en,zh}.jsonl (the flavour's language), written for this project and never
used as seeds; step0 drops any instruction that matches one of them. Rows: prompt, response, words, and whether the
answer ends unfinished, repeats an n-gram (the response check's tests) or hit max_tokens.
"""
import json
import statistics
import threading
from pathlib import Path

from ..errors import UsageError, cli_main
from ..flavour import Flavour
from ..text import count_words, ends_a_sentence, has_repeated_ngram
from .common import StageContext, base_parser, finished, run_stage

HELDOUT_DIR = Path(__file__).resolve().parent.parent.parent / "eval" / "data"
NAME = "heldout"


def heldout_file(flavour: Flavour) -> Path:
    return HELDOUT_DIR / f"heldout_{flavour.config.language}.jsonl"


def heldout_prompts(flavour: Flavour) -> list[str]:
    path = heldout_file(flavour)
    if not path.is_file():
        raise UsageError(f"the held-out instructions {path} are missing; restore them from the repository")
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_work(ctx: StageContext, model: str):
    def work(key: str, prompt: str, stop: threading.Event) -> dict | None:
        if stop.is_set():
            return None
        out = ctx.client.chat(model, ctx.prompts.messages(prompt), **ctx.sampling())
        text = out.text.strip()
        return {"status": "accepted", "prompt": prompt, "response": text, "words": count_words(text),
                "unfinished": not ends_a_sentence(text), "repetition": has_repeated_ngram(text),
                "capped": out.finish_reason == "length", "tries": 1, "tokens": out.completion_tokens}

    return work


def run(ctx: StageContext, count: int | None) -> Path:
    if done := finished(ctx, NAME):
        return done
    prompts = heldout_prompts(ctx.flavour)[:count]
    model = ctx.model("gen_sft")
    ctx.check_model_served(model)
    items = {f"{i:04d}": p for i, p in enumerate(prompts)}
    columns = ["prompt", "response", "words", "unfinished", "repetition", "capped"]
    return run_stage(ctx, NAME, items, make_work(ctx, model), columns=columns,
                     rows_of=lambda recs: [{c: r[c] for c in columns} for r in recs], length_column=None, model=model,
                     types={"words": "int64", "unfinished": "bool", "repetition": "bool", "capped": "bool"})


def length_stats(words: list[int]) -> dict:
    """Mean and median words, with a 95% confidence interval of the mean (normal approximation)."""
    n = len(words)
    if not n:
        return {"n": 0}
    mean = statistics.mean(words)
    half = 1.96 * statistics.stdev(words) / n ** 0.5 if n > 1 else 0.0
    return {"n": n, "mean": round(mean, 1), "median": statistics.median(words),
            "ci95": [round(mean - half, 1), round(mean + half, 1)]}


def parser():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=None, help="answer only the first N held-out instructions")
    return p


@cli_main
def main(flavour_dir: Path, argv=None):
    args = parser().parse_args(argv)
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count={args.count} must be at least 1")
    run(StageContext.create(args, flavour_dir), args.count)
