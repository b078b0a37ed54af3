"""eval/: length-following scores, S_l, length control, generate.py (real, with a kill) and quality_eval.py."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT, SERVE_PY, jsonl_rows, kill_9_after_lines, one_error_line
from fake_endpoint import FakeEndpoint
from self_lengthen.evaluation import band, int_to_zh, length_score, longbench_length_score, parse_numbers, zh_to_int
from self_lengthen.text import count_words

sys.path.insert(0, str(ROOT / "eval"))
import add_length_control as alc  # noqa: E402
import quality_eval  # noqa: E402

SAMPLE = ROOT / "eval" / "data" / "longen_sample.jsonl"


def run_eval(script, *args, **kw):
    return subprocess.run([str(SERVE_PY), str(ROOT / "eval" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=kw.pop("timeout", 600), **kw)


def words(n: int, lang: str = "en") -> str:
    return ("字" * n) if lang == "zh" else " ".join(["w"] * n)


# --- scoring --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,constraint,lo,hi", [
    ("about", "about 1000 words", 800, 1200), ("range", "between 500 and 900 words", 500, 900),
    ("above", "at least 1000 words", 1000, 1500), ("below", "no more than 1000 words", 500, 1000),
    ("about", "两千字左右", 1600, 2400), ("range", "一千到一千五百字", 1000, 1500),
    ("above", "不少于800字", 800, 1200), ("below", "不超过1,000字", 500, 1000),
])
def test_bands(kind, constraint, lo, hi):
    assert band(kind, constraint) == (lo, hi)


def test_band_edges_slopes_and_floor():
    lo, hi = 800, 1200
    assert length_score(800, lo, hi) == 1.0 and length_score(1200, lo, hi) == 1.0
    assert length_score(600, lo, hi) == pytest.approx(2 * 600 / 800 - 1)  # 0.5
    assert length_score(400, lo, hi) == 0.0  # 2*0.5-1 = 0
    assert length_score(100, lo, hi) == 0.0  # floor
    assert length_score(1500, lo, hi) == pytest.approx(3 - 2 * 1500 / 1200)  # 0.5
    assert length_score(1800, lo, hi) == 0.0 and length_score(5000, lo, hi) == 0.0


@given(st.floats(min_value=0, max_value=1e5), st.floats(min_value=1, max_value=1e4), st.floats(min_value=1, max_value=3))
def test_score_is_in_unit_interval_and_one_inside(length, lo, width):
    hi = lo * width
    s = length_score(length, lo, hi)
    assert 0.0 <= s <= 1.0
    if lo <= length <= hi:
        assert s == 1.0


def test_per_type_and_overall_averaging(tmp_path):
    rows = [
        {"type": "about", "constraint": "about 100 words", "response": words(100)},  # 1
        {"type": "about", "constraint": "about 100 words", "response": words(60)},  # 2*60/80-1 = 0.5
        {"type": "below", "constraint": "no more than 100 words", "response": words(130)},  # 3-2.6 = 0.4
        {"type": "above", "constraint": "at least 10 words", "response": words(12)},  # 1
    ]
    path = tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    proc = run_eval("length_following_eval.py", path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"Overall: {(1 + 0.5 + 0.4 + 1) / 4:.4f}"
    assert "about: 0.7500 (2 rows)" in lines and "below: 0.4000 (1 rows)" in lines
    out = json.loads(run_eval("length_following_eval.py", path, "--json").stdout)
    assert out["per_type"] == {"about": 0.75, "above": 1.0, "below": pytest.approx(0.4)}
    assert out["overall"] == pytest.approx(0.725)


@pytest.mark.parametrize("row,needle", [
    ({"type": "about", "constraint": "about 100 words"}, "line 2 has no 'response'"),
    ({"type": "longish", "constraint": "about 100 words", "response": "x"}, "line 2: unknown type 'longish'"),
    ({"type": "range", "constraint": "between 100 words", "response": "x"}, "line 2: range constraint"),
    ({"type": "about", "constraint": "quite long", "response": "x"}, "line 2: no number"),
])
def test_bad_rows_get_one_line_naming_the_line(tmp_path, row, needle):
    good = {"type": "about", "constraint": "about 100 words", "response": "fine"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    proc = run_eval("length_following_eval.py", path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr


def test_missing_file_and_invalid_json(tmp_path):
    proc = run_eval("length_following_eval.py", tmp_path / "none.jsonl")
    assert proc.returncode != 0 and "no such file" in proc.stderr
    proc = run_eval("length_following_eval.py", tmp_path)
    assert f"error: {tmp_path}: is a directory; give a JSONL file" in proc.stderr
    (tmp_path / "broken.jsonl").write_text('{"type": "about"}\n{nope\n')
    proc = run_eval("length_following_eval.py", tmp_path / "broken.jsonl")
    assert proc.returncode != 0 and "line 2 is not valid JSON" in proc.stderr


def test_chinese_numerals_round_trip():
    for n in (10, 300, 1000, 2000, 3500, 8000, 12000, 20000):
        assert zh_to_int(int_to_zh(n)) == n
    assert int_to_zh(2000) == "两千" and parse_numbers("写一篇两千字左右的文章") == [2000]


# --- S_l ------------------------------------------------------------------------------------------------------------

def test_longbench_length_score_cases():
    assert longbench_length_score(1000, 1000) == 100
    assert longbench_length_score(1000, 2000) == pytest.approx(100 * (1 - 1 / 3))
    assert longbench_length_score(1000, 4000) == 0
    assert longbench_length_score(1000, 500) == pytest.approx(50)
    assert longbench_length_score(1000, 250) == 0
    assert longbench_length_score(1000, 0) == 0


@given(st.floats(min_value=1, max_value=1e5), st.floats(min_value=0, max_value=1e6))
def test_longbench_score_never_negative(x, y):
    assert 0 <= longbench_length_score(x, y) <= 100


def test_longbench_cli_with_plot(tmp_path):
    path = tmp_path / "lb.jsonl"
    path.write_text("\n".join(json.dumps({"length": x, "response_length": y}) for x, y in
                              [(1000, 1000), (1000, 2000), (500, 250), (3000, 2900)]))
    proc = run_eval("longbench_write_length.py", path, "--plot", tmp_path / "s.png", "--json")
    assert proc.returncode == 0, proc.stderr
    expected = (100 + 100 * 2 / 3 + 50 + longbench_length_score(3000, 2900)) / 4
    assert json.loads(proc.stdout)["S_l"] == pytest.approx(expected)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


# --- length control -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_above_means_at_least_and_below_means_at_most(lang):
    rng = random.Random(0)
    above, nums = alc.make_constraint("above", 3400, lang, rng, 2000, 8000)
    assert nums == (3000,) and band("above", above) == (3000, 4500)
    below, nums = alc.make_constraint("below", 3400, lang, rng, 2000, 8000)
    assert nums == (4000,) and band("below", below) == (2000, 4000)
    if lang == "zh":
        assert "不少于" in above and "不超过" in below
    else:
        assert "at least" in above and "no more than" in below


def test_proportions_round_numbers_and_determinism():
    rng = random.Random(5)
    rows = [{"query": "Write about rivers." if i % 2 else "写一篇关于河流的文章。",
             "response": words(rng.randint(2000, 7999), "en" if i % 2 else "zh")} for i in range(2000)]
    planned = alc.build(rows, seed=3, lo=2000, hi=8000)
    assert planned == alc.build(rows, seed=3, lo=2000, hi=8000)
    assert planned != alc.build(rows, seed=4, lo=2000, hi=8000)
    share = Counter(p["type"] for p in planned)
    for kind, target in alc.PROPORTIONS.items():
        assert abs(share[kind] / len(planned) - target) < 0.04
    for p in planned:
        assert all(n % 1000 == 0 and 2000 <= n <= 8000 for n in p["numbers"])
        assert length_score(p["words"], *band(p["type"], p["constraint"])) == 1.0
    zh = [p for p in planned if p["lang"] == "zh"]
    chinese_numerals = sum(not any(c.isdigit() for c in p["constraint"]) for p in zh)
    assert 0.4 < chinese_numerals / len(zh) < 0.6
    assert any(2000 in p["numbers"] or 4000 in p["numbers"] for p in planned)


def test_rows_outside_the_bounds_are_dropped():
    rows = [{"query": "q", "response": words(n)} for n in (1999, 2000, 7999, 8000)]
    assert [p["words"] for p in alc.build(rows, seed=0, lo=2000, hi=8000)] == [2000, 7999]


def test_add_length_control_cli_rewrites_through_the_endpoint(tmp_path):
    src = tmp_path / "long.jsonl"
    src.write_text("\n".join(json.dumps({"query": q, "response": words(n)})
                             for q, n in (("Write about tides.", 2500), ("Write about rivers.", 4200))))

    def rewrite(payload):  # the tides rewrite loses the constraint (template fallback), the rivers one keeps it
        prompt = payload["messages"][0]["content"]
        if "tides" in prompt:
            return "Write about tides, in no particular length."
        return "Rewritten: " + prompt.split("a length of ")[1].split(". Keep")[0]

    with FakeEndpoint(text=rewrite) as fake:
        proc = run_eval("add_length_control.py", src, "--output", tmp_path / "lc.jsonl", "--base_url", fake.base_url)
    assert proc.returncode == 0, proc.stderr
    out = jsonl_rows(tmp_path / "lc.jsonl")
    assert [o["rewritten_by"] for o in out] == ["template", "llm"]
    for o in out:
        assert set(parse_numbers(o["constraint"])) <= set(parse_numbers(o["query"]))


def test_add_length_control_without_the_llm_appends_each_constraint_and_writes_only_its_output(tmp_path):
    """--no_llm asks nothing remote, so it leaves no checkpoint beside the output (it used to)."""
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"query": "Write about tides.", "response": words(2500)}) + "\n")
    proc = run_eval("add_length_control.py", src, "--output", tmp_path / "lc.jsonl", "--no_llm")
    assert proc.returncode == 0, proc.stderr
    [row] = jsonl_rows(tmp_path / "lc.jsonl")
    assert row["rewritten_by"] == "template"
    assert row["query"] == f"Write about tides. The answer should be {row['constraint']}."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lc.jsonl", "long.jsonl"]


def test_add_length_control_killed_mid_run_asks_again_only_for_what_is_missing(tmp_path):
    """kill -9 once a few rewrites are checkpointed: the rerun sends exactly the requests that were not, and the
    output has every row, in the input's order."""
    src = tmp_path / "long.jsonl"
    queries = [f"Write about harbour number {i}." for i in range(12)]
    src.write_text("\n".join(json.dumps({"query": q, "response": words(3000)}) for q in queries))
    out, checkpoint = tmp_path / "lc.jsonl", tmp_path / "lc.jsonl.checkpoint.jsonl"

    def slow_rewrite(payload):
        time.sleep(0.3)
        prompt = payload["messages"][0]["content"]
        return prompt.split("Request: ")[1] + " Give it " + prompt.split("a length of ")[1].split(". Keep")[0] + "."

    with FakeEndpoint(text=slow_rewrite) as fake:
        running = subprocess.Popen([str(SERVE_PY), str(ROOT / "eval" / "add_length_control.py"), str(src), "--output",
                                    str(out), "--base_url", fake.base_url, "--workers", "2"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = kill_9_after_lines(running, checkpoint, 3)
    assert 3 <= done < len(queries) and not out.exists()
    with FakeEndpoint(text=slow_rewrite) as fake:
        proc = run_eval("add_length_control.py", src, "--output", out, "--base_url", fake.base_url, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fake.requests == len(queries) - done
    rows = jsonl_rows(out)
    assert [r["query"].split(" Give it ")[0] for r in rows] == queries
    assert {r["rewritten_by"] for r in rows} == {"llm"}


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    return one_error_line(proc)


def test_bad_output_paths_get_one_line_before_any_request(tmp_path):
    """An output that is a directory, or whose directory is missing, is refused before the work (and its
    requests) starts, not with a traceback after it."""
    a_dir, a_file = tmp_path / "a_dir", tmp_path / "a_file"
    a_dir.mkdir()
    a_file.write_text("x")
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"query": "Write about tides.", "response": words(2500)}) + "\n")
    missing = tmp_path / "no" / "such" / "out.jsonl"
    with FakeEndpoint(text="Write about tides in about 3000 words.") as fake:
        url = ("--base_url", fake.base_url)
        cases = [
            (("add_length_control.py", src, "--output", a_dir, *url), f"--output {a_dir}: is a directory"),
            (("add_length_control.py", src, "--output", missing, *url), f"there is no directory {missing.parent}"),
            (("generate.py", SAMPLE, "--output", missing, *url), f"there is no directory {missing.parent}"),
            (("compare_models.py", SAMPLE, "--outdir", a_file, *url), f"--outdir {a_file}: is a file, not a directory"),
            (("longwrite_ruler.py", "--outdir", a_file / "sub", *url), f"--outdir {a_file / 'sub'}: cannot create it"),
            (("longbench_write_length.py", src, "--plot", a_dir), f"--plot {a_dir}: is a directory"),
        ]
        for args, expected in cases:
            line = error_line(run_eval(*args))
            assert expected in line, line
        assert fake.requests == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file", "long.jsonl"]
    assert list(a_dir.iterdir()) == []


def test_a_dead_or_malformed_endpoint_gets_one_line(tmp_path):
    rows = tmp_path / "answers.jsonl"
    rows.write_text(json.dumps({"query": "Write about tides.", "response": "Tides rise and fall."}) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # closed again: nothing listens there
    line = error_line(run_eval("generate.py", SAMPLE, "--output", tmp_path / "out.jsonl", "--base_url", dead))
    assert f"cannot reach the endpoint at {dead}" in line
    line = error_line(run_eval("quality_eval.py", rows, "--judge_base_url", "judge.example.com/v1"))
    assert "'judge.example.com/v1' is not an http(s) URL" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]


# --- quality_eval with a fake judge ---------------------------------------------------------------------------------

def test_quality_eval_sends_a_hosted_judge_only_openai_fields(tmp_path):
    """A hosted judge (--judge_base_url) rejects top_k and repetition_penalty with a 400: they are not sent there."""
    verdict = json.dumps({d: 7 for d in quality_eval.DIMENSIONS})
    rows = tmp_path / "gen.jsonl"
    rows.write_text(json.dumps({"query": "Write about tides.", "response": "Tides rise and fall."}))
    with FakeEndpoint("strict", text=verdict) as fake:
        proc = run_eval("quality_eval.py", rows, "--judge_base_url", fake.base_url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["judged"] == 1
    assert fake.payloads and all("top_k" not in p and "repetition_penalty" not in p for p in fake.payloads)
    from self_lengthen.client import Client  # our own endpoint still gets the engine's fields

    assert {"top_k", "repetition_penalty"} <= set(Client("http://127.0.0.1:1/v1")._params("base", {}))


def test_quality_eval_handles_and_counts_malformed_verdicts(tmp_path):
    good = '{"relevance": 8, "coherence": 7, "accuracy": 6, "consistency": 7, "clarity": 8, "creativity": 5, "engagement": 6}'
    replies = {
        "first": ["```json\n" + good + "\n```"],
        "second": ["Sure! Here is my verdict: {relevance: 9}", "Scores: " + good.replace('"', "'")],
        "third": ["not json", "{\"relevance\": 11}", "still nothing"],
    }

    def judge(payload):
        prompt = payload["messages"][0]["content"]
        key = next(k for k in replies if f"Request:\n{k}" in prompt)
        return replies[key].pop(0) if len(replies[key]) > 1 else replies[key][0]

    rows = tmp_path / "gen.jsonl"
    rows.write_text("\n".join(json.dumps({"query": q, "response": "text"}) for q in replies))
    with FakeEndpoint(text=judge) as fake:
        proc = run_eval("quality_eval.py", rows, "--judge_base_url", fake.base_url, "--json", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["judged"] == 2 and result["unparseable"] == 1
    assert result["per_dimension"]["relevance"] == 8 and result["overall"] == pytest.approx(47 / 7)
    with FakeEndpoint(text=judge) as fake:  # again: every verdict, the unreadable one too, comes from the checkpoint
        again = run_eval("quality_eval.py", rows, "--judge_base_url", fake.base_url, "--json")
        assert fake.requests == 0
    assert json.loads(again.stdout) == result and "reusing 3 verdicts" in again.stderr


def test_quality_eval_judges_rows_with_the_same_prompt_once(tmp_path):
    verdict = json.dumps({d: 7 for d in quality_eval.DIMENSIONS})
    same = {"query": "Write about tides.", "response": "Tides rise and fall."}
    rows = tmp_path / "gen.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in (same, {"query": "Write about rivers.", "response": "x"}, same)))
    with FakeEndpoint(text=verdict) as fake:
        proc = run_eval("quality_eval.py", rows, "--judge_base_url", fake.base_url, "--json")
        assert fake.requests == 2
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["judged"] == 3


def test_quality_eval_killed_mid_run_asks_the_judge_only_for_what_is_missing(tmp_path):
    verdict = json.dumps({d: 6 for d in quality_eval.DIMENSIONS})

    def slow_judge(payload):
        time.sleep(0.3)
        return verdict

    rows = tmp_path / "gen.jsonl"
    rows.write_text("\n".join(json.dumps({"query": f"Write about harbour {i}.", "response": "text"}) for i in range(10)))
    checkpoint = tmp_path / "gen.jsonl.verdicts.jsonl"
    with FakeEndpoint(text=slow_judge) as fake:
        running = subprocess.Popen([str(SERVE_PY), str(ROOT / "eval" / "quality_eval.py"), str(rows), "--judge_base_url",
                                    fake.base_url, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        done = kill_9_after_lines(running, checkpoint, 3)
    assert 3 <= done < 10
    with FakeEndpoint(text=slow_judge) as fake:
        proc = run_eval("quality_eval.py", rows, "--judge_base_url", fake.base_url, "--json", "--workers", "2")
        assert fake.requests == 10 - done
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["judged"] == 10


def test_parse_verdict_is_lenient_but_checks_range():
    assert quality_eval.parse_verdict('{"Relevance": "7", ' + ", ".join(f'"{d}": 5' for d in quality_eval.DIMENSIONS[1:]) + "}")
    assert quality_eval.parse_verdict("{}") is None and quality_eval.parse_verdict("") is None
    example = '{"relevance": 7, "coherence": 6, "accuracy": 8, "consistency": 7, "clarity": 6, "creativity": 5, "engagement": 6}'
    assert example in quality_eval.PROMPT.template and quality_eval.parse_verdict(example) is None  # copied, not judged


# --- generate.py on the real model, with a kill -9 and a resume -----------------------------------------------------

@pytest.mark.slow
def test_generate_on_the_sample_survives_a_kill(served, tmp_path):
    out = tmp_path / "sample.base.jsonl"
    cmd = [str(SERVE_PY), str(ROOT / "eval" / "generate.py"), str(SAMPLE), "--model", "base", "--output", str(out),
           "--base_url", served.base_url, "--max_tokens", "160", "--workers", "4"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out.with_name(out.name + ".checkpoint.jsonl")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not checkpoint.exists() or len(checkpoint.read_text().splitlines()) < 2):
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert not out.exists()
    done_before = len(checkpoint.read_text().splitlines())
    assert 2 <= done_before
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    rows = jsonl_rows(out)
    sample = jsonl_rows(SAMPLE)
    assert [r["id"] for r in rows] == [s["id"] for s in sample]
    keys = [r["key"] for r in jsonl_rows(checkpoint)]
    assert len(keys) == len(set(keys)) == len(sample)
    for r in rows:
        assert r["response"].strip() and r["response_length"] == count_words(r["response"])
    scored = run_eval("length_following_eval.py", out, "--json")
    assert scored.returncode == 0 and 0 <= json.loads(scored.stdout)["overall"] <= 1


@pytest.mark.slow
def test_compare_models_scores_each_served_model(served, tmp_path):
    """The demo's last step: both models answer the same rows, and the table has one scored line per model."""
    rows = jsonl_rows(SAMPLE)[:3]
    sample = tmp_path / "few.jsonl"
    sample.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_eval("compare_models.py", sample, "--models", "base,gen_sft", "--outdir", tmp_path / "out",
                    "--base_url", served.base_url, "--max_tokens", "60", "--workers", "3", timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| base ") or line.startswith("| gen_sft ")]
    assert len(table) == 2
    for line in table:
        following, s_l, mean_words = (float(x) for x in line.strip("| ").split("|")[1:])
        assert 0 <= following <= 1 and 0 <= s_l <= 100 and mean_words > 0
    for model in ("base", "gen_sft"):
        answered = jsonl_rows(tmp_path / "out" / f"few.{model}.jsonl")
        assert [r["id"] for r in answered] == [r["id"] for r in rows]
