"""LongWriter's tools beside ours: LongBench-Write's word count and S_q (with a fake judge: its parsing and its bad
verdicts), and the side-by-side report of Self-Lengthen and AgentWrite from fixtures."""
import json
import os

import pytest

from conftest import ROOT, jsonl_rows
from fake_endpoint import FakeEndpoint
from self_lengthen.evaluation import longbench_length_score, longwriter_words
from self_lengthen.judge import parse_scores
from self_lengthen.stages.runner import save_dataset
from test_eval import run_eval

SIX = ("relevance", "accuracy", "coherence", "clarity", "breadth and depth", "reading experience")


def test_words_are_counted_as_longbench_write_counts_them():
    assert longwriter_words("Don't stop: 2024 was great!") == 5  # don, t, stop, was, great; no numbers
    assert longwriter_words("我们今天很好，OK。") == 7               # 6 ideographs (no punctuation) + OK
    assert longwriter_words("") == 0


def test_a_verdict_is_read_leniently_but_must_score_every_dimension_in_range():
    verdict = {"Relevance": 7, "accuracy": "8", "COHERENCE": 6, "clarity": 7, "breadth_and_depth": 5,
               "reading-experience": 6}
    assert parse_scores("Here you go:\n```json\n" + json.dumps(verdict) + "\n```", SIX, 0, 10)["breadth and depth"] == 5
    assert parse_scores(json.dumps(verdict).replace('"', "'"), SIX, 0, 10)["accuracy"] == 8
    assert parse_scores(json.dumps({**verdict, "clarity": 11}), SIX, 0, 10) is None
    assert parse_scores(json.dumps({"relevance": 7}), SIX, 0, 10) is None
    assert parse_scores("no verdict at all", SIX, 0, 10) is None


def test_a_judge_that_copies_the_prompts_example_verdict_has_not_judged():
    import string

    from self_lengthen.judge import verdict_parser

    prompt = (ROOT / "eval" / "longbench_write_quality.md").read_text()
    example = {"relevance": 7, "accuracy": 8, "coherence": 6, "clarity": 7, "breadth and depth": 5,
               "reading experience": 6}
    assert json.dumps(example) in prompt
    parse = verdict_parser(prompt, SIX, 0, 10)
    assert parse("```json\n" + json.dumps(example) + "\n```") is None
    assert parse(json.dumps({**example, "clarity": 3}))["clarity"] == 3
    # as the 135M model answers: the example with `coherence` left out
    assert parse(json.dumps({k: v for k, v in example.items() if k != "coherence"})) is None
    assert string.Template(prompt).substitute(prompt="p", response="r").count(json.dumps(example)) == 1


def test_s_q_and_s_l_per_band_with_a_judge_that_sometimes_cannot_be_read(tmp_path):
    rows = [{"prompt": "short piece", "length": 300, "response": " ".join(["word"] * 300)},
            {"prompt": "long piece", "length": 3000, "response": " ".join(["word"] * 1500)},
            {"prompt": "garbled", "length": 800, "response": "x"}]
    answered = tmp_path / "answered.jsonl"
    answered.write_text("\n".join(json.dumps(r) for r in rows))
    good = {"short piece": 8, "long piece": 6}

    def judge(payload):
        prompt = payload["messages"][0]["content"]
        name = next((k for k in good if f"Request:\n{k}" in prompt), None)
        if name is None:
            return "I cannot grade this."  # never readable: counted as unjudged after --tries
        return json.dumps({d: good[name] for d in SIX})

    with FakeEndpoint(text=judge, delay=0) as fake:
        proc = run_eval("longbench_write_quality.py", answered, "--judge_base_url", fake.base_url, "--judge_model",
                        "judge", "--tries", "2", "--json")
        assert proc.returncode == 0, proc.stderr
        assert fake.requests == 2 + 2  # one each for the readable verdicts, two for the unreadable one
    result = json.loads(proc.stdout)
    assert result["judged"] == 2 and result["unjudged"] == 1 and result["s_q"] == 70.0
    assert result["per_dimension"]["reading experience"] == 7.0
    bands = result["bands"]
    assert bands["0-500"] == {"rows": 1, "s_l": 100.0, "s_q": 80.0}
    assert bands["2000-4000"] == {"rows": 1, "s_l": 50.0, "s_q": 60.0}
    assert bands["500-2000"]["s_q"] is None  # its only row was never judged
    expected_s_l = (100 + 50 + longbench_length_score(800, 1)) / 3
    assert bands["overall"]["s_l"] == pytest.approx(expected_s_l, abs=0.05)


def test_longbench_write_scoring_needs_answers_and_says_so(tmp_path):
    sample = ROOT / "eval" / "data" / "longbench_write_sample.jsonl"
    rows = jsonl_rows(sample)
    assert len(rows) >= 12 and {r["lang"] for r in rows} == {"en", "zh"}
    assert {min(r["length"] for r in rows) < 500, max(r["length"] for r in rows) > 4000} == {True}
    proc = run_eval("longbench_write_quality.py", sample, "--judge_model", "none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "line 1 has no 'response' text" in proc.stderr


def _dataset(path, rows, columns):
    save_dataset(rows, columns, path)


def test_the_method_comparison_report_renders_from_fixtures(tmp_path):
    it = tmp_path / "results" / "iter_1"
    prompts = ["task a", "task b"]
    _dataset(it / "initial_responses", [{"prompt": p, "initial_response": "one two three"} for p in prompts],
             ["prompt", "initial_response"])
    _dataset(it / "extended_responses", [{"prompt": "task a", "initial_response": "x",
                                          "extended_response": " ".join(f"w{i}" for i in range(100))}],
             ["prompt", "initial_response", "extended_response"])
    repeated = " ".join(["the same phrase again and again and again"] * 10)
    _dataset(it / "agentwrite_responses",
             [{"prompt": "task a", "plan": "1. x (10 words)\n2. y (10 words)", "sections": 2,
               "agentwrite_response": " ".join(f"v{i}" for i in range(300))},
              {"prompt": "task b", "plan": "1. x (10 words)\n2. y (10 words)", "sections": 2,
               "agentwrite_response": repeated}],
             ["prompt", "plan", "sections", "agentwrite_response"])
    summaries = {"initial_responses": {"items": 4, "tokens_generated": 100, "reject_reasons": {"unfinished": 3}},
                 "extended_responses": {"items": 4, "tokens_generated": 200, "reject_reasons": {"not_longer": 2}},
                 "agentwrite_responses": {"items": 2, "tokens_generated": 500, "reject_reasons": {"plan_unparseable": 1}}}
    for name, summary in summaries.items():
        (it / f"{name}.summary.json").write_text(json.dumps(summary))
    proc = run_eval("compare_methods.py", it)
    assert proc.returncode == 0, proc.stderr
    report = (it / "methods.md").read_text()
    # Self-Lengthen: 1 kept of 4 extensions, 300 tokens for 100 words; AgentWrite: 2 kept (one repeats itself),
    # 500 tokens for 380 words
    assert "| self-lengthen | 1 | 1 | 100 | 100 | 300 | 3.0 | 75.0 | 0.0 |" in report
    assert "| agentwrite | 2 | 2 | 190 | 190.0 | 500 | 1.32 | 0.0 | 50.0 |" in report
    assert "- self-lengthen: unfinished 3, not_longer 2" in report and "plan_unparseable 1" in report
    assert (it / "methods.png").read_bytes()[:4] == b"\x89PNG"
    missing = run_eval("compare_methods.py", tmp_path / "results" / "iter_2")
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_generate_answers_longbench_write_rows_by_their_prompt(tmp_path):
    src = tmp_path / "lbw.jsonl"
    src.write_text(json.dumps({"prompt": "Write about rain.", "length": 300}) + "\n")
    with FakeEndpoint(text="Rain falls softly.", delay=0) as fake:
        proc = run_eval("generate.py", src, "--base_url", fake.base_url, "--output", tmp_path / "out.jsonl")
        assert proc.returncode == 0, proc.stderr
        assert fake.payloads[0]["messages"][-1]["content"] == "Write about rain."
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["response"] == "Rain falls softly." and row["length"] == 300
    src.write_text(json.dumps({"text": "no request"}) + "\n")
    bad = run_eval("generate.py", src, "--base_url", "http://127.0.0.1:1/v1", "--output", tmp_path / "o2.jsonl")
    assert bad.returncode == 2 and "line 1 has no 'query' or 'prompt' text" in bad.stderr


def test_the_ruler_finds_the_longest_length_followed_and_marks_capped_answers(tmp_path):
    """A fake model that writes what is asked up to 2,000 words and is cut beyond: it follows 2,000, not 5,000."""
    import re

    def asked(payload):
        return int(re.search(r"(\d+)", payload["messages"][-1]["content"]).group(1))

    def answer(payload):
        n = min(asked(payload), 2000)
        return " ".join(["word"] * n) if "-word" in payload["messages"][-1]["content"] else "字" * n

    with FakeEndpoint(text=answer, delay=0, models=("base", "gen_sft"),
                      finish_reason=lambda payload: "length" if asked(payload) > 2000 else "stop") as fake:
        proc = run_eval("longwrite_ruler.py", "--models", "base,gen_sft", "--lengths", "1000,2000,5000",
                        "--count", "2", "--outdir", tmp_path / "ruler", "--base_url", fake.base_url)
        assert proc.returncode == 0, proc.stderr
        assert fake.requests == 2 * 2 * 3  # 2 models x (1 English + 1 Chinese instruction) x 3 lengths
        assert {p["messages"][-1]["content"].split("-word")[0] for p in fake.payloads if "-word" in
                p["messages"][-1]["content"]} == {"Write a 1000", "Write a 2000", "Write a 5000"}
    report = (tmp_path / "ruler" / "ruler.md").read_text()
    assert "| base | 2000 | 2000.0 | 100.0 | 0/2 |" in report
    assert f"| base | 5000 | 2000.0 | {longbench_length_score(5000, 2000):.1f} | 2/2 |" in report
    assert "- gen_sft: longest length followed (S_l >= 80): 2000" in report
    assert (tmp_path / "ruler" / "ruler.png").read_bytes()[:4] == b"\x89PNG"
    bad = run_eval("longwrite_ruler.py", "--lengths", "1000,lots", "--base_url", fake.base_url)
    assert bad.returncode == 2 and "--lengths" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ruler_and_s_q_on_the_served_model_with_small_caps(served, tmp_path):
    """The real model at a 64-token cap: an answer marked capped used all 64 tokens (the model may end a
    short one itself), the report counts those; it judges its own answers for S_q, and every row ends
    judged or counted unjudged."""
    proc = run_eval("longwrite_ruler.py", "--models", "base", "--lengths", "1000,2000", "--count", "2",
                    "--max_tokens", "64", "--outdir", tmp_path / "ruler", "--base_url", served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = jsonl_rows(tmp_path / "ruler" / "ruler.base.jsonl")
    assert len(answers) == 4 and all(a["tokens"] == 64 if a["capped"] else a["tokens"] <= 64 for a in answers)
    assert any(a["capped"] for a in answers) and all(a["response"].strip() for a in answers if a["capped"])
    for n in (1000, 2000):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"| base | {n} |"))
        assert row.endswith(f"| {sum(a['capped'] for a in answers if a['length'] == n)}/2 |")
    proc = run_eval("longbench_write_quality.py", tmp_path / "ruler" / "ruler.base.jsonl", "--tries", "2", "--json",
                    env={**os.environ, "SELF_LENGTHEN_BASE_URL": served.base_url})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["judged"] + result["unjudged"] == 4 and result["bands"]["overall"]["rows"] == 4


def test_the_comparison_scores_quality_with_a_judge_and_counts_what_it_judged(tmp_path):
    it = tmp_path / "iter_1"
    save_dataset([{"prompt": "p", "initial_response": "a"}], ["prompt", "initial_response"], it / "initial_responses")
    save_dataset([{"prompt": "p", "initial_response": "a", "extended_response": "one two three four"}],
                 ["prompt", "initial_response", "extended_response"], it / "extended_responses")
    save_dataset([], ["prompt", "plan", "sections", "agentwrite_response"], it / "agentwrite_responses",
                 {"sections": "int64"})
    for name in ("initial_responses", "extended_responses", "agentwrite_responses"):
        (it / f"{name}.summary.json").write_text(json.dumps({"items": 1, "tokens_generated": 10}))
    with FakeEndpoint(text=json.dumps({d: 6 for d in SIX}), delay=0) as fake:
        proc = run_eval("compare_methods.py", it, "--judge_model", "judge", "--judge_base_url", fake.base_url)
    assert proc.returncode == 0, proc.stderr
    report = (it / "methods.md").read_text()
    assert "| 60.0 (1 of 1 judged) |" in report and "| - (0 of 0 judged) |" in report
