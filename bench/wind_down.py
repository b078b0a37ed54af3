"""What did step2's end past `finish_fraction` drop? Read from finished runs' journals, no engine needed.

For each run's step2 (results/iter_K/extended_responses.*): the chains finished before the stage ended and when the
last of them finished; the chains it dropped (in the journal, not in the checkpoint), how many of those had already
sent their last request by the time the stage wound down, when the last of those ended, and how many of them pass
the method's growth rule (their last round's text is over 1.2x the initial response: they would have been rows).
Assumes one try per chain (cpu-demo's max_tries for step2).

Usage: .venv/bin/python bench/wind_down.py /work/demo_R/results /work/demo_S/results
"""
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from self_lengthen.errors import UsageError, cli_main  # noqa: E402
from self_lengthen.io import read_jsonl  # noqa: E402
from self_lengthen.report import run_name  # noqa: E402
from self_lengthen.stages.extend import MIN_GROWTH, ROUNDS  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402


def journal_chains(step2: Path) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """`step2`: results/iter_K/extended_responses. Returns (each chain's journaled states in order, each finished
    chain's checkpoint record), by key."""
    chains = defaultdict(list)
    for rec in read_jsonl(step2.with_name(step2.name + ".journal.jsonl")):
        chains[rec["key"]].append(rec)
    return chains, {r["key"]: r for r in read_jsonl(step2.with_name(step2.name + ".checkpoint.jsonl"))}


def wind_down(step2: Path) -> dict:
    """`step2`: results/iter_K/extended_responses (the paths beside it are read)."""
    chains, finished = journal_chains(step2)
    start = min(r["time"] for recs in chains.values() for r in recs)
    dropped = [recs for key, recs in chains.items() if key not in finished]
    # A dropped chain whose first try has all its rounds recorded: its last round's text is the try's result.
    done = [recs for recs in dropped
            if any(r["try"] == 0 and r["round"] == ROUNDS and r["prefix"] is None for r in recs)]
    passing = 0
    for recs in done:
        last = [r for r in recs if r["try"] == 0 and r["round"] == ROUNDS][-1]
        initial = recs[0]["text"]  # recorded after the first chat request: the text is still the initial response
        passing += count_words(last["text"]) > MIN_GROWTH * count_words(initial)
    return {"chains": len(chains), "finished": len(finished),
            "kept": sum(r["status"] == "accepted" for r in finished.values()),
            "last_finished_s": round(max(recs[-1]["time"] for k, recs in chains.items() if k in finished) - start),
            "dropped": len(dropped), "dropped_all_rounds_done": len(done),
            "dropped_last_end_s": round(max((recs[-1]["time"] - start for recs in done), default=0)),
            "dropped_passing": passing}


def step2_journals(argv: list[str], usage: str) -> dict[Path, list[Path]]:
    """Each results dir named in `argv` with its step2 journals (iter_K/extended_responses.journal.jsonl); `usage`
    and exit without a dir, one line and exit 2 for a dir without a journal."""
    if not argv:
        raise SystemExit(usage)
    runs = {results: sorted(results.glob("iter_*/extended_responses.journal.jsonl")) for results in map(Path, argv)}
    for results, journals in runs.items():
        if not journals:
            raise UsageError(f"{results}: no iter_K/extended_responses.journal.jsonl; give a run's results dir")
    return runs


@cli_main
def main():
    runs = step2_journals(sys.argv[1:], __doc__.strip().splitlines()[-1])
    print("| run, iteration | chains | finished, kept | last finished (s) | dropped | of them all rounds done | "
          "their last end (s) | would have been kept |")
    print("|---|---|---|---|---|---|---|---|")
    for results, journals in runs.items():
        for step2 in journals:
            w = wind_down(step2.with_name("extended_responses"))
            print(f"| {run_name(results)}, {step2.parent.name} | {w['chains']} | {w['finished']}, "
                  f"{w['kept']} | {w['last_finished_s']} | {w['dropped']} | {w['dropped_all_rounds_done']} | "
                  f"{w['dropped_last_end_s']} | {w['dropped_passing']} |")


if __name__ == "__main__":
    main()
