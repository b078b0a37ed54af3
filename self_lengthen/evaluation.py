"""Length-following scores (LonGen-style) and LongBench-Write's length score, plus constraint parsing.

Length bands: about X -> [0.8X, 1.2X]; range A-B -> [A, B]; above X -> [X, 1.5X]; below X -> [0.5X, X].
Score: 1 inside the band, max(2*len/a - 1, 0) below it, max(3 - 2*len/b, 0) above it.
Words are counted as in the pipeline (`text.count_words`).
"""
import re

from .errors import UsageError

TYPES = ("about", "range", "above", "below")
MIN_LENGTH = 10  # smaller numbers in a constraint ("一篇", "2 parts") are not lengths

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_ZH_NUMBER = re.compile(f"[{''.join(_DIGITS)}{''.join(_UNITS)}]+")
_ARABIC = re.compile(r"\d[\d,]*(?:\.\d+)?\s*[万kK]?")


def zh_to_int(text: str) -> int:
    """Chinese numerals to an integer: 两千 -> 2000, 三千五百 -> 3500, 一万二千 -> 12000, 十五 -> 15."""
    total, section, digit = 0, 0, None
    for ch in text:
        if ch in _DIGITS:
            digit = _DIGITS[ch]
        elif ch in _UNITS:
            unit = _UNITS[ch]
            value = 1 if digit is None else digit
            if unit == 10000:
                total += (section + (digit or 0)) * unit
                section = 0
            else:
                section += value * unit
            digit = None
        else:
            raise ValueError(ch)
    return total + section + (digit or 0)


def int_to_zh(n: int) -> str:
    """An integer below 100000 in Chinese numerals, as people write lengths: 2000 -> 两千, 3500 -> 三千五百."""
    if not 0 < n < 100000:
        raise ValueError(n)
    digits = "零一二三四五六七八九"
    out, zero_pending = "", False
    for unit_value, unit in ((10000, "万"), (1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d, n = divmod(n, unit_value)
        if d:
            if zero_pending:
                out += "零"
            word = "两" if d == 2 and unit in ("万", "千") else digits[d]
            out += word + unit
            zero_pending = False
        elif out:
            zero_pending = True
    return out


def parse_numbers(constraint: str) -> list[int]:
    """The lengths in a constraint, Arabic (1,500 / 2k / 1.5万) or Chinese (两千五百), in order."""
    found, spans = [], []
    for m in _ARABIC.finditer(constraint):
        spans.append(m.span())
        raw = m.group(0).replace(",", "").strip()
        scale = 1
        if raw[-1] in "万":
            raw, scale = raw[:-1], 10000
        elif raw[-1] in "kK":
            raw, scale = raw[:-1], 1000
        found.append((m.start(), int(round(float(raw) * scale))))
    for m in _ZH_NUMBER.finditer(constraint):
        if any(a <= m.start() < b for a, b in spans):  # the 万 of "1.5万"
            continue
        try:
            found.append((m.start(), zh_to_int(m.group(0))))
        except ValueError:
            continue
    return [value for _, value in sorted(found) if value >= MIN_LENGTH]


def band(kind: str, constraint: str) -> tuple[float, float]:
    if kind not in TYPES:
        raise ValueError(f"unknown type {kind!r} (expected one of {', '.join(TYPES)})")
    numbers = parse_numbers(constraint)
    if kind == "range":
        if len(numbers) < 2:
            raise ValueError(f"range constraint {constraint!r} needs two numbers")
        lo, hi = sorted(numbers[:2])
        return float(lo), float(hi)
    if not numbers:
        raise ValueError(f"no number in constraint {constraint!r}")
    x = float(numbers[0])
    return {"about": (0.8 * x, 1.2 * x), "above": (x, 1.5 * x), "below": (0.5 * x, x)}[kind]


def check_constraints(rows: list[dict], source: str) -> None:
    """Every row's type and constraint give a length band, or one clear error naming the first line that does not."""
    for row in rows:
        try:
            band(str(row.get("type")), str(row.get("constraint", "")))
        except ValueError as exc:
            raise UsageError(f"{source}: line {row.get('_line', '?')}: {exc}") from None


def length_score(length: float, lo: float, hi: float) -> float:
    if length < lo:
        return max(2 * length / lo - 1, 0.0)
    if length > hi:
        return max(3 - 2 * length / hi, 0.0)
    return 1.0


_LW_CJK = re.compile(r"[\u4e00-\u9fff]")
_LW_LATIN = re.compile(r"[A-Za-z]+")


def longwriter_words(text: str) -> int:
    """Words as LongBench-Write counts them: CJK ideographs (U+4E00-U+9FFF) plus runs of Latin letters. Unlike the
    pipeline's count_words, punctuation and numbers count for nothing and "don't" is two words."""
    return len(_LW_CJK.findall(text)) + len(_LW_LATIN.findall(text))


def longbench_length_score(required: float, output: float) -> float:
    """LongBench-Write's S_l in [0, 100]: penalises overshoot over 3x the ratio, undershoot over 2x."""
    if required <= 0:
        raise ValueError("required length must be positive")
    if output > required:
        return 100 * max(0.0, 1 - (output / required - 1) / 3)
    if output <= 0:
        return 0.0
    return 100 * max(0.0, 1 - (required / output - 1) / 2)


def target_length(kind: str, constraint: str) -> float:
    """The one required length a constraint asks for (LongBench-Write's S_l needs one): a band's middle for about
    and range, its bound for above and below."""
    lo, hi = band(kind, constraint)
    return {"about": (lo + hi) / 2, "range": (lo + hi) / 2, "above": lo, "below": hi}[kind]


def longen_scores(rows: list[dict]) -> dict:
    """Rows with type, constraint and words (the answer's): mean length-following score, mean S_l, mean words."""
    if not rows:
        return {"n": 0}
    following = [length_score(r["words"], *band(r["type"], r["constraint"])) for r in rows]
    s_l = [longbench_length_score(target_length(r["type"], r["constraint"]), r["words"]) for r in rows]
    n = len(rows)
    return {"n": n, "following": round(sum(following) / n, 3), "s_l": round(sum(s_l) / n, 1),
            "mean_words": round(sum(r["words"] for r in rows) / n, 1)}
