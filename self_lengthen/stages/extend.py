"""step2 Extender: lengthen each initial response in up to 3 rounds of chat-then-completion.

A round (the method's, exactly): split the current text into blocks (on blank lines; with 2 or fewer, on newlines);
ask by chat for an expanded version of the first half of the blocks, joined by blank lines; keep the first 2/3 of
that answer's blank-line blocks as a prefix (possibly none); then continue, by raw completion, the chat-formatted
extend request over the whole current text followed by that prefix. The round's output (prefix + continuation)
replaces the current text only if it passes the response check and has more words. The result is kept only if it
has more than 1.2x the initial words.

With --stop_when_grown (not the method's) a try ends after the first round that takes it past 1.2x: at the demo's
sizes the rounds after that grew 43 of 201 kept texts, the kept words by 4.5% (0.957 of them at that round), and
cost 18.5% of step2's tokens (bench/RESULTS.md, 2026-12-07).
"""
import argparse
import random
import time
from collections import Counter
from pathlib import Path

from ..client import Completion
from ..errors import cli_main, positive_int
from ..text import check_response, count_words, reason_of_early_end, split_blocks
from .common import StageContext, base_parser, finished, journal_path, run_stage, stable_key
from .runner import Journal, Stop, require_complete

MAX_TRIES = 20
ATTEMPTS_PER_RESPONSE = 2
ROUNDS = 3
MIN_GROWTH = 1.2
FINISH_FRACTION = 0.95  # the method ends step2 once more than 95% of its items are finished


def start_round(ctx: StageContext, model: str, instruction: str, text: str) -> tuple[str, Completion]:
    """A round's chat request: the first half of the blocks, expanded. Returns (the prefix kept, the answer)."""
    prompts = ctx.prompts
    blocks = split_blocks(text)
    first_half = "\n\n".join(blocks[: len(blocks) // 2])
    head = ctx.client.chat(model, prompts.messages(prompts.extend_request(instruction, first_half)),
                           **ctx.sampling())
    head_blocks = head.text.split("\n\n")
    return "\n\n".join(head_blocks[: len(head_blocks) * 2 // 3]), head


def finish_round(ctx: StageContext, model: str, instruction: str, text: str,
                 prefix: str) -> tuple[str | None, str | None, Completion]:
    """A round's completion request: the whole text continued after the prefix. Returns (new text or None,
    reject reason or None, the answer)."""
    rest = ctx.client.complete(model, ctx.prompts.extend_completion(instruction, text, prefix),
                               **ctx.sampling(**ctx.checked_whole(prefix)))
    candidate = prefix + rest.text
    meta_words = ctx.flavour.config.meta_words
    if rest.finish_reason == "rejected":  # the worker ended it: the check would reject any ending
        return None, reason_of_early_end(candidate, meta_words), rest
    reason = round_reason(candidate, text, meta_words)
    return (candidate if reason is None else None), reason, rest


def round_reason(candidate: str, text: str, meta_words) -> str | None:
    """Why a round's output `candidate` does not replace the current `text` (None: it does): the response check,
    then more words than the text."""
    reason = check_response(candidate, meta_words)
    if reason is None and count_words(candidate) <= count_words(text):
        reason = "not_longer"
    return reason


def fresh_state(row: dict) -> dict:
    """A chain's state: which try and round, the current text, the kept prefix of a round whose chat request is
    done (None between rounds), reasons of rejected rounds and tries, tokens so far."""
    return {"try": 0, "round": 0, "text": row["initial_response"], "prefix": None, "reasons": {}, "tokens": 0}


def make_work(ctx: StageContext, model: str, journal: Journal):
    """Each item is a chain of requests: tries of ROUNDS rounds of two requests. Its state is journaled after
    every request, so a stop (time budget, finish_fraction, Ctrl-C, kill -9) loses at most the request in flight
    and a rerun continues from there. A chain that the time budget stops in the last round of a try (or between
    its last two) finishes that round."""
    tries = ctx.args.max_tries or MAX_TRIES
    stop_when_grown = ctx.args.stop_when_grown

    def work(key: str, row: dict, stop: Stop) -> dict | None:
        state = dict(journal.records.get(key) or fresh_state(row))
        state.pop("key", None)
        reasons = Counter(state["reasons"])
        initial_words = count_words(row["initial_response"])

        def save(answer: Completion | None, rejected: str | None = None) -> None:
            tokens = answer.completion_tokens if answer else 0
            state["reasons"], state["tokens"] = dict(reasons), state["tokens"] + tokens
            state["time"] = round(time.time(), 1)  # when this request ended (for a stage's timeline)
            journal.record(key, state, answer, rejected=rejected)

        while state["try"] < tries:
            while state["round"] < ROUNDS:
                if (stop_when_grown and state["prefix"] is None
                        and count_words(state["text"]) > MIN_GROWTH * initial_words):
                    break  # between rounds and grown enough: the try is accepted as it stands
                # Stopped: return, unless the time budget stopped it and the try's last round is what is left
                # (it may finish the chain; if not, the chain stops before the next try).
                last_round = state["round"] == ROUNDS - 1
                if stop.is_set() and not (stop.budget and last_round):
                    return None
                reason = None
                if state["prefix"] is None:
                    state["prefix"], answer = start_round(ctx, model, row["prompt"], state["text"])
                else:
                    extended, reason, answer = finish_round(ctx, model, row["prompt"], state["text"], state["prefix"])
                    if extended is None:
                        reasons[reason] += 1
                    else:
                        state["text"] = extended
                    state["round"], state["prefix"] = state["round"] + 1, None
                save(answer, rejected=reason)
            if count_words(state["text"]) > MIN_GROWTH * initial_words:
                return {"status": "accepted", **row, "extended_response": state["text"], "tries": state["try"] + 1,
                        "reasons": reasons, "tokens": state["tokens"]}
            reasons["too_little_growth"] += 1
            state.update({"try": state["try"] + 1, "round": 0, "text": row["initial_response"], "prefix": None})
            save(None)
        return {"status": "exhausted", **row, "tries": tries, "reasons": reasons, "tokens": state["tokens"]}

    return work


def run(ctx: StageContext) -> Path:
    if done := finished(ctx, "extended_responses"):
        return done
    source = ctx.iter_dir / "initial_responses"
    require_complete(source, f"python step1_gen_initial_responses.py --iter {ctx.args.iter}")
    from datasets import load_from_disk

    data = load_from_disk(str(source))
    model = ctx.model("ext_sft")
    ctx.check_model_served(model)
    attempts = ctx.args.attempts or ATTEMPTS_PER_RESPONSE
    rows = [{"prompt": r["prompt"], "initial_response": r["initial_response"]} for r in data]
    random.Random(ctx.args.seed).shuffle(rows)  # started in this order: which items are the slowest 5% is random
    items = {f"{stable_key(r['prompt'], r['initial_response'])}-{a}": r for r in rows for a in range(attempts)}
    columns = ["prompt", "initial_response", "extended_response"]
    journal = Journal(journal_path(ctx, "extended_responses"))
    try:
        return run_stage(ctx, "extended_responses", items, make_work(ctx, model, journal), columns=columns,
                         rows_of=lambda recs: [{c: r[c] for c in columns} for r in recs],
                         length_column="extended_response", model=model, journal=journal)
    finally:
        journal.close()


def parser():
    p = base_parser(__doc__.splitlines()[0], finish_fraction=FINISH_FRACTION)
    p.add_argument("--attempts", type=positive_int, default=None,
                   help=f"independent extensions of each initial response (default: the method's {ATTEMPTS_PER_RESPONSE})")
    p.add_argument("--stop_when_grown", action=argparse.BooleanOptionalAction, default=False,
                   help=f"end a try after the first round that takes it past {MIN_GROWTH}x the initial words (the "
                        f"method always runs its {ROUNDS} rounds)")
    return p


@cli_main
def main(flavour_dir: Path, argv=None):
    run(StageContext.create(parser().parse_args(argv), flavour_dir))
