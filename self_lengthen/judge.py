"""An LLM judge over any OpenAI-compatible endpoint: a score per dimension, parsed leniently, asked again when the
verdict cannot be read."""
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .client import Client

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


def judge_rows(rows: list[dict], client: Client, model: str, prompt_of: Callable[[dict], str],
               parse: Callable[[str], dict | None], workers: int, tries: int) -> list[dict | None]:
    """One verdict per row (None where `tries` answers could not be parsed), `workers` rows at a time."""
    def one(row: dict) -> dict | None:
        for _ in range(tries):
            answer = client.chat(model, [{"role": "user", "content": prompt_of(row)}], max_tokens=300, temperature=0.2)
            verdict = parse(answer.text)
            if verdict is not None:
                return verdict
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, rows))
