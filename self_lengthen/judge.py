"""An LLM judge over any OpenAI-compatible endpoint: a score per dimension, parsed leniently, asked again when the
verdict cannot be read, each verdict checkpointed as it arrives (a hosted judge costs money per call)."""
import hashlib
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .client import Client
from .errors import positive_int
from .io import Checkpoint, output_file

_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


def judge_client(base_url: str | None) -> Client:
    """A hosted judge (base_url given) gets only OpenAI's own sampling fields and $JUDGE_API_KEY, never the
    cluster's key; the local endpoint (None) gets the cluster's key and the engine's fields."""
    key = os.environ.get("JUDGE_API_KEY", "") if base_url else None
    return Client(base_url, key, engine_fields=base_url is None)


def _norm(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", str(name).strip().lower()))


def parse_scores(text: str, dimensions: tuple[str, ...], lo: float, hi: float) -> dict[str, float] | None:
    """The first JSON object in `text` that scores every dimension within [lo, hi]; tolerant of code fences, prose,
    single quotes, any case, and `_` or `-` for spaces in the names. None if there is none."""
    for candidate in _OBJECT.findall(text or ""):
        for attempt in (candidate, candidate.replace("'", '"')):
            try:
                data = json.loads(attempt)
            except ValueError:
                continue
            named = {_norm(k): v for k, v in data.items()}
            try:
                scores = {d: float(named[_norm(d)]) for d in dimensions}
            except (KeyError, TypeError, ValueError):
                break
            if all(lo <= v <= hi for v in scores.values()):
                return scores
            break
    return None


def verdict_parser(prompt_text: str, dimensions: tuple[str, ...], lo: float, hi: float) -> Callable[[str], dict | None]:
    """parse_scores for answers to the judge prompt `prompt_text`, where a verdict equal to the prompt's own example
    counts as unreadable: a judge that copies the example has not judged (the 135M default model does, most often
    with one dimension left out; bench/RESULTS.md)."""
    example = parse_scores(prompt_text, dimensions, lo, hi)

    def parse(text: str) -> dict | None:
        verdict = parse_scores(text, dimensions, lo, hi)
        return None if verdict == example else verdict

    return parse


def judge_rows(rows: list[dict], client: Client, model: str, prompt_of: Callable[[dict], str],
               parse: Callable[[str], dict | None], workers: int, tries: int,
               checkpoint: Path | None = None) -> list[dict | None]:
    """One verdict per row (None where `tries` answers could not be parsed), `workers` prompts at a time; rows with
    the same prompt share one verdict. With `checkpoint`, each verdict is appended as it arrives, and a rerun reuses
    every verdict there of the same judge model on the same prompt: a kill loses only the verdicts in flight."""
    prompts = [prompt_of(row) for row in rows]
    keys = [hashlib.sha1(json.dumps([model, p]).encode()).hexdigest() for p in prompts]
    saved = Checkpoint(checkpoint) if checkpoint else None
    reused = sum(k in saved.records for k in set(keys)) if saved else 0
    if reused:
        print(f"reusing {reused} verdicts from {checkpoint} (delete it to judge afresh)", file=sys.stderr)

    def one(i: int) -> dict | None:
        if saved and keys[i] in saved.records:
            return saved.records[keys[i]]["verdict"]
        verdict = None
        for _ in range(tries):
            answer = client.chat(model, [{"role": "user", "content": prompts[i]}], max_tokens=300, temperature=0.2)
            verdict = parse(answer.text)
            if verdict is not None:
                break
        if saved:
            saved.append({"key": keys[i], "verdict": verdict})
        return verdict

    first_row = {}  # each distinct prompt is judged once, for its first row
    for i, k in enumerate(keys):
        first_row.setdefault(k, i)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        verdicts = dict(zip(first_row, pool.map(one, first_row.values())))
        return [verdicts[k] for k in keys]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an error or Ctrl-C: rows not yet started are not judged
        if saved:
            saved.close()


def add_judge_arguments(p, model: str | None = "base", model_help: str = "the judge's model name") -> None:
    """The judge's command-line options, the same in every script that asks one."""
    p.add_argument("--judge_model", default=model, help=model_help)
    p.add_argument("--judge_base_url", default=None, help="the judge's endpoint (default: the local one)")
    p.add_argument("--workers", type=positive_int, default=4, help="rows judged at a time")
    p.add_argument("--tries", type=positive_int, default=3, help="judge calls per row before its verdict counts as unreadable")
    p.add_argument("--verdicts", default=None,
                   help="the checkpoint of verdicts, reused by a rerun (default: beside the input, <name>.verdicts.jsonl)")


def verdicts_path(args, beside: Path) -> Path:
    """Where the judge's verdicts are checkpointed: --verdicts, else `beside`'s name + .verdicts.jsonl."""
    return output_file(args.verdicts or str(beside.with_name(beside.name + ".verdicts.jsonl")), "--verdicts")
