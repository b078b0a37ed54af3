"""Score the quality of generated responses with an LLM judge on 7 dimensions (1-10 each), ignoring length.

Usage: python eval/quality_eval.py FILE [--judge_base_url URL] [--judge_model NAME] [--workers 4] [--json]
FILE rows carry `query` and `response` (eval/generate.py writes them). The judge is any OpenAI-compatible
endpoint (key from $JUDGE_API_KEY); by default the locally served base model. The prompt is eval/quality_eval.md.
"""
import json
import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_lengthen.client import Client  # noqa: E402
from self_lengthen.io import read_jsonl  # noqa: E402
from self_lengthen.errors import ArgParser, cli_main  # noqa: E402
from self_lengthen.judge import (add_judge_arguments, judge_client, judge_rows,  # noqa: E402
                                 verdict_parser, verdicts_path)

DIMENSIONS = ("relevance", "coherence", "accuracy", "consistency", "clarity", "creativity", "engagement")
PROMPT = string.Template((Path(__file__).with_name("quality_eval.md")).read_text())


# The first JSON object in an answer that scores all 7 dimensions in [1, 10], and is not the prompt's example.
parse_verdict = verdict_parser(PROMPT.template, DIMENSIONS, 1, 10)


def evaluate(rows, client: Client, model: str, workers: int, tries: int, checkpoint: Path | None = None) -> dict:
    verdicts = judge_rows(rows, client, model, lambda r: PROMPT.substitute(query=r["query"], response=r["response"]),
                          parse_verdict, workers, tries, checkpoint)
    good = [v for v in verdicts if v is not None]
    means = {d: (sum(v[d] for v in good) / len(good) if good else None) for d in DIMENSIONS}
    overall = sum(means[d] for d in DIMENSIONS) / len(DIMENSIONS) if good else None
    return {"per_dimension": means, "overall": overall, "judged": len(good), "unparseable": len(verdicts) - len(good)}


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    add_judge_arguments(p)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = read_jsonl(args.file, required=("query", "response"))
    result = evaluate(rows, judge_client(args.judge_base_url), args.judge_model, args.workers, args.tries,
                      verdicts_path(args, Path(args.file)))
    if args.json:
        print(json.dumps(result))
        return
    for d in DIMENSIONS:
        value = result["per_dimension"][d]
        print(f"{d}: {value:.2f}" if value is not None else f"{d}: n/a")
    print(f"Overall: {result['overall']:.2f}" if result["overall"] is not None else "Overall: n/a")
    print(f"judged {result['judged']} rows; unparseable verdicts: {result['unparseable']}")


if __name__ == "__main__":
    main()
