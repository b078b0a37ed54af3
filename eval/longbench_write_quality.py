"""LongBench-Write's two scores on answered rows: the length score S_l and the quality score S_q, per band of
required length (0-500, 500-2,000, 2,000-4,000, over 4,000 words) and overall.

Usage: python eval/longbench_write_quality.py FILE [--judge_model NAME] [--judge_base_url URL] [--workers 4] [--json]
FILE is in LongBench-Write's format (`prompt`, `length`) with a `response` per row (eval/generate.py FILE --model M
writes one). S_q: an LLM judge (any OpenAI-compatible endpoint, key from $JUDGE_API_KEY; by default the locally
served base model) rates relevance, accuracy, coherence, clarity, breadth and depth, and reading experience from 0
to 10 (the prompt is eval/longbench_write_quality.md); a row's quality is the mean of the six, S_q the mean over rows
x 10 (0-100). A verdict that cannot be read is asked again (--tries), then counted as unjudged. Words are counted as
LongBench-Write counts them (CJK ideographs plus runs of Latin letters).
"""
import json
import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_lengthen.client import Client  # noqa: E402
from self_lengthen.errors import ArgParser, UsageError, cli_main  # noqa: E402
from self_lengthen.evaluation import longbench_length_score, longwriter_words  # noqa: E402
from self_lengthen.io import read_jsonl  # noqa: E402
from self_lengthen.judge import (add_judge_arguments, judge_client, judge_rows,  # noqa: E402
                                 verdict_parser, verdicts_path)

DIMENSIONS = ("relevance", "accuracy", "coherence", "clarity", "breadth and depth", "reading experience")
PROMPT = string.Template((Path(__file__).with_name("longbench_write_quality.md")).read_text())
PARSE = verdict_parser(PROMPT.template, DIMENSIONS, 0, 10)
BANDS = (("0-500", 0, 500), ("500-2000", 500, 2000), ("2000-4000", 2000, 4000), ("4000+", 4000, float("inf")))


def band_of(length: float) -> str:
    return next(name for name, lo, hi in BANDS if lo <= length < hi)


def check_rows(rows: list[dict], source: str) -> None:
    for row in rows:
        if not isinstance(row.get("response"), str):
            raise UsageError(f"{source}: line {row['_line']} has no 'response' text (answer the file with "
                             f"eval/generate.py first)")
        if not isinstance(row.get("length"), (int, float)) or row["length"] <= 0:
            raise UsageError(f"{source}: line {row['_line']}: 'length' must be a positive number")


def score_quality(rows: list[dict], client: Client, model: str, workers: int, tries: int = 3,
                  checkpoint: Path | None = None) -> dict:
    """S_q over rows with prompt (or query) and response; per-row quality in `per_row` (None: unjudged)."""
    verdicts = judge_rows(rows, client, model,
                          lambda r: PROMPT.substitute(prompt=r.get("prompt") or r["query"], response=r["response"]),
                          PARSE, workers, tries, checkpoint)
    per_row = [sum(v.values()) / len(v) * 10 if v else None for v in verdicts]
    judged = [q for q in per_row if q is not None]
    means = {d: round(sum(v[d] for v in verdicts if v) / len(judged), 2) if judged else None for d in DIMENSIONS}
    return {"s_q": round(sum(judged) / len(judged), 1) if judged else None, "per_dimension": means,
            "judged": len(judged), "unjudged": len(per_row) - len(judged), "per_row": per_row}


def score_file(rows: list[dict], quality: dict | None) -> dict:
    """S_l and (with a judge) S_q per band of required length and overall."""
    table = {}
    for name in [b[0] for b in BANDS] + ["overall"]:
        idx = [i for i, r in enumerate(rows) if name == "overall" or band_of(r["length"]) == name]
        if not idx:
            continue
        s_l = [longbench_length_score(rows[i]["length"], longwriter_words(rows[i]["response"])) for i in idx]
        entry = {"rows": len(idx), "s_l": round(sum(s_l) / len(s_l), 1)}
        if quality is not None:
            q = [quality["per_row"][i] for i in idx if quality["per_row"][i] is not None]
            entry["s_q"] = round(sum(q) / len(q), 1) if q else None
        table[name] = entry
    return table


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    add_judge_arguments(p, model_help="the judge's model name; 'none' for S_l only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = read_jsonl(args.file, required=("prompt", "length"))
    check_rows(rows, args.file)
    quality = None
    if args.judge_model != "none":
        quality = score_quality(rows, judge_client(args.judge_base_url), args.judge_model, args.workers, args.tries,
                                verdicts_path(args, Path(args.file)))
    table = score_file(rows, quality)
    if args.json:
        print(json.dumps({"bands": table, **({k: v for k, v in quality.items() if k != "per_row"} if quality else {})}))
        return
    print("| required words | rows | S_l |" + (" S_q |" if quality else ""))
    print("|---|---|---|" + ("---|" if quality else ""))
    for name, entry in table.items():
        print(f"| {name} | {entry['rows']} | {entry['s_l']} |" + (f" {entry['s_q']} |" if quality else ""))
    if quality:
        print(f"judged {quality['judged']} rows; unreadable verdicts: {quality['unjudged']}")


if __name__ == "__main__":
    main()
