"""Generate answers to a LonGen-format file with several served models and print a table of the length-following
score and LongBench-Write's S_l (required length: the constraint's target) per model.

Usage: python eval/compare_models.py FILE --models base,gen_sft [--outdir DIR] [--base_url URL] [--max_tokens N]
Answers are kept in OUTDIR/<file>.<model>.jsonl (resumable, see generate.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import generate  # noqa: E402

from self_lengthen.client import Client  # noqa: E402
from self_lengthen.io import output_dir, read_jsonl  # noqa: E402
from self_lengthen.errors import ArgParser, cli_main, positive_int  # noqa: E402
from self_lengthen.evaluation import check_constraints, longen_scores  # noqa: E402


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--models", default="base,gen_sft")
    p.add_argument("--outdir", default=".")
    p.add_argument("--base_url", default=None)
    p.add_argument("--max_tokens", type=positive_int, default=16384)
    p.add_argument("--workers", type=positive_int, default=8)
    args = p.parse_args(argv)
    source = Path(args.file)
    rows = read_jsonl(source, required=("query", "type", "constraint"))
    check_constraints(rows, str(source))  # before any answer is generated
    outdir = output_dir(args.outdir, "--outdir")
    client = Client(args.base_url)
    table = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        out = outdir / f"{source.stem}.{model}.jsonl"
        generate(rows, client, model, out, args.workers, args.max_tokens)
        scores = longen_scores([{**r, "words": r["response_length"]} for r in read_jsonl(out)])
        table.append((model, scores["following"], scores["s_l"], scores["mean_words"]))
    print("\n| model | length-following | S_l | mean words |\n|---|---|---|---|")
    for model, following, s_l, words in table:
        print(f"| {model} | {following:.3f} | {s_l:.1f} | {words:.0f} |")


if __name__ == "__main__":
    main()
