"""Reports: per iteration (word-count histograms, accept/reject counts, tokens/s, training loss) and for the whole
run (the growth of response length, iteration by iteration: the method's key picture, for this run)."""
import json
import math
import os
import statistics
from pathlib import Path

from .evaluation import longen_scores
from .io import write_text_atomic
from .text import count_words
from .train import MODELS, cut_stats, tokenized_dir

STAGES = ("instructions", "initial_responses", "extended_responses")


def _words(dataset_dir: Path, column: str) -> list[int]:
    if not (dataset_dir / "_COMPLETE").exists():
        return []
    from datasets import load_from_disk

    return [count_words(t) for t in load_from_disk(str(dataset_dir))[column]]


def pyplot():
    """matplotlib's pyplot without a display, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Lay `fig` out, write it whole (temp, then rename; the format from the name, else PNG) and close it."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)
    pyplot().close(fig)


def _stats(xs: list[int]) -> tuple[str, str]:
    return (f"{statistics.mean(xs):.0f}", f"{statistics.median(xs):.0f}") if xs else ("-", "-")


def training_rows(iter_dir: Path) -> list[dict]:
    """Per adapter trained in `iter_dir`: rows trained on (and how many were cut at cutoff_len), optimizer steps,
    and the mean training loss of the first and of the last epoch (from LLaMA-Factory's per-step log): does training
    move the model at all?"""
    out = []
    for name in MODELS:
        log = iter_dir / "lora" / name / "trainer_log.jsonl"
        if not log.is_file():
            continue
        steps = [r for r in map(json.loads, log.read_text().splitlines()) if "loss" in r and "epoch" in r]
        data = iter_dir / "data" / f"{name}.json"
        by_epoch: dict[int, list[float]] = {}
        for r in steps:  # epoch 0.25 .. 1.0 is the first, 1.25 .. 2.0 the second
            by_epoch.setdefault(max(0, math.ceil(round(r["epoch"], 6)) - 1), []).append(r["loss"])
        first, last = (by_epoch[min(by_epoch)], by_epoch[max(by_epoch)]) if by_epoch else ([], [])
        cut = cut_stats(tokenized_dir(iter_dir / "data", name))
        out.append({"adapter": name, "rows": len(json.loads(data.read_text())) if data.is_file() else None,
                    "cut": f"{cut['cut']} (at {cut['cutoff_len']} tokens)" if cut else None,
                    "steps": len(steps), "epochs": len(by_epoch),
                    "loss_first_epoch": round(statistics.mean(first), 3) if first else None,
                    "loss_last_epoch": round(statistics.mean(last), 3) if last else None})
    return out


def iteration_report(iter_dir: Path) -> Path:
    initial = _words(iter_dir / "initial_responses", "initial_response")
    extended = _words(iter_dir / "extended_responses", "extended_response")
    lines = [f"# {iter_dir.name}", "", "| | responses | mean words | median words |", "|---|---|---|---|"]
    for name, xs in (("initial", initial), ("extended", extended)):
        lines.append(f"| {name} | {len(xs)} | {' | '.join(_stats(xs))} |")
    lines += ["", "| stage | items | accepted | exhausted | rows | tokens/s | reject reasons |", "|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        path = iter_dir / f"{stage}.summary.json"
        if path.exists():
            s = json.loads(path.read_text())
            reasons = ", ".join(f"{k}: {v}" for k, v in s["reject_reasons"].items()) or "none"
            lines.append(f"| {stage} | {s['items']} | {s['accepted']} | {s['exhausted']} | {s['rows']} | "
                         f"{s['tokens_per_second_this_run']} | {reasons} |")
    if trained := training_rows(iter_dir):
        lines += ["", "| adapter | rows | rows cut at cutoff_len | steps | epochs | mean loss, first epoch | "
                  "mean loss, last epoch |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['adapter']} | {t['rows']} | {t['cut'] or '-'} | {t['steps']} | {t['epochs']} | "
                  f"{t['loss_first_epoch']} | {t['loss_last_epoch']} |" for t in trained]
    if initial or extended:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        everything = initial + extended
        lo, hi = min(everything), max(everything)
        bins = [lo + (hi - lo + 1) * i / 20 for i in range(21)]  # shared bins, so the two series compare
        for name, xs in (("initial", initial), ("extended", extended)):
            if xs:
                ax.hist(xs, bins=bins, alpha=0.6, label=f"{name} (n={len(xs)})")
        ax.set(xlabel="words", ylabel="responses", title=f"{iter_dir.name}: response length")
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
        save_figure(fig, iter_dir / "words_hist.png")
        lines += ["", "![word counts](words_hist.png)"]
    report = iter_dir / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report


def heldout_row(iter_dir: Path, name: str = "heldout") -> dict | None:
    """The Generator of `iter_dir`'s iteration on the held-out instructions (or another stage of answers in their
    columns, `name`): its name, length statistics and the shares of answers that end unfinished, repeat an n-gram,
    or hit max_tokens, and its LonGen-style scores where `{name}_longen` was answered. None if not measured."""
    out = iter_dir / name
    if not (out / "_COMPLETE").exists():
        return None
    from datasets import load_from_disk

    from .stages.heldout import is_clean, length_stats

    data = load_from_disk(str(out))
    summary_path = iter_dir / f"{name}.summary.json"
    model = json.loads(summary_path.read_text()).get("model", "?") if summary_path.exists() else "?"
    n = len(data)
    share = (lambda col: round(100 * sum(data[col]) / n, 1) if n else 0.0)
    longen = {}
    if (iter_dir / f"{name}_longen" / "_COMPLETE").exists():
        scores = longen_scores(load_from_disk(str(iter_dir / f"{name}_longen")).to_list())
        longen = {"longen_following": scores.get("following"), "longen_s_l": scores.get("s_l")}
    clean = [r["words"] for r in data if is_clean(r)]
    return {"model": model, **length_stats(list(data["words"])), "unfinished_pct": share("unfinished"),
            "repetition_pct": share("repetition"), "capped_pct": share("capped"),
            "clean_n": len(clean), "clean_mean": round(statistics.mean(clean), 1) if clean else None, **longen}


def heldout_line(iter_dir: Path) -> str:
    """One line for a driver's log: the held-out figures of `iter_dir`'s Generator."""
    h = heldout_row(iter_dir)
    if h is None or not h["n"]:
        return "no held-out answers recorded"
    lo, hi = h["ci95"]
    longen = f", LonGen following {h['longen_following']}" if h.get("longen_following") is not None else ""
    return (f"the Generator ({h['model']}) on {h['n']} held-out instructions: mean {h['mean']} words "
            f"(95% CI {lo}-{hi}), repetition {h['repetition_pct']}%, hit max_tokens {h['capped_pct']}%{longen}")


def iteration_dirs(results: Path) -> list[tuple[int, Path]]:
    """(K, results/iter_K) of a run's macro-iterations, in order."""
    iters = [(int(d.name[5:]), d) for d in results.glob("iter_*") if d.name[5:].isdigit()]
    return sorted((k, d) for k, d in iters if k < 10000)


def run_name(results: Path) -> str:
    """A run's name for tables that compare runs: the directory holding `results` (DIR/results), or the directory
    itself where the iterations sit at its top."""
    results = results.resolve()
    return (results.parent.name if results.name == "results" else results.name) or str(results)


def run_report(results: Path) -> Path:
    iters = iteration_dirs(results)
    rows = []
    for k, d in iters:
        initial = _words(d / "initial_responses", "initial_response")
        extended = _words(d / "extended_responses", "extended_response")
        rows.append((k, initial, extended))
    heldout = [(k, h) for k, d in iters if (h := heldout_row(d))]
    lines = ["# Self-Lengthen: response length by iteration", ""]
    if heldout:
        lines += ["## The Generator on held-out instructions", "",
                  "Answered at the start of each iteration by the model that is its Generator (the base model, "
                  "then gen_sft of the iteration before), on instructions it never trains on. LonGen: the same "
                  "model on the LonGen-style sample (eval/data/longen_sample.jsonl), its length-following score "
                  "(0-1) and LongBench-Write's S_l (0-100).", "",
                  "| iteration | Generator | answers | mean words | 95% CI | median | unfinished % | repetition % | "
                  "hit max_tokens % | clean answers: n, mean words | LonGen following | LonGen S_l |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, h in heldout:
            lo, hi = h.get("ci95", ["-", "-"])
            lines.append(f"| {k} | {h['model']} | {h['n']} | {h.get('mean', '-')} | {lo}-{hi} | {h.get('median', '-')} "
                         f"| {h['unfinished_pct']} | {h['repetition_pct']} | {h['capped_pct']} "
                         f"| {h['clean_n']}, {h['clean_mean'] if h['clean_mean'] is not None else '-'} "
                         f"| {h.get('longen_following', '-')} | {h.get('longen_s_l', '-')} |")
        lines += ["", "Clean answers end a sentence, repeat no n-gram and stop before max_tokens."]
        lines += ["", "## Synthesis", ""]
    lines += ["| iteration | initial mean | initial median | extended mean | extended median |", "|---|---|---|---|---|"]
    for k, initial, extended in rows:
        if initial or extended:  # not the final Generator's held-out-only iteration
            lines.append(f"| {k} | {' | '.join(_stats(initial))} | {' | '.join(_stats(extended))} |")
    if rows:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        measured = [(k, h) for k, h in heldout if h["n"]]
        if measured:
            xs = [k for k, _ in measured]
            means = [h["mean"] for _, h in measured]
            errors = [[h["mean"] - h["ci95"][0] for _, h in measured], [h["ci95"][1] - h["mean"] for _, h in measured]]
            ax.errorbar(xs, means, yerr=errors, marker="s", capsize=4, label="held-out (Generator, 95% CI)")
            clean = [(k, h["clean_mean"]) for k, h in measured if h["clean_mean"] is not None]
            if clean:
                ax.plot(*zip(*clean), marker="s", linestyle=":", label="held-out, clean answers")
        for label, idx in (("initial (Generator)", 1), ("extended (Extender)", 2)):
            pts = [(r[0], statistics.mean(r[idx])) for r in rows if r[idx]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set(xlabel="iteration", ylabel="mean words", title="Response length growth")
        ax.set_xticks(sorted({r[0] for r in rows} | {k for k, _ in measured}))
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
        save_figure(fig, results / "growth.png")
        lines += ["", "![growth](growth.png)", ""]
        lines += [f"- [{d.name}]({d.name}/report.md)" for _, d in iters if (d / "report.md").exists()]
    report = results / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":  # python -m self_lengthen.report RESULTS_DIR: the run's report again
    import sys

    results_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    if not results_dir.is_dir():
        sys.exit(f"error: {results_dir}: no such directory (pass a run's results/ dir)")
    print(run_report(results_dir))
