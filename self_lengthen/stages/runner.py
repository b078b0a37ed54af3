"""The stage runner, written once: concurrency, checkpoint, resume, progress, summary and the final dataset.

A stage is a set of items, each with a stable key, and a `work` function that turns one item into a record
(`status` accepted or exhausted, `reasons` for rejected tries, `tokens` generated, plus the stage's fields).
Every finished record is appended to `<out>.checkpoint.jsonl` as it completes. A rerun reads the completion
marker first (`<out>/_COMPLETE`, inside the dataset dir that is renamed into place), then the checkpoint, and does
only what is missing. The final dataset is written to a temp dir and renamed, so a half-written one never exists.
"""
import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from ..client import Completion
from ..errors import UsageError
from ..io import Checkpoint
from ..text import has_repeated_ngram

MARKER = "_COMPLETE"


class Journal(Checkpoint):
    """The last recorded state of each unfinished item (a chain of requests), appended after every request, so that
    stopping loses at most the requests in flight and a rerun continues each chain where it was. Counts the tokens
    of the requests it recorded in this run."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.tokens_this_run = 0
        self.capped_tokens_this_run = 0  # of requests cut at max_tokens
        self.capped_repeating_tokens_this_run = 0  # ... whose own text already repeats (a larger cap would not help)
        self.rejected_tokens_this_run = Counter()  # of requests whose output was rejected, by reason
        self.ended_early_this_run = 0  # requests the worker ended as certain to be rejected

    def record(self, key: str, state: dict, answer: Completion | None = None, rejected: str | None = None) -> None:
        """Record a chain's state after `answer` (the request that just ended; None when no request did)."""
        self.append({"key": key, **state})
        tokens = answer.completion_tokens if answer else 0
        capped = answer is not None and answer.finish_reason == "length"
        repeating = capped and has_repeated_ngram(answer.text)
        with self._lock:
            self.tokens_this_run += tokens
            self.capped_tokens_this_run += tokens if capped else 0
            self.capped_repeating_tokens_this_run += tokens if repeating else 0
            if rejected:
                self.rejected_tokens_this_run[rejected] += tokens
            self.ended_early_this_run += answer is not None and answer.finish_reason == "rejected"


@dataclass
class StageResult:
    records: list[dict]
    rows: list[dict] | None = None
    summary: dict = field(default_factory=dict)


def is_complete(out_dir: Path) -> bool:
    return (out_dir / MARKER).is_file()


def require_complete(out_dir: Path, command: str) -> None:
    if not is_complete(out_dir):
        raise UsageError(f"{out_dir} is missing or unfinished; run `{command}` first")


class Stop(threading.Event):
    """Set when a stage ends before all its items are done: in-flight items stop after their current request.
    `budget` is True when the time budget ended it: then an item whose next request may finish it can still send
    that request, and the items that finish in this wind-down are recorded."""

    def __init__(self):
        super().__init__()
        self.budget = False


def run_items(items: dict[str, object], work: Callable[[str, object, Stop], dict], checkpoint: Checkpoint,
              *, workers: int, finish_fraction: float = 1.0, time_budget: float | None = None,
              keep_in_flight: bool = False, desc: str = "") -> list[dict]:
    """Run `work` over the items not yet in the checkpoint, `workers` at a time. Returns all finished records.

    The stage ends early once more than `finish_fraction` of all items is finished (the method's rule), or once
    `time_budget` seconds have passed with at least one item accepted: queued items are cancelled and the in-flight
    ones are told to stop (they finish their current request; nothing is killed). An item stopped before it
    finished returns None and is not checkpointed; a stage whose items are chains of requests keeps their progress
    in a `Journal`. Past the finish_fraction, items that finish while stopping are dropped, as the method drops
    them, unless `keep_in_flight` (not the method's); past the time budget (not the method's), they are recorded
    (see `Stop`). Records taken while stopping carry `"wind_down": True`.
    """
    todo = {k: v for k, v in items.items() if k not in checkpoint.records}
    total = len(items)

    def enough(finished: int) -> bool:
        return finished >= total or finished / total > finish_fraction

    stop = Stop()
    counts = Counter(r["status"] for r in checkpoint.records.values() if r["key"] in items)
    bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="item", dynamic_ncols=True)
    bar.set_postfix(accepted=counts["accepted"], exhausted=counts["exhausted"])
    finished = total - len(todo)

    def take(key: str, record: dict | None, wind_down: bool = False) -> None:
        nonlocal finished
        if record is None:  # stopped before finishing: not recorded, redone on resume
            return
        checkpoint.append({"key": key, **record, **({"wind_down": True} if wind_down else {})})
        counts[record["status"]] += 1
        finished += 1
        bar.update(1)
        bar.set_postfix(accepted=counts["accepted"], exhausted=counts["exhausted"])

    if todo and not enough(finished):
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        pending = {pool.submit(work, key, payload, stop): key for key, payload in todo.items()}
        deadline = time.monotonic() + time_budget if time_budget else None
        try:
            while pending:
                # Wake at the deadline; past it (nothing accepted yet), wait for the next item as usual.
                left = None if deadline is None else deadline - time.monotonic()
                done, _ = wait(pending, timeout=left if left and left > 0 else None, return_when=FIRST_COMPLETED)
                for future in done:
                    take(pending.pop(future), future.result())  # a worker error (endpoint gone) ends the stage
                if pending and enough(finished):
                    break
                if pending and deadline is not None and time.monotonic() >= deadline and counts["accepted"]:
                    stop.budget = True
                    break
        finally:
            # Early finish, an error or Ctrl-C: queued items are cancelled, in-flight ones stop after their
            # current request; their results are not recorded (except past the time budget, or with
            # keep_in_flight) and are redone by a rerun.
            stop.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            bar.close()  # before any error message, so it starts on a line of its own
        if pending and (stop.budget or keep_in_flight):
            before = finished
            for future, key in pending.items():
                if not future.cancelled() and future.exception() is None:
                    take(key, future.result(), wind_down=True)
            if stop.budget:
                tqdm.write(f"{desc}: time budget of {time_budget / 60:g} min used; ended with {finished} of {total} "
                           f"items finished")
            else:
                tqdm.write(f"{desc}: ended past {finish_fraction:g} of the items; kept the {finished - before} that "
                           f"finished with the request they had in flight")
    bar.close()
    return [checkpoint.records[k] for k in sorted(items) if k in checkpoint.records]


def save_dataset(rows: list[dict], columns: list[str], out_dir: Path, types: dict[str, str] | None = None) -> None:
    """Write an HF dataset to a temp dir beside out_dir, mark it complete, and rename it into place. Columns are
    strings unless `types` names another dtype (int64, bool, ...) for them."""
    from datasets import Dataset, Features, Value
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        features = Features({c: Value((types or {}).get(c, "string")) for c in columns})
        data = Dataset.from_dict({c: [r[c] for r in rows] for c in columns}, features=features)
        data.save_to_disk(str(tmp / "data"), num_shards=1)  # one shard: an empty dataset must load too
        for item in (tmp / "data").iterdir():
            item.rename(tmp / item.name)
        (tmp / "data").rmdir()
        (tmp / MARKER).write_text(json.dumps({"rows": len(rows), "columns": columns}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(records: list[dict], started: float, tokens_this_run: int) -> dict:
    reasons = Counter()
    for r in records:
        reasons.update(r.get("reasons", {}))
    wall = time.monotonic() - started
    return {
        "items": len(records),
        "accepted": sum(r["status"] == "accepted" for r in records),
        "exhausted": sum(r["status"] == "exhausted" for r in records),
        "reject_reasons": dict(reasons.most_common()),
        "tokens_generated": sum(r.get("tokens", 0) for r in records),
        "tokens_this_run": tokens_this_run,
        "wall_seconds_this_run": round(wall, 1),
        "tokens_per_second_this_run": round(tokens_this_run / wall, 1) if wall > 0 else 0.0,
    }
