"""LongBench-Write's length score S_l over a JSONL of rows with a required `length` and a `response`
(or `response_length`), plus a required-vs-output scatter plot on log axes. Words are counted as LongBench-Write
counts them (CJK ideographs plus runs of Latin letters: evaluation.longwriter_words).

Usage: python eval/longbench_write_length.py FILE [--plot scatter.png] [--json]
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_lengthen.io import output_file, read_jsonl  # noqa: E402
from self_lengthen.errors import ArgParser, UsageError, cli_main  # noqa: E402
from self_lengthen.evaluation import longbench_length_score, longwriter_words  # noqa: E402


def pairs(rows: list[dict], source: str) -> list[tuple[float, float]]:
    out = []
    for row in rows:
        try:
            required = float(row["length"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{source}: line {row['_line']} has no numeric 'length'") from None
        if required <= 0:
            raise UsageError(f"{source}: line {row['_line']}: 'length' must be positive")
        if isinstance(row.get("response"), str):
            output = longwriter_words(row["response"])
        elif isinstance(row.get("response_length"), (int, float)):
            output = row["response_length"]
        else:
            raise UsageError(f"{source}: line {row['_line']} has neither 'response' nor 'response_length'")
        out.append((required, float(output)))
    return out


def plot(points: list[tuple[float, float]], path: str) -> None:
    from self_lengthen.report import pyplot, save_figure

    xs, ys = zip(*points)
    fig, ax = pyplot().subplots(figsize=(5, 5))
    ax.scatter(xs, ys, s=14, alpha=0.7)
    lo, hi = min(xs + ys) * 0.8, max(xs + ys) * 1.25
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="output = required")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="required length (words)",
           ylabel="output length (words)", title="Required vs. output length")
    ax.legend()
    save_figure(fig, path, dpi=120)


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--plot", default=None, help="write the scatter plot to this PNG")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    plot_path = output_file(args.plot, "--plot") if args.plot else None
    points = pairs(read_jsonl(args.file), args.file)
    scores = [longbench_length_score(x, y) for x, y in points]
    mean = sum(scores) / len(scores)
    if plot_path:
        plot(points, plot_path)
    if args.json:
        print(json.dumps({"S_l": mean, "rows": len(scores)}))
    else:
        print(f"S_l: {mean:.2f} over {len(scores)} rows" + (f"; plot: {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
