"""Score length-following on a LonGen-style JSONL (rows with type, constraint, response).

Usage: python eval/length_following_eval.py FILE [--json]
Prints each type's average, then `Overall: <mean over all rows>`.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from self_lengthen.io import read_jsonl  # noqa: E402
from self_lengthen.errors import ArgParser, UsageError, cli_main  # noqa: E402
from self_lengthen.evaluation import TYPES, band, check_constraints, length_score  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402


def score_rows(rows: list[dict], source: str) -> list[dict]:
    check_constraints(rows, source)
    scored = []
    for row in rows:
        if not isinstance(row.get("response"), str):
            raise UsageError(f"{source}: line {row['_line']} has no 'response' text (generate it with eval/generate.py)")
        lo, hi = band(row["type"], row["constraint"])
        words = count_words(row["response"])
        scored.append({"line": row["_line"], "type": row["type"], "words": words, "band": [lo, hi],
                       "score": length_score(words, lo, hi)})
    return scored


def report(scored: list[dict]) -> dict:
    by_type = defaultdict(list)
    for s in scored:
        by_type[s["type"]].append(s["score"])
    return {"per_type": {t: sum(v) / len(v) for t in TYPES if (v := by_type.get(t))},
            "counts": {t: len(by_type[t]) for t in TYPES if by_type.get(t)},
            "overall": sum(s["score"] for s in scored) / len(scored)}


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    result = report(score_rows(read_jsonl(args.file, required=("type",)), args.file))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return
    for kind, value in result["per_type"].items():
        print(f"{kind}: {value:.4f} ({result['counts'][kind]} rows)")
    print(f"Overall: {result['overall']:.4f}")


if __name__ == "__main__":
    main()
