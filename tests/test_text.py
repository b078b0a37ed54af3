"""Unit and property tests of the text measures and filters."""
import random
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from self_lengthen.text import (
    check_response, count_words, drop_short, ends_a_sentence, has_repeated_ngram, is_cjk, keep_probability,
    mentions_meta_words, split_blocks, units,
)


def test_count_words_english_and_chinese():
    assert count_words("The quick brown fox.") == 4
    assert count_words("你好，世界。") == 6  # 4 ideographs + 2 CJK punctuation marks
    assert count_words("用 Python 写代码") == 4 + 1
    assert count_words("") == 0 and count_words("   \n ") == 0


@given(st.lists(st.sampled_from(["alpha", "beta", "你", "好", "。", "x1"]), max_size=50))
def test_count_words_is_additive_over_space_joined_parts(parts):
    joined = " ".join(parts)
    assert count_words(joined) == sum(count_words(p) for p in parts)


@given(st.text(max_size=200))
def test_count_words_never_negative_and_bounded(text):
    assert 0 <= count_words(text) <= len(text)


def test_language_follows_the_text():
    assert is_cjk("这是一段中文文本，其中有一些 English words。")
    assert not is_cjk("This is English with one 字.")
    assert units("长城 Great Wall 很长") == ["长", "城", "Great", "Wall", "很", "长"]


def test_sentence_end():
    assert ends_a_sentence("It ended.")
    assert ends_a_sentence("他走了。")
    assert ends_a_sentence('She said "goodbye!"')
    assert ends_a_sentence("**Done.**")
    assert not ends_a_sentence("and then the")
    assert not ends_a_sentence("Conclusion:")


def test_repeated_ngram_thresholds():
    ten = "one two three four five six seven eight nine ten"
    assert has_repeated_ngram(f"{ten} middle {ten}")
    assert not has_repeated_ngram(f"{' '.join(ten.split()[:9])} middle {' '.join(ten.split()[:9])}")
    thirteen = "一二三四五六七八九十甲乙丙"
    assert has_repeated_ngram(f"{thirteen}，{thirteen}")
    assert not has_repeated_ngram(f"{thirteen[:12]}，{thirteen[:12]}")


def test_meta_words_only_at_the_edges():
    body = "\n".join(f"Line {i} of the essay." for i in range(10))
    assert not mentions_meta_words(body, ["revised"])
    assert mentions_meta_words("Here is the revised essay:\n" + body, ["revised"])
    assert mentions_meta_words(body + "\nThis version adds detail.", ["version"])
    middle = body.splitlines()
    middle.insert(5, "The revised plan was adopted.")
    assert not mentions_meta_words("\n".join(middle), ["revised"])


def test_check_response_reasons():
    assert check_response("") == "empty"
    assert check_response("A sentence that stops") == "unfinished"
    assert check_response("a b c d e f g h i j k a b c d e f g h i j k.") == "repetition"
    assert check_response("Here is the revised text.\nIt is good.", ["revised"]) == "meta_words"
    assert check_response("A fine answer.\n\nWith two paragraphs.") is None


def test_keep_probability_edges():
    n = 100
    assert keep_probability(1, n) == 0.0  # the shortest: 1 - 2 * 0.99^3 < 0
    assert keep_probability(n, n) == 1.0  # the longest
    probs = [keep_probability(i, n) for i in range(1, n + 1)]
    assert probs == sorted(probs)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=5, max_size=200), st.integers())
def test_drop_short_always_keeps_the_longest_and_drops_the_shortest(lengths, seed):
    items = list(enumerate(lengths))
    kept = drop_short(items, lambda it: it[1], random.Random(seed))
    longest = max(items, key=lambda it: (it[1], -it[0]))
    order = sorted(items, key=lambda it: it[1])
    assert order[-1] in kept  # position n: probability 1
    assert order[0] not in kept  # position 1: probability 0
    assert all(k in items for k in kept) and len(set(kept)) == len(kept)
    assert longest[1] == max(k[1] for k in kept)


def test_drop_short_distribution_matches_the_formula():
    n, trials = 50, 400
    hits = [0] * n
    items = list(range(n))  # already in ascending length order
    rng = random.Random(0)
    for _ in range(trials):
        for i in drop_short(items, lambda x: x, rng):
            hits[i] += 1
    for pos in (1, 10, 25, 40, 50):
        expected = keep_probability(pos, n)
        assert abs(hits[pos - 1] / trials - expected) < 0.08
    # the kept half is much longer than the input on average
    kept_mean = statistics.mean(i for i in range(n) for _ in range(hits[i]))
    assert kept_mean > statistics.mean(items) + 8


def test_split_blocks():
    blocks, sep = split_blocks("A.\n\nB.\n\nC.\n\nD.")
    assert blocks == ["A.", "B.", "C.", "D."] and sep == "\n\n"
    blocks, sep = split_blocks("Title\nline one\nline two\n\nlast")
    assert sep == "\n" and blocks == ["Title", "line one", "line two", "last"]


@given(st.lists(st.text(alphabet="abc .", min_size=1, max_size=20).filter(lambda s: s.strip()), min_size=1, max_size=12))
def test_split_blocks_keeps_all_text(paragraphs):
    text = "\n\n".join(paragraphs)
    blocks, sep = split_blocks(text)
    assert "".join(blocks).replace(" ", "") == "".join(p.strip() for p in paragraphs).replace(" ", "")
