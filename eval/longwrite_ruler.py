"""LongWrite-Ruler: the longest output a model will write. Each instruction of eval/data/ruler_instructions.jsonl
(half English, half Chinese, written for this project) is asked at each required length (1,000 to 30,000 words);
per model, the mean words produced at each length, its S_l, and the longest length the model follows.

Usage: python eval/longwrite_ruler.py --models base,gen_sft [--lengths 1000,2000,...] [--count N] [--outdir DIR]
       [--max_tokens N] [--base_url URL] [--workers 8]
Answers are kept in OUTDIR/ruler.<model>.jsonl (resumable, see generate.py). A model "follows" a length when its
mean S_l there is at least --follow (80). An answer cut at max_tokens or by the model's context is marked capped: it
says where the model was stopped, not where it would have stopped. Writes OUTDIR/ruler.md and ruler.png (required
against produced words, log axes, per model). Words are counted as LongBench-Write counts them.
"""
import json
import string
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import generate  # noqa: E402

from self_lengthen.client import Client  # noqa: E402
from self_lengthen.errors import ArgParser, UsageError, cli_main, positive_int  # noqa: E402
from self_lengthen.evaluation import longbench_length_score, longwriter_words  # noqa: E402
from self_lengthen.io import output_dir, read_jsonl, write_text_atomic  # noqa: E402

INSTRUCTIONS = Path(__file__).resolve().parent / "data" / "ruler_instructions.jsonl"
LENGTHS = (1000, 2000, 5000, 10000, 20000, 30000)


def ruler_rows(count: int | None, lengths: list[int]) -> list[dict]:
    """Every (instruction, length) request; with `count`, the first count/2 instructions of each language."""
    templates = read_jsonl(INSTRUCTIONS, required=("lang", "template"))
    if count:
        templates = [t for lang in ("en", "zh") for t in [x for x in templates if x["lang"] == lang][:max(1, count // 2)]]
    rows = []
    for t in templates:
        for n in lengths:
            rows.append({"_line": len(rows) + 1, "id": t.get("id"), "lang": t["lang"], "length": n,
                         "prompt": string.Template(t["template"]).substitute(length=n)})
    return rows


def per_length(answered: list[dict], lengths: list[int]) -> list[dict]:
    out = []
    for n in lengths:
        rows = [r for r in answered if r["length"] == n]
        words = [longwriter_words(r["response"]) for r in rows]
        out.append({"length": n, "rows": len(rows), "mean_words": round(sum(words) / len(words), 1),
                    "s_l": round(sum(longbench_length_score(n, w) for w in words) / len(words), 1),
                    "capped": sum(bool(r.get("capped")) for r in rows)})
    return out


def longest_followed(table: list[dict], follow: float) -> int | None:
    followed = [t["length"] for t in table if t["s_l"] >= follow]
    return max(followed) if followed else None


def plot(results: dict[str, list[dict]], answered: dict[str, list[dict]], path: Path) -> None:
    from self_lengthen.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for model, table in results.items():
        pts = [(r["length"], max(longwriter_words(r["response"]), 1)) for r in answered[model]]
        ax.scatter(*zip(*pts), s=10, alpha=0.4)
        ax.plot([t["length"] for t in table], [max(t["mean_words"], 1) for t in table], marker="o", label=model)
    lengths = [t["length"] for t in next(iter(results.values()))]
    ax.plot(lengths, lengths, "k--", linewidth=1, label="produced = required")
    ax.set(xscale="log", yscale="log", xlabel="required words", ylabel="produced words", title="LongWrite-Ruler")
    ax.legend()
    save_figure(fig, path)


@cli_main
def main(argv=None):
    p = ArgParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="base")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--count", type=positive_int, default=None, help="instructions to use, half per language (default: all)")
    p.add_argument("--outdir", default="ruler")
    p.add_argument("--max_tokens", type=positive_int, default=32768, help="per answer (the server caps it by the context)")
    p.add_argument("--follow", type=float, default=80.0, help="S_l at which a length counts as followed")
    p.add_argument("--base_url", default=None)
    p.add_argument("--workers", type=positive_int, default=8)
    args = p.parse_args(argv)
    try:
        lengths = sorted({int(x) for x in args.lengths.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--lengths={args.lengths!r}: give whole numbers of words separated by commas") from None
    if not lengths or lengths[0] < 1:
        raise UsageError(f"--lengths={args.lengths!r}: give at least one positive length")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UsageError("--models: name at least one served model")
    rows = ruler_rows(args.count, lengths)
    outdir = output_dir(args.outdir, "--outdir")
    client = Client(args.base_url)
    results, answered = {}, {}
    for model in models:
        out = outdir / f"ruler.{model}.jsonl"
        generate(rows, client, model, out, args.workers, args.max_tokens)
        answered[model] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
        results[model] = per_length(answered[model], lengths)
    lines = ["# LongWrite-Ruler", "", f"{len(rows) // len(lengths)} instructions (half English, half Chinese) at each "
             f"required length; max_tokens {args.max_tokens}. Capped: answers cut at max_tokens or by the context.", "",
             "| model | required words | mean produced | S_l | capped |", "|---|---|---|---|---|"]
    for model, table in results.items():
        for t in table:
            lines.append(f"| {model} | {t['length']} | {t['mean_words']} | {t['s_l']} | {t['capped']}/{t['rows']} |")
    lines += [""] + [f"- {model}: longest length followed (S_l >= {args.follow:g}): "
                     f"{longest_followed(table, args.follow) or 'none'}" for model, table in results.items()]
    plot(results, answered, outdir / "ruler.png")
    lines += ["", "![ruler](ruler.png)", ""]
    report = outdir / "ruler.md"
    write_text_atomic(report, "\n".join(lines))
    print("\n".join(lines))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
