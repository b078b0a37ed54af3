"""Plot fit checks side by side: each bench/fit_check.py run's held-out mean words with its 95% interval, its clean
mean (answers that end, don't loop and stay under the cap), and its share of answers that loop.

Usage: .venv/bin/python bench/plot_fit_checks.py --out bench/fit_rows.png base=/tmp/fit_base "12 rows=/tmp/fit_12"
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from self_lengthen.errors import UsageError, cli_main  # noqa: E402
from self_lengthen.report import pyplot, save_figure  # noqa: E402


def load(spec: str) -> tuple[str, dict]:
    label, sep, workdir = spec.partition("=")
    path = Path(workdir) / "fit_check.json"
    if not sep or not path.is_file():
        raise UsageError(f"{spec!r}: give LABEL=WORKDIR, where WORKDIR holds a finished fit_check.py run's "
                         f"fit_check.json")
    return label, json.loads(path.read_text())["heldout"]


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("runs", nargs="+", help="LABEL=WORKDIR of a fit_check.py run")
    args = p.parse_args(argv)
    runs = [load(spec) for spec in args.runs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    xs = range(len(runs))
    means = [r["mean"] for _, r in runs]
    errs = [[r["mean"] - r["ci95"][0] for _, r in runs], [r["ci95"][1] - r["mean"] for _, r in runs]]
    ax.errorbar(xs, means, yerr=errs, fmt="o", capsize=4, label="held-out mean words (95% CI)")
    ax.plot(xs, [r["clean_mean"] for _, r in runs], "s", label="clean answers' mean words")
    for x, (_, r) in zip(xs, runs):
        ax.annotate(f"loops {r['repetition_pct']}%\ncap {r['capped_pct']}%", (x, r["ci95"][1]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xticks(list(xs), [label for label, _ in runs])
    ax.set_xlim(-0.5, len(runs) - 0.5)
    ax.set_ylim(0, max(r["ci95"][1] for _, r in runs) * 1.25)
    ax.set_ylabel("words")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
