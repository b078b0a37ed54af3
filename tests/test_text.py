"""Unit and property tests of the text measures and filters: the method's rules, on cases written for this project."""
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, jsonl_rows
from self_lengthen.text import (
    TokenBounds, certain_rejection, check_response, cjk_units, count_words, drop_short, ends_a_sentence,
    has_repeated_ngram, is_cjk, keep_probability, mentions_meta_words, reason_of_early_end, split_blocks, units,
)

EN_META = ["revised", "revision", "response", "version", "paragraph"]  # the llama flavour's list


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
    assert units("长城 Great Wall 很长") == ["长", "城", " Great Wall ", "很", "长"]
    assert units("Plain English words") == ["Plain", "English", "words"]


@pytest.mark.parametrize("text,units_", [
    ("长城 Great Wall 很长", ["长", "城", " Great Wall ", "很", "长"]),  # spaces belong to the ASCII run
    ("第1章\n\n开头", ["第", "1", "章", "\n\n", "开", "头"]),  # newlines too
    ("（全角）标点，每个一个", ["（", "全", "角", "）", "标", "点", "，", "每", "个", "一", "个"]),
    ("a. b!中", ["a. b!", "中"]),
    ("", []),
])
def test_cjk_units(text, units_):
    assert cjk_units(text) == units_


@given(st.text(alphabet="ab 。中\n", max_size=60))
def test_cjk_units_cover_the_text_and_never_join_two_ascii_runs(text):
    out = cjk_units(text)
    assert "".join(out) == text
    assert all(u.isascii() or len(u) == 1 for u in out)
    assert not any(a.isascii() and b.isascii() for a, b in zip(out, out[1:]))


@pytest.mark.parametrize("text,ok", [
    ("It ended.", True), ("Really?", True), ("Stop!", True), ("a list,", True), ("so;", True), ("Conclusion:", True),
    ("a dash -", True), ('She said "goodbye"', True), ("it's 'quoted'", True), ("(aside)", True), ("[1]", True),
    ("{x}", True), ("<br>", True), ("`code`", True), ("It ended.  \n\n", True),
    ("and then the", False), ("**Done.**", False), ("Done…", False), ("Done。", False), ("x_", False),
])
def test_english_endings(text, ok):
    assert ends_a_sentence(text) is ok
    assert (check_response(text) != "unfinished") is ok


@pytest.mark.parametrize("text,ok", [
    ("他走了。", True), ("真的吗？", True), ("太好了！", True), ("他说：“好。”", True), ("（完）", True), ("【注】", True),
    ("等等…", True), ("这是 `代码`", True), ("代码 (x)", True), ("他说‘好’", True), ("列表]", True), ("结束>", True),
    ("他走了。\n\n  ", True),
    ("他走了.", False), ("然后他", False), ("他问?", False), ("他喊!", False), ("第一，", False), ("结束:", False),
])
def test_chinese_endings(text, ok):
    assert ends_a_sentence(text) is ok
    assert (check_response(text) != "unfinished") is ok


def test_repeated_ngram_thresholds():
    ten = "one two three four five six seven eight nine ten"
    assert has_repeated_ngram(f"{ten} middle {ten}")
    assert not has_repeated_ngram(f"{' '.join(ten.split()[:9])} middle {' '.join(ten.split()[:9])}")
    thirteen = "一二三四五六七八九十甲乙丙"
    assert has_repeated_ngram(f"{thirteen}，{thirteen}")
    assert not has_repeated_ngram(f"{thirteen[:12]}，{thirteen[:12]}")


def test_chinese_repetition_counts_an_ascii_run_as_one_unit():
    # 11 ideographs + one ASCII run + 1 ideograph = 13 units, twice: a repetition ...
    piece = "一二三四五六七八九十甲 ABC 乙"
    assert len(cjk_units(piece)) == 13 and has_repeated_ngram(f"{piece}。{piece}")
    # ... but the same run with other spacing is another unit, so no 13-gram repeats
    assert not has_repeated_ngram(f"{piece}。{piece.replace(' ABC ', ' ABC  ')}")
    # English tokens are split on whitespace: spacing does not matter there
    ten = "one two three four five six seven eight nine ten"
    assert has_repeated_ngram(f"{ten}\n\n{ten.replace(' ', '   ')}")


def test_english_draft_words_are_case_sensitive_substrings_of_the_edge_lines():
    body = "\n".join(f"Line {i} of the essay." for i in range(10))
    assert not mentions_meta_words(body, EN_META)
    assert mentions_meta_words("Here is the revised essay:\n" + body, EN_META)
    assert mentions_meta_words("A title\nIts subversion began early.\n" + body, EN_META)  # substring, not a word
    assert mentions_meta_words(body + "\nThe responses were mixed.", EN_META)  # "response" inside "responses"
    assert not mentions_meta_words("Revised essay:\n" + body, EN_META)  # case-sensitive: "Revised" is not "revised"
    assert not mentions_meta_words("VERSION 2\n" + body, EN_META)
    middle = body.split("\n")
    middle.insert(5, "The revised plan was adopted.")
    assert not mentions_meta_words("\n".join(middle), EN_META)
    # blank lines count as lines: the third line is not an edge line here ...
    assert not mentions_meta_words("Title\n\nThis version is new.\n" + body, EN_META)
    # ... and trailing blank lines push real lines out of the last three
    assert not mentions_meta_words(body + "\nA paragraph ends.\n\n\n", EN_META)
    assert check_response(body + "\nA paragraph ends.\n\n\n", EN_META) == "meta_words"  # right-stripped first


def test_chinese_text_has_no_draft_word_check():
    text = "这是修改后的 revised version 文章。\n内容很好。"
    assert check_response(text, EN_META) is None
    assert check_response("Here is the revised text.\nIt is good.", EN_META) == "meta_words"


def test_check_response_reasons():
    assert check_response("") == "empty" and check_response("  \n") == "empty"
    assert check_response("A sentence that stops") == "unfinished"
    assert check_response("a b c d e f g h i j k a b c d e f g h i j k.") == "repetition"
    assert check_response("Here is the revised text.\nIt is good.", EN_META) == "meta_words"
    assert check_response("A fine answer.\n\nWith two parts.", EN_META) is None
    assert check_response("A fine answer.\n\nWith two paragraphs.", EN_META) == "meta_words"
    assert check_response("一段很好的中文回答。\n\n第二段。") is None


def test_keep_probability_edges():
    n = 100
    assert keep_probability(0, n) == 0.0  # the shortest: r = 1
    assert keep_probability(n - 1, n) == pytest.approx(1 - 2 * 0.01 ** 3)  # the longest
    probs = [keep_probability(i, n) for i in range(n)]
    assert probs == sorted(probs)
    assert keep_probability(20, 100) == 0.0 and keep_probability(21, 100) > 0  # 2 r^3 < 1 from r < 0.7937


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=5, max_size=200), st.integers())
def test_drop_short_always_drops_the_shortest(lengths, seed):
    items = list(enumerate(lengths))
    kept = drop_short(items, lambda it: it[1], random.Random(seed))
    assert all(k[1] > min(lengths) for k in kept)  # every item of the shortest length: r = 1, never kept
    assert all(k in items for k in kept) and len(set(kept)) == len(kept)
    assert kept == [it for it in items if it in kept]  # order kept


def test_drop_short_equal_lengths_share_the_first_position():
    # all the same length: every item is at position 0, r = 1, so none is kept (as the method does)
    assert drop_short(["abc"] * 50, len, random.Random(0)) == []
    # two lengths, half each: the longer half sits at position n/2, r = 0.5, kept with probability 0.75
    items = ["a"] * 4000 + ["bb"] * 4000
    kept = drop_short(items, len, random.Random(1))
    assert "a" not in kept and 0.72 < len(kept) / 4000 < 0.78


def test_drop_short_keep_share_matches_the_formula():
    n, trials = 50, 400
    hits = [0] * n
    items = list(range(n))  # already in ascending length order, all distinct
    rng = random.Random(0)
    for _ in range(trials):
        for i in drop_short(items, lambda x: x, rng):
            hits[i] += 1
    for index in (0, 10, 25, 40, 49):
        assert abs(hits[index] / trials - keep_probability(index, n)) < 0.08
    expected_share = sum(keep_probability(i, n) for i in range(n)) / n  # about 0.6
    assert abs(sum(hits) / (n * trials) - expected_share) < 0.02
    kept_mean = statistics.mean(i for i in range(n) for _ in range(hits[i]))
    assert kept_mean > statistics.mean(items) + 8  # the kept ones are the longer ones


def test_split_blocks():
    assert split_blocks("A.\n\nB.\n\nC.\n\nD.") == ["A.", "B.", "C.", "D."]
    # two blank-line blocks or fewer: single newlines, nothing stripped
    assert split_blocks("Title\nline one\nline two\n\nlast") == ["Title", "line one", "line two", "", "last"]
    assert split_blocks("one paragraph") == ["one paragraph"]
    assert split_blocks(" A.\n\n\n B. \n\nC.") == [" A.", "\n B. ", "C."]


@given(st.text(alphabet="ab .\n", max_size=80))
def test_split_blocks_joins_back_to_the_text(text):
    blocks = split_blocks(text)
    assert "\n\n".join(blocks) == text or "\n".join(blocks) == text


# --- certain_rejection: when the worker may end a request early ---------------------------------------------------

LOOP = "the tide came in and the tide went out again " * 3  # repeats a 10-gram
PLAIN = " ".join(f"word{i}" for i in range(200)) + " "  # 200 distinct words, 1,290 visible characters
BOUNDS = TokenBounds(ideographs=2, visible=80)  # the default model's tokenizer's


def test_a_settled_english_loop_is_certain_to_be_rejected():
    assert certain_rejection(PLAIN + LOOP, 10, BOUNDS) == "repetition"
    assert check_response(PLAIN + LOOP + "And so it ended.") == "repetition"


def test_no_verdict_while_the_rest_could_make_the_text_chinese():
    # 400 tokens could add 800 ideographs: more than a fifth of the text, where the 10-gram rule no longer applies.
    assert certain_rejection(PLAIN + LOOP, 400, BOUNDS) is None
    flipped = PLAIN + LOOP + "".join(chr(0x4E00 + i) for i in range(800)) + "。"
    assert is_cjk(flipped) and check_response(flipped) is None  # such an ending would pass: no verdict was right


def test_the_last_word_and_the_held_back_characters_may_still_change():
    ten = "one two three four five six seven eight nine ten"
    assert certain_rejection(PLAIN + ten + " " + ten, 0, BOUNDS) is None  # "ten" may become "tenth"
    assert check_response(PLAIN + ten + " " + ten + "th.") is None
    assert certain_rejection(PLAIN + ten + " " + ten + " ", 0, BOUNDS) == "repetition"
    # a stop string that completes later may cut the last characters: "ten " minus 4 is "... nine"
    assert certain_rejection(PLAIN + ten + " " + ten + " ", 0, BOUNDS, held_back=4) is None
    assert certain_rejection(PLAIN + ten + " " + ten + " and so", 0, BOUNDS, held_back=4) == "repetition"


def test_draft_words_count_in_the_first_two_lines_only():
    head = "Here is the revised version of the story.\n"
    assert certain_rejection(head + PLAIN, 10, BOUNDS, meta_words=EN_META) == "meta_words"
    assert certain_rejection(head + PLAIN, 10, BOUNDS) is None  # no draft words asked for
    assert certain_rejection("Title\n\n" + head + PLAIN, 10, BOUNDS, meta_words=EN_META) is None  # line 3
    assert check_response("Title\n\n" + head + PLAIN + "\n\nMore.\n\nThe end.", EN_META) is None


def test_a_settled_chinese_loop_is_certain_to_be_rejected():
    loop = "潮水涨了又退，退了又涨，" * 3
    text = "港口在清晨醒来，渔民们检查渔网。" * 10 + loop
    assert certain_rejection(text, 5, BOUNDS) == "repetition"
    assert check_response(text + "完。") == "repetition"
    assert certain_rejection(text, 100, BOUNDS) is None  # 100 tokens of 80 characters could make it English


def test_reason_of_early_end_names_the_settled_reason():
    assert reason_of_early_end(PLAIN + LOOP) == "repetition"  # not "unfinished", though it ends mid-sentence
    assert reason_of_early_end("A revised draft\n" + PLAIN, EN_META) == "meta_words"


TOKENS = ["the ", "tide ", "came ", "in ", "out ", "and ", "again", " ", "\n", "\n\n", ".", "-", "你", "潮水", "。",
          "revised ", "version"]
TOKEN_BOUNDS = TokenBounds(ideographs=2, visible=max(len(t.strip()) for t in TOKENS))
HELD_BACK = 4


@settings(max_examples=400, deadline=None)
@given(loop=st.lists(st.sampled_from(TOKENS), min_size=10, max_size=20), times=st.integers(1, 3),
       before=st.lists(st.sampled_from(TOKENS), max_size=120), after=st.lists(st.sampled_from(TOKENS), max_size=40),
       left=st.integers(0, 40), cut=st.integers(0, HELD_BACK), data=st.data())
def test_a_verdict_holds_for_every_ending_the_bounds_allow(loop, times, before, after, left, cut, data):
    """Property: whenever certain_rejection gives a reason, the response check rejects every ending the request can
    still produce: up to `left` more tokens, or the text cut by at most HELD_BACK characters (a stop string)."""
    text = "".join(before + loop * times + after)
    reason = certain_rejection(text, left, TOKEN_BOUNDS, HELD_BACK, EN_META)
    if reason is None:
        return
    more = "".join(data.draw(st.lists(st.sampled_from(TOKENS), max_size=left)))
    # the endings that try hardest to pass: as many distinct ideographs as the tokens left may add (towards Chinese,
    # where English loops and draft words no longer count), or as many distinct visible ASCII characters (away)
    ideographs = "".join(chr(0x4E00 + i) for i in range(left * TOKEN_BOUNDS.ideographs)) + "。"
    words = " ".join(f"w{i}" for i in range(left * TOKEN_BOUNDS.visible))[: max(0, left * TOKEN_BOUNDS.visible - 1)]
    ascii_run = " " + " ".join(words.split()[:-1]) + "."
    for ending in (text + more, text[: len(text) - cut], text + more + "。", text + more + ".", text + ideographs,
                   text[: len(text) - cut] + ideographs, text + ascii_run):
        assert check_response(ending, EN_META) is not None, (reason, ending)


def test_certain_rejection_agrees_with_the_check_on_the_models_own_completions():
    """bench/reject_early.py's corpus: step2 completions the default model wrote (round 1 on the fixed initial
    responses, cpu-demo's cap), with the engine's text after every step. A verdict at any step must fall on a
    round the check rejects; most looping completions get one, long before their end."""
    cases = jsonl_rows(ROOT / "tests" / "data" / "reject_early_corpus.jsonl")
    verdicts = 0
    for case in cases:
        final = case["final"]
        for tokens, length in case["steps"]:
            if tokens % 16:
                continue
            verdict = certain_rejection(case["prefix"] + final[:length], case["cap"] - tokens, BOUNDS, HELD_BACK,
                                        EN_META)
            if verdict:
                assert check_response(case["prefix"] + final, EN_META) is not None
                verdicts += 1
                break
    assert len(cases) >= 40 and verdicts >= 5
