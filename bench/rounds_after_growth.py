"""What do step2's rounds after a chain has grown enough buy? Read from finished runs' journals, no engine needed.

The method runs every try's 3 rounds and keeps the result if it has more than 1.2x the initial words; a round
replaces the text only when it passes the response check and is longer, so a try past 1.2x after round 1 or 2
stays kept whatever its later rounds do. For each run's step2 and the chains it kept: the round that first took
them past 1.2x, how many a later round lengthened again, their words at that round as a share of the words kept,
and the tokens their later rounds cost as a share of all step2's tokens (what `--stop_when_grown` would not spend).
Assumes one try per chain (cpu-demo's max_tries for step2).

Usage: .venv/bin/python bench/rounds_after_growth.py /work/demo_BS/results /work/demo_BT/results
"""
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from self_lengthen.errors import cli_main  # noqa: E402
from self_lengthen.report import run_name  # noqa: E402
from self_lengthen.stages.extend import MIN_GROWTH  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402
from wind_down import journal_chains, step2_journals  # noqa: E402


def no_counts() -> dict:
    return {"chains": 0, "kept": 0, "passed_in_round": Counter(), "grown_again": 0, "words_at_pass": 0,
            "words_kept": 0, "tokens": 0, "tokens_after_pass": 0}


def after_growth(step2: Path) -> dict:
    """`step2`: results/iter_K/extended_responses (the journal and checkpoint beside it are read)."""
    chains, finished = journal_chains(step2)
    out = {**no_counts(), "chains": len(chains), "tokens": sum(recs[-1]["tokens"] for recs in chains.values())}
    for key, recs in chains.items():
        if finished.get(key, {}).get("status") != "accepted":
            continue
        initial = count_words(recs[0]["text"])  # recorded after the first chat request: still the initial response
        passed = next(r for r in recs if r["prefix"] is None and count_words(r["text"]) > MIN_GROWTH * initial)
        kept = count_words(finished[key]["extended_response"])
        out["kept"] += 1
        out["passed_in_round"][passed["round"]] += 1
        out["grown_again"] += kept > count_words(passed["text"])
        out["words_at_pass"] += count_words(passed["text"])
        out["words_kept"] += kept
        out["tokens_after_pass"] += recs[-1]["tokens"] - passed["tokens"]
    return out


def row(name: str, f: dict) -> str:
    rounds = ", ".join(str(f["passed_in_round"][r]) for r in (1, 2, 3))
    return (f"| {name} | {f['chains']} | {f['kept']} | {rounds} | {f['grown_again']} | "
            f"{f['words_at_pass'] / max(f['words_kept'], 1):.3f} | {f['tokens']} | "
            f"{100 * f['tokens_after_pass'] / max(f['tokens'], 1):.1f}% |")


@cli_main
def main():
    runs = step2_journals(sys.argv[1:], __doc__.strip().splitlines()[-1])
    print("| run, iteration | chains | kept | kept chains first past 1.2x in round 1, 2, 3 | lengthened again later | "
          "words at that round / words kept | step2 tokens | tokens of the rounds after it |")
    print("|---|---|---|---|---|---|---|---|")
    total = no_counts()
    for results, journals in runs.items():
        for journal in journals:
            f = after_growth(journal.with_name("extended_responses"))
            print(row(f"{run_name(results)}, {journal.parent.name}", f))
            for k in total:
                total[k] += f[k]
    print(row("all", total))


if __name__ == "__main__":
    main()
