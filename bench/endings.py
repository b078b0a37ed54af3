"""Where the added words go: into a text's body, or after its first closing paragraph (issue 14, item 4).

A longer answer can be longer in two ways: it says more before it concludes, or it concludes ("In conclusion, ...",
"And so, ...") and keeps going. Each text is split at its first paragraph that opens the way closing paragraphs do
(OPENERS, English; CJK_OPENERS for the zh flavour): the body is what comes before it, the ending the rest. Pooled
over runs, per iteration: each iteration's Generator on the held-out instructions (iteration 1's is the base
model; all answers, then the clean ones), and the synthesis (the initial responses the Extender lengthened, and
their accepted extensions). A heuristic on a paragraph's first words, read against samples of what it matches
(bench/RESULTS.md), not a parser. Reads only the runs' results; needs no engine.

Usage: .venv/bin/python bench/endings.py /work/demo_N/results /work/demo_O/results ...
"""
import argparse
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from heldout_runs import answers, measured_iterations  # noqa: E402
from self_lengthen.errors import UsageError, cli_main  # noqa: E402
from self_lengthen.report import iteration_dirs  # noqa: E402
from self_lengthen.stages.heldout import is_clean  # noqa: E402
from self_lengthen.text import count_words, is_cjk  # noqa: E402

OPENERS = re.compile(r"(in conclusion|to conclude|in summary|in the end|ultimately|finally|and so\b|from that day"
                     r"|to this day|years later|as the years|as (i|she|he|they|we) (looked|stood|continued|carried)"
                     r"|and (i|she|he|they|we) (knew|realized|vowed|continued))", re.IGNORECASE)
CJK_OPENERS = ("总之", "总而言之", "综上所述", "总的来说", "最后", "最终", "从此", "就这样")


def is_closing(paragraph: str) -> bool:
    if is_cjk(paragraph):
        return paragraph.startswith(CJK_OPENERS)
    return OPENERS.match(paragraph) is not None


def body_and_ending(text: str) -> tuple[int, int, int]:
    """(words before the first closing paragraph, words from it on, closing paragraphs in all)."""
    paragraphs = [p.strip() for p in text.split("\n") if p.strip()]
    closing = [i for i, p in enumerate(paragraphs) if is_closing(p)]
    first = closing[0] if closing else len(paragraphs)
    return (sum(count_words(p) for p in paragraphs[:first]), sum(count_words(p) for p in paragraphs[first:]),
            len(closing))


def row(label: str, texts: list[str]) -> str:
    split = [body_and_ending(t) for t in texts]
    mean = (lambda xs: statistics.mean(xs) if xs else float("nan"))
    return (f"| {label} | {len(texts)} | {mean([count_words(t) for t in texts]):.1f} | "
            f"{mean([b for b, _, _ in split]):.1f} | {mean([e for _, e, _ in split]):.1f} | "
            f"{mean([c for _, _, c in split]):.2f} | "
            f"{100 * mean([c > 0 for _, _, c in split]):.0f} | {100 * mean([c > 1 for _, _, c in split]):.0f} |")


def extended_pairs(iter_dir: Path) -> list[dict]:
    from datasets import load_from_disk

    path = iter_dir / "extended_responses"
    return load_from_disk(str(path)).to_list() if (path / "_COMPLETE").exists() else []


HEADER = ("| texts | n | mean words | body: words before the first closing paragraph | ending: words from it on | "
          "closing paragraphs per text | texts with one, % | with two or more, % |\n|---|---|---|---|---|---|---|---|")


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="a run's results dir")
    args = p.parse_args(argv)
    heldout, synthesis = {}, {}
    for results in args.results:
        its = iteration_dirs(results)
        if not its:
            raise UsageError(f"{results}: no iter_K directories; give a run's results dir")
        for k, d in measured_iterations(results):
            heldout.setdefault(k, []).extend(answers(d))
        for k, d in its:
            synthesis.setdefault(k, []).extend(extended_pairs(d))
    for which, pick in (("all", lambda r: True), ("clean (a loop's body runs to the cap)", is_clean)):
        print(f"Held-out answers, {which}, pooled over {len(args.results)} runs:\n\n{HEADER}")
        for k in sorted(heldout):
            print(row("base" if k == 1 else f"gen_sft of iteration {k - 1}",
                      [r["response"] for r in heldout[k] if pick(r)]))
        print()
    print(f"Synthesis, the accepted extensions and the initial responses they lengthened:\n\n{HEADER}")
    for k in sorted(synthesis):
        if synthesis[k]:
            print(row(f"iteration {k}, initial", [r["initial_response"] for r in synthesis[k]]))
            print(row(f"iteration {k}, extended", [r["extended_response"] for r in synthesis[k]]))


if __name__ == "__main__":
    main()
