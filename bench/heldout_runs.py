"""The final Generator against the base model on held-out instructions, pooled over several runs (issue 14, item 6).

One run's 16 held-out answers per model give a 95% interval of about +-12% on the mean, too wide to tell a small
effect. Every run of `make demo` answers the same held-out instructions with the base model (iteration 1) and with
its final Generator (the last iteration's), so the runs can be pooled: per run, the ratio of the final Generator's
mean words to the base's; over runs, the ratio of pooled means for each iteration's Generator, with a 95% interval
from resampling runs. The same for clean answers (ending a sentence, no repeated n-gram, under max_tokens), with
the shares of answers that hit max_tokens or repeat. Beside them, what the run's adapters trained on: the `gen_sft`
targets' mean words, per iteration, as a ratio to the base's held-out mean. With --plot, draws each run's
Generators as a ratio to its base's mean, beside the pooled ratio and its interval. Reads only the runs' results;
needs no engine.

Usage: .venv/bin/python bench/heldout_runs.py [--plot PNG] /work/demo_N/results /work/demo_O/results ...
"""
import argparse
import json
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from self_lengthen.errors import UsageError, cli_main  # noqa: E402
from self_lengthen.report import iteration_dirs, pyplot, run_name, save_figure  # noqa: E402
from self_lengthen.stages.heldout import is_clean  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402

RESAMPLES = 10_000


def answers(iter_dir: Path) -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(iter_dir / "heldout")).to_list()


def measured_iterations(results: Path) -> list[tuple[int, Path]]:
    """(K, results/iter_K) of the iterations whose Generator answered the held-out instructions, in order."""
    return [(k, d) for k, d in iteration_dirs(results) if (d / "heldout" / "_COMPLETE").exists()]


def targets_mean(iter_dir: Path) -> float | None:
    path = iter_dir / "data" / "gen_sft.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text(encoding="utf-8"))
    return statistics.mean(count_words(r["output"]) for r in rows) if rows else None


def run_figures(results: Path) -> dict:
    its = measured_iterations(results)
    if len(its) < 2 or its[0][0] != 1:
        raise UsageError(f"{results}: needs held-out answers of iteration 1 (the base model) and a later "
                         "iteration (its final Generator); give a finished run's results dir")
    by_iter = {k: answers(d) for k, d in its}
    targets = [targets_mean(d) for _, d in iteration_dirs(results)]
    return {"name": run_name(results), "base": by_iter[1], "final": by_iter[its[-1][0]],
            "final_iter": its[-1][1].name, "by_iter": by_iter, "targets": [t for t in targets if t is not None]}


def pooled_ratio(runs: list[dict], pick, later=lambda run: run["final"]) -> float | None:
    """Ratio of a later Generator's pooled mean words (the final one's unless `later` says) to the base's, over
    the answers `pick` keeps."""
    b = [r["words"] for run in runs for r in run["base"] if pick(r)]
    f = [r["words"] for run in runs for r in later(run) if pick(r)]
    return statistics.mean(f) / statistics.mean(b) if b and f else None


def interval(runs: list[dict], pick, rng: random.Random, later=lambda run: run["final"]) -> tuple[float, float]:
    """95% interval of pooled_ratio, resampling runs with replacement."""
    got = sorted(x for x in (pooled_ratio([rng.choice(runs) for _ in runs], pick, later) for _ in range(RESAMPLES))
                 if x is not None)
    return got[int(0.025 * len(got))], got[int(0.975 * len(got)) - 1]


def share(rows: list[dict], col: str) -> float:
    return 100 * sum(r[col] for r in rows) / len(rows)


def mean_words(rows: list[dict], pick=lambda r: True) -> float:
    kept = [r["words"] for r in rows if pick(r)]
    return statistics.mean(kept) if kept else float("nan")


def plot(runs: list[dict], pooled: dict[int, tuple[float, float, float]], out: Path) -> None:
    """Each run's Generators (iteration 1's is the base) as ratios to its base's mean, thin; pooled, thick."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run in runs:
        base = mean_words(run["base"])
        ks = sorted(run["by_iter"])
        ax.plot(ks, [mean_words(run["by_iter"][k]) / base for k in ks], "-o", alpha=0.45, lw=1, ms=3,
                label=run["name"])
    ks = [1] + sorted(pooled)
    mid = [1.0] + [pooled[k][0] for k in ks[1:]]
    err = [[0.0] + [pooled[k][0] - pooled[k][1] for k in ks[1:]], [0.0] + [pooled[k][2] - pooled[k][0] for k in ks[1:]]]
    ax.errorbar(ks, mid, yerr=err, fmt="-s", color="black", lw=2.5, capsize=5,
                label=f"pooled over {len(runs)} runs (95% interval over runs)")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xticks(ks, ["base" if k == 1 else f"gen_sft of it. {k - 1}" for k in ks])
    ax.set_ylabel("held-out mean words / the run's base")
    ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, out, dpi=100)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, help="also draw the runs' ratios to their base into this PNG")
    p.add_argument("results", nargs="+", type=Path, help="a finished run's results dir")
    args = p.parse_args(argv)
    runs = [run_figures(path) for path in args.results]
    print("| run | final | base mean | final mean | ratio | clean: base, final | at max_tokens %: base, final | "
          "repetition %: base, final | gen_sft targets / base mean, per iteration |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        b, f = run["base"], run["final"]
        bm = mean_words(b)
        print(f"| {run['name']} | {run['final_iter']} | {bm:.1f} | {mean_words(f):.1f} | {mean_words(f) / bm:.2f} | "
              f"{mean_words(b, is_clean):.1f}, {mean_words(f, is_clean):.1f} | {share(b, 'capped'):.1f}, "
              f"{share(f, 'capped'):.1f} | {share(b, 'repetition'):.1f}, {share(f, 'repetition'):.1f} | "
              f"{', '.join(f'{t / bm:.2f}' for t in run['targets'])} |")
    above = sum(mean_words(r["final"]) > mean_words(r["base"]) for r in runs)
    rng = random.Random(0)
    print()
    print(f"final Generator's held-out mean above the base's: {above} of {len(runs)} runs")
    print()
    print("| Generator measured at the start of | runs | answers | pooled ratio to the base, all answers (95% interval "
          "over runs) | clean answers (95% interval) |")
    print("|---|---|---|---|---|")
    pooled = {}
    for k in sorted({k for run in runs for k in run["by_iter"]} - {1}):
        have = [run for run in runs if k in run["by_iter"]]
        later = (lambda run, k=k: run["by_iter"][k])
        figures = []   # (ratio, lo, hi) over all answers, then over clean answers
        for pick in (lambda r: True, is_clean):
            lo, hi = interval(have, pick, rng, later)
            figures.append((pooled_ratio(have, pick, later), lo, hi))
        pooled[k] = figures[0]   # the plot shows all answers
        cells = " | ".join(f"{ratio:.3f} ({lo:.3f}-{hi:.3f})" for ratio, lo, hi in figures)
        print(f"| iter_{k} (gen_sft of iteration {k - 1}) | {len(have)} | {sum(len(r['by_iter'][k]) for r in have)} | "
              f"{cells} |")
    if args.plot:
        plot(runs, pooled, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
