"""How many of step2's completions continue a prefix that already repeats an n-gram (a round the response check
rejects, if the text's language stays), their tokens, and the prefixes' visible characters; and how many
ideographs one token of the tokenizer can add at most (which bounds how far a completion can move the text's
language, and so whether the round is certain to fail). Reads a run's step2 journals; starts nothing.

Usage: .venv/bin/python bench/prefix_repeats.py RESULTS_DIR [--base_model default|HF_DIR]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from self_lengthen.errors import UsageError, cli_main  # noqa: E402
from self_lengthen.text import TokenBounds, has_repeated_ngram  # noqa: E402


def completions_after(journal: Path):
    """(prefix, completion tokens) for every completion request in a step2 journal: a record with no prefix that
    follows, in the same try, a record of the same chain with one."""
    last: dict[str, dict] = {}
    for line in journal.read_text(encoding="utf-8").splitlines():
        state = json.loads(line)
        prev = last.get(state["key"])
        if prev and prev.get("prefix") is not None and state.get("prefix") is None and prev["try"] == state["try"]:
            yield prev["prefix"], state["tokens"] - prev["tokens"]
        last[state["key"]] = state


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--base_model", default="default")
    args = p.parse_args(argv)
    journals = sorted(args.results.glob("iter_*/extended_responses.journal.jsonl"))
    if not journals:
        raise UsageError(f"no step2 journal (iter_*/extended_responses.journal.jsonl) under {args.results}")
    for journal in journals:
        done = list(completions_after(journal))
        repeating = [(prefix, tokens) for prefix, tokens in done if has_repeated_ngram(prefix)]
        visible = sorted(sum(not ch.isspace() for ch in prefix) for prefix, _ in repeating)
        print(f"{journal.parent.name}: {len(done)} completions, {sum(t for _, t in done)} tokens; after a prefix "
              f"that repeats: {len(repeating)}, {sum(t for _, t in repeating)} tokens; its visible characters "
              f"{visible}")
    if args.base_model == "default":
        from self_lengthen.default_model import ensure_default_model

        args.base_model = str(ensure_default_model())
    from transformers import AutoTokenizer

    bounds = TokenBounds.of(AutoTokenizer.from_pretrained(args.base_model))
    print(f"one token adds at most {bounds.ideographs} ideographs")


if __name__ == "__main__":
    main()
