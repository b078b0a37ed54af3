"""Self-Lengthen beside AgentWrite on the same instructions and the same model: what each keeps and what it costs.

Usage: python eval/compare_methods.py ITER_DIR [--judge_model NAME] [--judge_base_url URL] [--output FILE]
ITER_DIR is one iteration's results (results/iter_K): Self-Lengthen's step1 and step2 there, and AgentWrite run on
the same step0 instructions (python llama/agentwrite.py --iter K). Per method: rows kept, mean and median words,
tokens generated per kept word, the share of final-stage items not kept and why, the share of kept texts with a
repeated n-gram, and with --judge_model, LongBench-Write's quality score S_q (eval/longbench_write_quality.py).
Writes ITER_DIR/methods.md (or --output) and methods.png beside it (word counts of the kept texts).
"""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from self_lengthen.errors import ArgParser, UsageError, cli_main  # noqa: E402
from self_lengthen.io import output_file, write_text_atomic  # noqa: E402
from self_lengthen.judge import add_judge_arguments, judge_client, verdicts_path  # noqa: E402
from self_lengthen.text import count_words, has_repeated_ngram  # noqa: E402

# method: (datasets whose generation it paid for, the dataset it keeps, that dataset's text column)
METHODS = {"self-lengthen": (("initial_responses", "extended_responses"), "extended_responses", "extended_response"),
           "agentwrite": (("agentwrite_responses",), "agentwrite_responses", "agentwrite_response")}


def summary_of(iter_dir: Path, name: str) -> dict:
    path = iter_dir / f"{name}.summary.json"
    if not (iter_dir / name / "_COMPLETE").exists() or not path.is_file():
        raise UsageError(f"{iter_dir / name} is missing or unfinished; run that stage for this iteration first")
    return json.loads(path.read_text())


def measure(iter_dir: Path, method: str) -> dict:
    from datasets import load_from_disk

    paid, kept_name, column = METHODS[method]
    summaries = [summary_of(iter_dir, name) for name in paid]
    rows = load_from_disk(str(iter_dir / kept_name))
    texts, prompts = list(rows[column]), list(rows["prompt"])
    words = [count_words(t) for t in texts]
    tokens = sum(s["tokens_generated"] for s in summaries)
    final = summaries[-1]
    reasons: dict[str, int] = {}
    for s in summaries:
        for reason, n in s.get("reject_reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {"method": method, "instructions": len(set(prompts)), "kept": len(texts),
            "mean_words": round(statistics.mean(words), 1) if words else None,
            "median_words": statistics.median(words) if words else None,
            "tokens": tokens, "tokens_per_kept_word": round(tokens / sum(words), 2) if sum(words) else None,
            "final_items": final["items"], "not_kept_pct": round(100 * (1 - len(texts) / final["items"]), 1)
            if final["items"] else None, "reasons": reasons,
            "repetition_pct": round(100 * sum(map(has_repeated_ngram, texts)) / len(texts), 1) if texts else None,
            "_words": words, "_rows": [{"query": p, "response": t} for p, t in zip(prompts, texts)]}


def plot(results: list[dict], path: Path) -> None:
    from self_lengthen.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    top = max((max(r["_words"]) for r in results if r["_words"]), default=1)
    bins = [top * i / 20 for i in range(21)]
    for r in results:
        if r["_words"]:
            ax.hist(r["_words"], bins=bins, alpha=0.55, label=f"{r['method']} ({r['kept']} kept)")
    ax.set(xlabel="words", ylabel="kept texts", title="Kept texts by method")
    ax.legend()
    save_figure(fig, path)


def fmt(value) -> str:
    return "-" if value is None else str(value)


def render(iter_dir: Path, results: list[dict], png: Path) -> str:
    lines = [f"# Self-Lengthen and AgentWrite on the same instructions ({iter_dir.name})", "",
             "Kept: Self-Lengthen's extended responses, AgentWrite's joined sections. Tokens: everything each method "
             "generated from the instructions on (step1 and step2; plans and sections). Not kept: the share of the "
             "final stage's items (step2's extensions; AgentWrite's instructions) that produced no kept text.", "",
             "| method | instructions with a kept text | kept | mean words | median words | tokens generated "
             "| tokens per kept word "
             "| not kept % | repetition % |" + (" S_q |" if any("s_q" in r for r in results) else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if any("s_q" in r for r in results) else "")]
    for r in results:
        lines.append(f"| {r['method']} | {r['instructions']} | {r['kept']} | {fmt(r['mean_words'])} "
                     f"| {fmt(r['median_words'])} | {r['tokens']} | {fmt(r['tokens_per_kept_word'])} "
                     f"| {fmt(r['not_kept_pct'])} | {fmt(r['repetition_pct'])} |"
                     + (f" {fmt(r.get('s_q'))} |" if any("s_q" in x for x in results) else ""))
    lines += ["", "Reject reasons (counted per request or try, all stages):", ""]
    for r in results:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1])) or "none"
        lines.append(f"- {r['method']}: {reasons}")
    lines += ["", f"![kept texts by method]({png.name})", ""]
    return "\n".join(lines)


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("iter_dir")
    p.add_argument("--output", default=None, help="the report (default: ITER_DIR/methods.md)")
    add_judge_arguments(p, model=None, model_help="score S_q with this judge (default: no quality score)")
    args = p.parse_args(argv)
    iter_dir = Path(args.iter_dir)
    if not iter_dir.is_dir():
        raise UsageError(f"{iter_dir}: no such directory (pass a results/iter_K dir)")
    out = output_file(args.output or str(iter_dir / "methods.md"), "--output")
    results = [measure(iter_dir, m) for m in METHODS]
    if args.judge_model:
        from longbench_write_quality import score_quality

        client = judge_client(args.judge_base_url)
        verdicts = verdicts_path(args, out)
        for r in results:
            quality = (score_quality(r["_rows"], client, args.judge_model, args.workers, args.tries, verdicts)
                       if r["_rows"] else None)
            judged = quality["judged"] if quality else 0
            r["s_q"] = f"{fmt(quality and quality['s_q'])} ({judged} of {r['kept']} judged)"
    png = out.with_suffix(".png")
    plot(results, png)
    text = render(iter_dir, results, png)
    write_text_atomic(out, text)
    print(text)
    print(f"report: {out} (plot: {png})")


if __name__ == "__main__":
    main()
