"""Text measures and filters: word counting, response checks, length-biased sampling, block splitting.

The rules are the method's own. The response check follows the language of the text itself, not the flavour, so
either flavour handles zh and en.
"""
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

# CJK ideographs (with extension A and compatibility forms), CJK symbols and punctuation, full-width forms.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
CJK_CHAR = re.compile(f"[{_CJK}]")
CJK_IDEOGRAPH = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# The method's response check, one rule per language (the text's own language picks it):
#   zh: ends with one of ZH_ENDINGS; no 13-gram of units twice (a unit: one non-ASCII character, or a maximal run
#       of ASCII characters, spaces and newlines included); no draft-word check.
#   en: ends with one of EN_ENDINGS; no draft word as a case-sensitive substring of the first 2 and last 3 lines;
#       no 10-gram of whitespace-split tokens twice.
ZH_ENDINGS = frozenset("。！？”)]}>）】’…`")
EN_ENDINGS = frozenset(".!?,;:-\"')]}>`")
NGRAM_CJK, NGRAM_OTHER = 13, 10


def count_words(text: str) -> int:
    """CJK characters (punctuation included) plus whitespace-separated tokens of everything else."""
    cjk = len(CJK_CHAR.findall(text))
    return cjk + len(CJK_CHAR.sub(" ", text).split())


CJK_SHARE = 0.2  # a text is CJK when ideographs make up at least this share of its non-space characters


def _visible(text: str) -> int:
    return sum(1 for ch in text if not ch.isspace())


def is_cjk(text: str) -> bool:
    """True when ideographs make up at least a fifth (CJK_SHARE) of the text's non-space characters."""
    visible = _visible(text)
    return visible > 0 and len(CJK_IDEOGRAPH.findall(text)) / visible >= CJK_SHARE


def ends_a_sentence(text: str) -> bool:
    """The text (right-stripped) ends with one of its language's closing characters."""
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in (ZH_ENDINGS if is_cjk(stripped) else EN_ENDINGS)


def cjk_units(text: str) -> list[str]:
    """Every non-ASCII character is a unit; every maximal run of ASCII characters (whitespace too) is one unit."""
    out: list[str] = []
    for ch in text:
        if ch.isascii() and out and out[-1][-1].isascii():
            out[-1] += ch
        else:
            out.append(ch)
    return out


def units(text: str) -> list[str]:
    return cjk_units(text) if is_cjk(text) else text.split()


def has_repeated_ngram(text: str, n: int | None = None) -> bool:
    """True if some n-gram of units occurs twice (n: 13 for CJK text, 10 otherwise)."""
    return _repeats(units(text), n or (NGRAM_CJK if is_cjk(text) else NGRAM_OTHER))


def _repeats(toks: Sequence[str], n: int) -> bool:
    seen = set()
    for i in range(len(toks) - n + 1):
        gram = tuple(toks[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def mentions_meta_words(text: str, words: Sequence[str]) -> bool:
    """True if a draft-talk word (revised, version, ...) is a case-sensitive substring of the first 2 or the last 3
    lines (split on newlines, blank lines counted)."""
    lines = text.split("\n")
    edge = "\n".join(lines[:2] + lines[-3:])
    return any(w in edge for w in words)


def check_response(text: str, meta_words: Sequence[str] = ()) -> str | None:
    """None if the response is acceptable, else the reject reason. The text is right-stripped first."""
    text = text.rstrip()
    if not text:
        return "empty"
    if not ends_a_sentence(text):
        return "unfinished"
    if not is_cjk(text) and mentions_meta_words(text, meta_words):
        return "meta_words"
    if has_repeated_ngram(text):
        return "repetition"
    return None


@dataclass(frozen=True)
class TokenBounds:
    """The most one token of a tokenizer can add to a decoded text: ideographs, and non-space characters. A token
    decoded alone shows a character it splits with other tokens as U+FFFD, counted here as one of each."""
    ideographs: int
    visible: int

    @classmethod
    def of(cls, tokenizer) -> "TokenBounds":
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        return cls(max(len(CJK_IDEOGRAPH.findall(t)) + t.count("\ufffd") for t in texts),
                   max(_visible(t) for t in texts))


def certain_rejection(text: str, tokens_left: int, bounds: TokenBounds, held_back: int = 0,
                      meta_words: Sequence[str] = ()) -> str | None:
    """Why `check_response` will reject whatever `text` still becomes, or None if it might not.

    `text` is a generation in progress: it may gain up to `tokens_left` tokens, and lose up to its last `held_back`
    characters (where a stop string that completes later cuts it). Its language is settled when no such ending can
    move the ideographs' share across a fifth; then a repeated n-gram among its settled units (the last one may
    still grow), or, in English, a draft word in its first two lines, stays in every ending. The check rejects all
    of them (for this reason, or for an earlier one in its order).
    """
    stable = text[: max(0, len(text) - held_back)]
    tail = text[len(stable):]
    ideographs, visible = len(CJK_IDEOGRAPH.findall(stable)), _visible(stable)
    more_ideographs = len(CJK_IDEOGRAPH.findall(tail)) + tokens_left * bounds.ideographs
    more_visible = _visible(tail) + tokens_left * bounds.visible
    if ideographs + more_ideographs < CJK_SHARE * (visible + more_ideographs):  # stays under a fifth: English rules
        words = stable.split()
        if stable and not stable[-1].isspace():
            words = words[:-1]
        if _repeats(words, NGRAM_OTHER):
            return "repetition"
        if any(w in "\n".join(stable.split("\n")[:2]) for w in meta_words):
            return "meta_words"
    elif visible and ideographs >= CJK_SHARE * (visible + more_visible):  # stays at a fifth or more: CJK rules
        cjk = cjk_units(stable)
        if cjk and cjk[-1][-1].isascii():
            cjk = cjk[:-1]
        if _repeats(cjk, NGRAM_CJK):
            return "repetition"
    return None


def reason_of_early_end(text: str, meta_words: Sequence[str] = ()) -> str:
    """The reject reason of a text that a worker ended because `certain_rejection` found one (finish_reason
    "rejected"): that reason, found again in the text as it stands."""
    return certain_rejection(text, 0, TokenBounds(0, 0), 0, meta_words) or check_response(text, meta_words) or "rejected"


def keep_probability(index: int, n: int) -> float:
    """Keep chance of an item whose length first appears at 0-based `index` of the n sorted lengths:
    max(0, 1 - 2 r^3) with r = 1 - index / n."""
    r = 1 - index / n
    return max(0.0, 1 - 2 * r ** 3)


def drop_short(items: Sequence[T], length: Callable[[T], int], rng: random.Random) -> list[T]:
    """Length-biased sampling (the method's): the shortest length is always dropped, longer ones kept more often.
    Equal lengths share the position of the first of them."""
    lengths = [length(it) for it in items]
    first = {}
    for i, value in enumerate(sorted(lengths)):
        first.setdefault(value, i)
    n = len(items)
    return [it for it, value in zip(items, lengths) if rng.random() > 2 * (1 - first[value] / n) ** 3]


def split_blocks(text: str) -> list[str]:
    """The Extender's blocks: the text split on blank lines ("\\n\\n"); with 2 blocks or fewer, on newlines.
    Nothing is stripped or dropped: joined with the separator they were split on, they give the text back."""
    blocks = text.split("\n\n")
    return blocks if len(blocks) > 2 else text.split("\n")
