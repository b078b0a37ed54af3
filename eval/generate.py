"""Answer every query of a LonGen-format JSONL (or every prompt of a LongBench-Write-format one) with a served model,
adding `response`, `response_length`, `capped` (cut at max_tokens or the model's context) and `tokens` (generated).

Usage: python eval/generate.py FILE --model base|gen_sft [--output OUT] [--workers 8] [--base_url URL]
Each answer is checkpointed as it arrives (OUT.checkpoint.jsonl); a rerun after a kill does only what is missing.
OUT (default FILE's name + .MODEL.jsonl) is written once, when every query is answered.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_lengthen.client import Client  # noqa: E402
from self_lengthen.io import Checkpoint, output_file, read_jsonl, write_jsonl_atomic  # noqa: E402
from self_lengthen.errors import ArgParser, UsageError, cli_main, positive_int  # noqa: E402
from self_lengthen.stages.runner import run_items  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402


def query_of(row: dict) -> str:
    """The request: `query` (LonGen's format) or `prompt` (LongBench-Write's)."""
    return row["query"] if isinstance(row.get("query"), str) else row["prompt"]


def generate(rows: list[dict], client: Client, model: str, output: Path, workers: int, max_tokens: int) -> int:
    if output.exists():
        print(f"{output} already exists; delete it to generate again")
        return 0
    if model not in (served := client.models()):
        raise UsageError(f"the endpoint serves {served}, not {model!r}")
    items = {f"{row['_line']:07d}": row for row in rows}

    def work(key, row, stop):
        if stop.is_set():
            return None
        out = client.chat(model, [{"role": "user", "content": query_of(row)}], max_tokens=max_tokens)
        return {"status": "accepted", "response": out.text, "response_length": count_words(out.text),
                "capped": out.finish_reason == "length", "tokens": out.completion_tokens}

    checkpoint = Checkpoint(output.with_name(output.name + ".checkpoint.jsonl"))
    try:
        records = run_items(items, work, checkpoint, workers=workers, desc=f"generate {model}")
    finally:
        checkpoint.close()
    done = {r["key"]: r for r in records}
    answered = []
    for key, row in sorted(items.items()):
        clean = {k: v for k, v in row.items() if k != "_line"}
        clean.update(response=done[key]["response"], response_length=done[key]["response_length"],
                     capped=done[key].get("capped", False),  # cut at max_tokens or the model's context
                     tokens=done[key].get("tokens"))
        answered.append(clean)
    write_jsonl_atomic(output, answered)
    print(f"wrote {len(items)} answers to {output}")
    return len(items)


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--model", default="base")
    p.add_argument("--output", default=None)
    p.add_argument("--workers", type=positive_int, default=8)
    p.add_argument("--max_tokens", type=positive_int, default=16384)
    p.add_argument("--base_url", default=None)
    args = p.parse_args(argv)
    source = Path(args.file)
    output = output_file(args.output or str(source.with_name(f"{source.stem}.{args.model}.jsonl")), "--output")
    rows = read_jsonl(source)
    bad = next((r["_line"] for r in rows if not any(isinstance(r.get(f), str) for f in ("query", "prompt"))), None)
    if bad is not None:
        raise UsageError(f"{source}: line {bad} has no 'query' or 'prompt' text")
    generate(rows, Client(args.base_url), args.model, output, args.workers, args.max_tokens)


if __name__ == "__main__":
    main()
