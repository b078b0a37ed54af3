"""The Generator on held-out instructions: how long the model that writes step1's answers writes on tasks it never
sees in training. Each iteration K measures its Generator (the base model for K=1, then `gen_sft` of K-1) beside
step1, which uses the same model, with the method's sampling and the profile's step1 max_tokens, one answer per
instruction and no retries.

The instructions are eval/data/heldout_{en,zh}.jsonl (the flavour's language), written for this project and never
used as seeds; step0 drops any instruction that matches one of them. Rows: prompt, response, words, and whether the
answer ends unfinished, repeats an n-gram (the response check's tests) or hit max_tokens.

The same model, with the same sampling, then answers the LonGen-style sample (eval/data/longen_sample.jsonl, both
languages, each with a required length) in `heldout_longen`, which the report scores for length-following and S_l.
Each part is its own resumable stage: a rerun on a run measured before this part existed adds only what is missing.
"""
import json
import statistics
import threading
from pathlib import Path

from ..errors import UsageError, cli_main, positive_int
from ..evaluation import check_constraints
from ..flavour import Flavour
from ..io import read_jsonl
from ..text import count_words, ends_a_sentence, has_repeated_ngram
from .common import StageContext, base_parser, is_complete, run_stage

HELDOUT_DIR = Path(__file__).resolve().parent.parent.parent / "eval" / "data"
NAME = "heldout"
LONGEN_NAME = "heldout_longen"
LONGEN_SAMPLE = HELDOUT_DIR / "longen_sample.jsonl"


def heldout_file(flavour: Flavour) -> Path:
    return HELDOUT_DIR / f"heldout_{flavour.config.language}.jsonl"


def heldout_prompts(flavour: Flavour) -> list[str]:
    path = heldout_file(flavour)
    if not path.is_file():
        raise UsageError(f"the held-out instructions {path} are missing; restore them from the repository")
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def longen_sample() -> list[dict]:
    if not LONGEN_SAMPLE.is_file():
        raise UsageError(f"the LonGen-style sample {LONGEN_SAMPLE} is missing; restore it from the repository")
    rows = read_jsonl(LONGEN_SAMPLE, required=("query", "type", "constraint"))
    check_constraints(rows, str(LONGEN_SAMPLE))
    return rows


def make_work(ctx: StageContext, model: str):
    """One answer per item (its `prompt`, and any fields to keep beside the answer), no retries."""
    def work(key: str, item: dict, stop: threading.Event) -> dict | None:
        if stop.is_set():
            return None
        out = ctx.client.chat(model, ctx.prompts.messages(item["prompt"]), **ctx.sampling())
        text = out.text.strip()
        return {"status": "accepted", **item, "response": text, "words": count_words(text),
                "unfinished": not ends_a_sentence(text), "repetition": has_repeated_ngram(text),
                "capped": out.finish_reason == "length", "tries": 1, "tokens": out.completion_tokens}

    return work


COLUMNS = ["prompt", "response", "words", "unfinished", "repetition", "capped"]
CHECK_TYPES = {"words": "int64", "unfinished": "bool", "repetition": "bool", "capped": "bool"}


def is_clean(row: dict) -> bool:
    """An answer that ends a sentence, repeats no n-gram and stops before max_tokens: a loop run to the cap is not
    writing longer, and it can carry a mean."""
    return not (row["unfinished"] or row["repetition"] or row["capped"])


def run(ctx: StageContext, count: int | None) -> Path:
    """The held-out instructions, then the LonGen-style sample; each part skipped if a previous run completed it."""
    model = ctx.model("gen_sft")
    if not (is_complete(ctx.iter_dir / NAME) and is_complete(ctx.iter_dir / LONGEN_NAME)):
        ctx.check_model_served(model)
    out = answer(ctx, model, NAME,
                 {f"{i:04d}": {"prompt": p} for i, p in enumerate(heldout_prompts(ctx.flavour)[:count])})
    sample = {f"{r['_line']:04d}": {"prompt": r["query"], "type": r["type"], "constraint": r["constraint"]}
              for r in longen_sample()[:count]}
    answer(ctx, model, LONGEN_NAME, sample, COLUMNS + ["type", "constraint"])
    return out


def answer(ctx: StageContext, model: str, name: str, items: dict, columns: list[str] = COLUMNS) -> Path:
    """The resumable stage `name`: `model`'s one answer to each item, kept in `columns`."""
    return run_stage(ctx, name, items, make_work(ctx, model), columns=columns,
                     rows_of=lambda recs: [{c: r[c] for c in columns} for r in recs], length_column=None,
                     model=model, types=CHECK_TYPES)


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
    p.add_argument("--count", type=positive_int, default=None,
                   help="answer only the first N held-out instructions and the first N LonGen-style queries")
    return p


@cli_main
def main(flavour_dir: Path, argv=None):
    args = parser().parse_args(argv)
    run(StageContext.create(args, flavour_dir), args.count)
