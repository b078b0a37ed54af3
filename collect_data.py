"""Gather every results/*/initial_responses and extended_responses (Self-Lengthen) and agentwrite_responses
(AgentWrite) into long.jsonl ({"query", "response", "method"} lines), dropping exact duplicates.

Usage: python collect_data.py [--results DIR ...] [--output long.jsonl]
Default --results: qwen/results and llama/results (those that exist).
"""
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from self_lengthen.errors import ArgParser, UsageError, cli_main  # noqa: E402
from self_lengthen.io import output_file, write_jsonl_atomic  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402

# (dataset, its response column, the method that made it)
SOURCES = (("initial_responses", "initial_response", "self-lengthen"),
           ("extended_responses", "extended_response", "self-lengthen"),
           ("agentwrite_responses", "agentwrite_response", "agentwrite"))


def gather(results_dirs: list[Path]) -> tuple[list[dict], dict]:
    from datasets import load_from_disk

    rows, seen, counts = [], set(), {name: 0 for name, _, _ in SOURCES} | {"duplicates": 0}
    for results in results_dirs:
        for iter_dir in sorted(results.glob("iter_*")):
            for name, column, method in SOURCES:
                ds_dir = iter_dir / name
                if not (ds_dir / "_COMPLETE").exists():
                    continue
                for row in load_from_disk(str(ds_dir)):
                    key = (row["prompt"], row[column])
                    if key in seen:
                        counts["duplicates"] += 1
                        continue
                    seen.add(key)
                    rows.append({"query": row["prompt"], "response": row[column], "method": method})
                    counts[name] += 1
    return rows, counts


@cli_main
def main(argv=None):
    p = ArgParser(prog="collect_data.py", description=__doc__.splitlines()[0])
    p.add_argument("--results", action="append", default=None, help="a results/ dir (repeatable)")
    p.add_argument("--output", default="long.jsonl")
    args = p.parse_args(argv)
    out = output_file(args.output, "--output")
    if args.results:
        dirs = [Path(d) for d in args.results]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise UsageError(f"--results {missing[0]}: no such directory")
    else:
        dirs = [d for d in (ROOT / "qwen" / "results", ROOT / "llama" / "results") if d.is_dir()]
        if not dirs:
            raise UsageError("no results found in qwen/results or llama/results; run run.sh first or pass --results")
    rows, counts = gather(dirs)
    if not rows:
        raise UsageError(f"no finished initial_responses, extended_responses or agentwrite_responses under "
                         f"{', '.join(map(str, dirs))}")
    write_jsonl_atomic(out, rows)
    mean = statistics.mean(count_words(r["response"]) for r in rows)
    print(f"wrote {len(rows)} rows to {out}: {counts['initial_responses']} initial, {counts['extended_responses']} "
          f"extended, {counts['agentwrite_responses']} AgentWrite, {counts['duplicates']} duplicates dropped; "
          f"mean {mean:.0f} words")


if __name__ == "__main__":
    main()
