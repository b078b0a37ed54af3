"""The final Generator against the base model on held-out instructions, pooled over several runs (issue 14, item 6).

One run's 16 held-out answers per model give a 95% interval of about +-12% on the mean, too wide to tell a small
effect. Every run of `make demo` answers the same held-out instructions with the base model (iteration 1) and with
its final Generator (the last iteration's), so the runs can be pooled: per run, the ratio of the final Generator's
mean words to the base's; over runs, the ratio of pooled means for each iteration's Generator, with a 95% interval
from resampling runs; and, since every run's base is the same model, how many final Generators are above the
bases' mean pooled over all the runs. The same for clean answers (ending a sentence, no repeated n-gram, under
max_tokens), with the shares of answers that hit max_tokens or repeat, and LonGen-style length-following where it
was measured. Beside them, what the run's adapters trained on: the `gen_sft` targets' mean words, per iteration, as
a ratio to the base's held-out mean. With --plot, draws each run's Generators as a ratio to its base's mean, beside
the pooled ratio and its interval. Reads only the runs' results; needs no engine.

Each run is a finished run's results dir, or a JSONL file of runs' figures as --save writes them (one run per
line: what the pooling needs, so that the evidence outlives the runs' directories). A figure a record lacks (null)
leaves that run out of what needs it; the tables say how many runs each figure pools.

A results dir given as NAME=DIR is named NAME (else by the directory holding it); --from TEXT records, with each
run read from a results dir, what it ran (a profile's option, a commit).

Usage: .venv/bin/python bench/heldout_runs.py [--plot PNG] [--save JSONL] [--from TEXT] RUN ...
  e.g. bench/heldout_runs.py --save bench/data/demo_runs_4e-4.jsonl bench/data/demo_runs_4e-4.jsonl X=/work/demo_X/results
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
from self_lengthen.evaluation import longen_scores  # noqa: E402
from self_lengthen.io import output_file, read_jsonl, write_jsonl_atomic  # noqa: E402
from self_lengthen.report import iteration_dirs, pyplot, run_name, save_figure  # noqa: E402
from self_lengthen.stages.heldout import is_clean  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402

RESAMPLES = 10_000
FIGURES = ("n", "mean", "clean_n", "clean_mean", "capped", "repetition", "longen_following")


def answers(iter_dir: Path, name: str = "heldout") -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(iter_dir / name)).to_list()


def measured_iterations(results: Path) -> list[tuple[int, Path]]:
    """(K, results/iter_K) of the iterations whose Generator answered the held-out instructions, in order."""
    return [(k, d) for k, d in iteration_dirs(results) if (d / "heldout" / "_COMPLETE").exists()]


def targets_mean(iter_dir: Path) -> float | None:
    path = iter_dir / "data" / "gen_sft.json"
    if not path.exists():
        return None
    rows = json.loads(path.read_text(encoding="utf-8"))
    return statistics.mean(count_words(r["output"]) for r in rows) if rows else None


def share(rows: list[dict], col: str) -> float:
    return 100 * sum(r[col] for r in rows) / len(rows)


def mean_words(rows: list[dict], pick=lambda r: True) -> float:
    kept = [r["words"] for r in rows if pick(r)]
    return statistics.mean(kept) if kept else float("nan")


def generator_figures(iter_dir: Path) -> dict:
    """One Generator's figures on the held-out instructions: counts, mean words (all, clean), LonGen following."""
    rows = answers(iter_dir)
    clean = [r for r in rows if is_clean(r)]
    following = None
    if (iter_dir / "heldout_longen" / "_COMPLETE").exists():
        following = longen_scores(answers(iter_dir, "heldout_longen")).get("following")
    return {"n": len(rows), "mean": round(mean_words(rows), 3), "clean_n": len(clean),
            "clean_mean": round(mean_words(clean), 3) if clean else None,
            "capped": sum(bool(r["capped"]) for r in rows), "repetition": sum(bool(r["repetition"]) for r in rows),
            "longen_following": following}


def run_figures(results: Path, name: str | None = None) -> dict:
    """A finished run's record: its name (`name`, else run_name's), each measured iteration's Generator figures, and
    its `gen_sft` targets' mean words per iteration as ratios to the base's held-out mean."""
    its = measured_iterations(results)
    if len(its) < 2 or its[0][0] != 1:
        raise UsageError(f"{results}: needs held-out answers of iteration 1 (the base model) and a later "
                         "iteration (its final Generator); give a finished run's results dir")
    iterations = {str(k): generator_figures(d) for k, d in its}
    base = iterations["1"]["mean"]
    targets = [t for t in (targets_mean(d) for _, d in iteration_dirs(results)) if t is not None]
    return {"run": name or run_name(results), "iterations": iterations,
            "targets_over_base": [round(t / base, 3) for t in targets]}


def recorded_runs(path: Path) -> list[dict]:
    """The run records of a JSONL file that --save wrote (or one written by hand in its shape)."""
    runs = []
    for row in read_jsonl(path, required=("run", "iterations")):
        line = row.pop("_line")
        its = row["iterations"]
        bad = (not isinstance(its, dict) or "1" not in its or len(its) < 2
               or any(not isinstance(it, dict) or not isinstance(it.get("n"), int) or it["n"] < 1
                      or not isinstance(it.get("mean"), (int, float))
                      or any(not isinstance(it.get(f), (int, float, type(None))) for f in FIGURES)
                      for it in its.values()))
        if bad:
            raise UsageError(f"{path}: line {line}: 'iterations' needs iteration \"1\" (the base model) and a later "
                             "one, each with 'n' (answers, at least 1) and 'mean' (words), its other figures numbers "
                             "or null; see --save's output")
        row["iterations"] = {k: {f: it.get(f) for f in FIGURES} for k, it in its.items()}
        row.setdefault("targets_over_base", [])
        runs.append(row)
    return runs


def final(run: dict) -> tuple[str, dict]:
    """(K, figures) of a run's last measured Generator."""
    k = max(run["iterations"], key=int)
    return k, run["iterations"][k]


def total(it: dict, clean: bool) -> tuple[float, int] | None:
    """(words, answers) of one Generator's answers, all or clean; None where the record lacks them."""
    n, mean = (it["clean_n"], it["clean_mean"]) if clean else (it["n"], it["mean"])
    if n is None or (n and mean is None):
        return None
    return (n * mean if n else 0.0), n


def pooled_mean(totals: list[tuple[float, int]]) -> tuple[float, int] | None:
    """(mean words, answers) over several Generators' answers pooled, from their totals; None without answers."""
    answered = sum(n for _, n in totals)
    return (sum(w for w, _ in totals) / answered, answered) if answered else None


def pooled_ratio(runs: list[dict], k: str, clean: bool) -> float | None:
    """Ratio of iteration k's Generators' pooled mean words to the bases', over the runs' answers (all or clean)."""
    base = pooled_mean([total(run["iterations"]["1"], clean) for run in runs])
    later = pooled_mean([total(run["iterations"][k], clean) for run in runs])
    return later[0] / base[0] if base and later and base[0] else None


def interval(runs: list[dict], k: str, clean: bool, rng: random.Random) -> tuple[float, float]:
    """95% interval of pooled_ratio, resampling runs with replacement."""
    got = sorted(x for x in (pooled_ratio([rng.choice(runs) for _ in runs], k, clean) for _ in range(RESAMPLES))
                 if x is not None)
    return got[int(0.025 * len(got))], got[int(0.975 * len(got)) - 1]


def pooled_rows(runs: list[dict]) -> dict[str, list]:
    """Per later iteration: [(runs, answers, ratio, lo, hi) for all answers, then for clean ones], over the runs
    that measured that iteration and recorded the figure."""
    rng = random.Random(0)
    out = {}
    for k in sorted({k for run in runs for k in run["iterations"]} - {"1"}, key=int):
        out[k] = []
        for clean in (False, True):
            have = [run for run in runs if k in run["iterations"] and total(run["iterations"]["1"], clean)
                    and total(run["iterations"][k], clean)]
            ratio = pooled_ratio(have, k, clean) if have else None
            if ratio is None:
                out[k].append(None)
                continue
            answered = sum(total(run["iterations"][k], clean)[1] for run in have)
            out[k].append((len(have), answered, ratio, *interval(have, k, clean, rng)))
    return out


def plot(runs: list[dict], pooled: dict[str, list], out: Path) -> None:
    """Each run's Generators (iteration 1's is the base) as ratios to its base's mean, thin; pooled, thick."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run in runs:
        its = run["iterations"]
        ks = sorted(its, key=int)
        ax.plot([int(k) for k in ks], [its[k]["mean"] / its["1"]["mean"] for k in ks], "-o", alpha=0.45, lw=1, ms=3,
                label=run["run"])
    ks = [k for k in pooled if pooled[k][0]]
    ratios = [(1.0, 1.0, 1.0)] + [pooled[k][0][2:] for k in ks]   # (ratio, lo, hi); the base against itself first
    mid = [r for r, _, _ in ratios]
    err = [[r - lo for r, lo, _ in ratios], [hi - r for r, _, hi in ratios]]
    xs = [1] + [int(k) for k in ks]
    ax.errorbar(xs, mid, yerr=err, fmt="-s", color="black", lw=2.5, capsize=5,
                label=f"pooled over {len(runs)} runs (95% interval over runs)")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xticks(xs, ["base" if k == 1 else f"gen_sft of it. {k - 1}" for k in xs])
    ax.set_ylabel("held-out mean words / the run's base")
    ax.legend(fontsize=7, loc="upper left", ncol=2 if len(runs) > 8 else 1)
    save_figure(fig, out, dpi=100)


def pct(count: int | None, n: int) -> str:
    return "-" if count is None else f"{100 * count / n:.1f}"


def cell(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def print_tables(runs: list[dict], pooled: dict[str, list]) -> None:
    print("| run | final | base mean | final mean | ratio | clean: base, final | at max_tokens %: base, final | "
          "repetition %: base, final | LonGen following: base, final | gen_sft targets / base mean, per iteration |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        b, (k, f) = run["iterations"]["1"], final(run)
        targets = ", ".join(f"{t:.2f}" for t in run["targets_over_base"]) or "-"
        print(f"| {run['run']} | iter_{k} | {b['mean']:.1f} | {f['mean']:.1f} | {f['mean'] / b['mean']:.2f} | "
              f"{cell(b['clean_mean'])}, {cell(f['clean_mean'])} | {pct(b['capped'], b['n'])}, "
              f"{pct(f['capped'], f['n'])} | {pct(b['repetition'], b['n'])}, {pct(f['repetition'], f['n'])} | "
              f"{cell(b['longen_following'], '.3f')}, {cell(f['longen_following'], '.3f')} | {targets} |")
    above = sum(final(run)[1]["mean"] > run["iterations"]["1"]["mean"] for run in runs)
    print()
    print(f"final Generator's held-out mean above the base's: {above} of {len(runs)} runs")
    # Every run's base is the same model on the same instructions: its answers over all runs measure it far more
    # closely than one run's 16 do, so a final Generator is also compared with that pooled mean (all, then clean).
    for label, clean in (("", False), ("clean ", True)):
        base = pooled_mean([t for t in (total(run["iterations"]["1"], clean) for run in runs) if t])
        finals = [t for t in (total(final(run)[1], clean) for run in runs) if t and t[1]]
        if base and finals:
            print(f"final Generator's {label}mean above the base's {label}mean pooled over the runs ({base[0]:.1f} "
                  f"words, {base[1]} answers): {sum(w / n > base[0] for w, n in finals)} of {len(finals)} runs")
    scored = [(run["iterations"]["1"]["longen_following"], final(run)[1]["longen_following"]) for run in runs]
    scored = [(b, f) for b, f in scored if b is not None and f is not None]
    if scored:
        print(f"LonGen following above the base's: {sum(f > b for b, f in scored)} of {len(scored)} runs "
              f"(mean {statistics.mean(b for b, _ in scored):.3f} -> {statistics.mean(f for _, f in scored):.3f})")
    print()
    print("| Generator measured at the start of | runs | answers | pooled ratio to the base, all answers (95% interval "
          "over runs) | clean answers: runs, answers, ratio (95% interval) |")
    print("|---|---|---|---|---|")
    for k, (every, clean) in pooled.items():
        cells = "{} | {} | {:.3f} ({:.3f}-{:.3f})".format(*every) if every else "- | - | -"
        clean_cell = "{}, {}, {:.3f} ({:.3f}-{:.3f})".format(*clean) if clean else "-"
        print(f"| iter_{k} (gen_sft of iteration {int(k) - 1}) | {cells} | {clean_cell} |")


def read_runs(arg: str, origin: str | None) -> list[dict]:
    """The runs a RUN argument gives: a JSONL file's records, or one results dir's (NAME=DIR: named NAME)."""
    name, path = (None, Path(arg)) if "=" not in arg or Path(arg).exists() else arg.split("=", 1)
    path = Path(path)
    if path.is_file():
        if name:
            raise UsageError(f"{arg}: NAME=DIR names a results dir; {path} is a file of recorded runs")
        return recorded_runs(path)
    run = run_figures(path, name)
    return [{**run, "from": origin} if origin else run]


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plot", type=Path, help="also draw the runs' ratios to their base into this PNG")
    p.add_argument("--save", help="also write the runs' figures, one run per line, into this JSONL file (it may be "
                                  "one of the inputs: runs are read first)")
    p.add_argument("--from", dest="origin", help="recorded as `from` with each run read from a results dir")
    p.add_argument("runs", nargs="+", help="a finished run's results dir (NAME=DIR names it), or a JSONL file of runs")
    args = p.parse_args(argv)
    save = output_file(args.save, "--save") if args.save else None
    plot_to = output_file(str(args.plot), "--plot") if args.plot else None
    runs = [run for arg in args.runs for run in read_runs(arg, args.origin)]
    names = [run["run"] for run in runs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise UsageError(f"run {', '.join(twice)} given more than once (a results dir and a JSONL line that records "
                         "it?); give each run once")
    pooled = pooled_rows(runs)
    print_tables(runs, pooled)
    if save:
        write_jsonl_atomic(save, runs)
        print(f"\nsaved: {save} ({len(runs)} runs)")
    if plot_to:
        plot(runs, pooled, plot_to)
        print(f"\nplot: {plot_to}")


if __name__ == "__main__":
    main()
