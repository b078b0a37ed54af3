"""Text measures and filters: word counting, response checks, length-biased sampling, block splitting.

Filters follow the language of the text itself, not the flavour, so either flavour handles zh and en.
"""
import random
import re
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

# CJK ideographs (with extension A and compatibility forms), CJK symbols and punctuation, full-width forms.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
CJK_CHAR = re.compile(f"[{_CJK}]")
CJK_IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A unit for n-gram repetition in CJK text: one CJK character, or a run of ASCII non-space characters.
CJK_UNIT = re.compile(f"[{_CJK}]|[\x21-\x7e]+")

SENTENCE_END = set(".!?。！？…")
CLOSERS = set("\"'”’)）]】」』》*_`")
NGRAM_CJK, NGRAM_OTHER = 13, 10


def count_words(text: str) -> int:
    """CJK characters (punctuation included) plus whitespace-separated tokens of everything else."""
    cjk = len(CJK_CHAR.findall(text))
    return cjk + len(CJK_CHAR.sub(" ", text).split())


def is_cjk(text: str) -> bool:
    """True when ideographs make up at least a fifth of the text's non-space characters."""
    visible = sum(1 for ch in text if not ch.isspace())
    return visible > 0 and len(CJK_IDEOGRAPH.findall(text)) / visible >= 0.2


def ends_a_sentence(text: str) -> bool:
    stripped = text.rstrip()
    while stripped and stripped[-1] in CLOSERS:
        stripped = stripped[:-1].rstrip()
    return bool(stripped) and stripped[-1] in SENTENCE_END


def units(text: str) -> list[str]:
    return CJK_UNIT.findall(text) if is_cjk(text) else text.split()


def has_repeated_ngram(text: str, n: int | None = None) -> bool:
    """True if some n-gram of units occurs twice (n: 13 for CJK text, 10 otherwise)."""
    toks = units(text)
    n = n or (NGRAM_CJK if is_cjk(text) else NGRAM_OTHER)
    seen = set()
    for i in range(len(toks) - n + 1):
        gram = tuple(toks[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def mentions_meta_words(text: str, words: Sequence[str]) -> bool:
    """True if the first 2 or the last 3 non-empty lines mention a draft-talk word (revised, version, ...)."""
    if not words:
        return False
    lines = [line for line in text.splitlines() if line.strip()]
    edge = " ".join(lines[:2] + lines[-3:]).lower()
    return any(re.search(rf"\b{re.escape(w.lower())}", edge) for w in words)


def check_response(text: str, meta_words: Sequence[str] = ()) -> str | None:
    """None if the response is acceptable, else the reject reason."""
    if not text or not text.strip():
        return "empty"
    if not ends_a_sentence(text):
        return "unfinished"
    if has_repeated_ngram(text):
        return "repetition"
    if mentions_meta_words(text, meta_words):
        return "meta_words"
    return None


def keep_probability(position: int, n: int) -> float:
    """Keep chance of the item at 1-based `position` in ascending length order of n: max(0, 1 - 2 r^3)."""
    r = 1 - position / n
    return max(0.0, 1 - 2 * r ** 3)


def drop_short(items: Sequence[T], length: Callable[[T], int], rng: random.Random) -> list[T]:
    """Length-biased sampling: the shortest are almost always dropped, the longest always kept."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    n = len(items)
    keep = {i for pos, i in enumerate(order, start=1) if rng.random() < keep_probability(pos, n)}
    return [item for i, item in enumerate(items) if i in keep]


def split_blocks(text: str) -> tuple[list[str], str]:
    """Blocks split on blank lines; with 2 blocks or fewer, on single newlines. Returns (blocks, separator)."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    if len(blocks) <= 2:
        return [line.strip() for line in text.strip().splitlines() if line.strip()], "\n"
    return blocks, "\n\n"
