"""AgentWrite: the plan parser, the stage's chain (plan, then sections), its resume after kill -9, and collect_data."""
import json
import re
import subprocess
import time

import pytest

from conftest import ROOT, SERVE_PY, jsonl_rows, kill_9_after_lines, one_error_line
from fake_endpoint import FakeEndpoint
from self_lengthen.stages.agentwrite import parse_plan
from self_lengthen.stages.runner import MARKER
from test_stages import SHORT_PROMPTS, load_rows, step, write_instructions

AGENTWRITE = ROOT / "llama" / "agentwrite.py"
PLAN = "Section 1: the setting (120 words)\nSection 2: the turn (150 words)\nSection 3: the ending (100 words)"


@pytest.mark.parametrize("text, words", [
    (PLAN, [120, 150, 100]),
    ("Paragraph 1 - Main point: history\n- Word count: 500 words\nParagraph 2 - Main point: today\n"
     "- Word count: 700 words", [500, 700]),
    ("Here is my plan:\n1. Intro, about 200 words\n2. Body, 2,000 words\n3) Close", [200, 2000, 1100]),
    ("**1.** Opening (300 words)\n**2.** Details (300 words)", [300, 300]),
    ("第1部分：引言（300字）\n第二部分：正文（800字）", [300, 800]),
])
def test_a_plan_is_parsed_leniently(text, words):
    plan, reason = parse_plan(text)
    assert reason is None and plan.words == words and len(plan.sections) == len(words)


@pytest.mark.parametrize("text, reason", [
    ("I will write a moving essay of about 800 words.", "plan_unparseable"),
    ("1. The opening (300 words)", "plan_unparseable"),           # one section is not a plan
    ("1. The opening\n2. The middle\n3. The end", "plan_no_word_counts"),
    ("\n".join(f"{i}. part (50 words)" for i in range(1, 45)), "plan_too_many_sections"),
])
def test_an_unusable_plan_gets_a_reason(text, reason):
    assert parse_plan(text) == (None, reason)


def test_a_plan_without_word_counts_shares_the_length_the_instruction_asks_for():
    from self_lengthen.stages.agentwrite import asked_length

    plan, reason = parse_plan("1. The opening\n2. The middle\n3. The end", total_words=asked_length(
        "Write a 1500-word essay on tea."))
    assert reason is None and plan.words == [500, 500, 500]
    assert asked_length("写一篇两千字的文章，谈谈茶。") == 2000 and asked_length("Write an essay on tea.") is None


def fake_model(bad_plans: int = 0, delay: float = 0.0):
    """Answers plan requests with PLAN (after `bad_plans` unusable ones per instruction) and section requests with
    a sentence naming the section."""
    seen: dict[str, int] = {}

    def answer(payload):
        time.sleep(delay)
        content = payload["messages"][-1]["content"]
        task = content.split("\n", 1)[0]
        if "Do not write the text yet" in content:
            seen[task] = seen.get(task, 0) + 1
            return "I will just write it." if seen[task] <= bad_plans else PLAN
        number = re.search(r"Now write section (\d+) of the plan", content).group(1)
        return f"This is section {number} of {task[len('Writing task: '):]}"

    return answer


def expected_response(prompt: str) -> str:
    return "\n\n".join(f"This is section {n} of {prompt}" for n in (1, 2, 3))


def test_a_bad_plan_is_asked_again_and_each_section_sees_the_text_so_far(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS[:2])
    with FakeEndpoint(text=fake_model(bad_plans=1), delay=0) as fake:
        proc = step(AGENTWRITE, tmp_path, "--workers", "2", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fake.requests == 2 * (2 + 3)  # per instruction: an unusable plan, a plan, 3 sections
    assert all("stop" not in p and p["model"] == "base" for p in fake.payloads)
    it = tmp_path / "results" / "iter_1"
    rows = {r["prompt"]: r for r in load_rows(it / "agentwrite_responses")}
    assert set(rows) == set(SHORT_PROMPTS[:2])
    for prompt, row in rows.items():
        assert row["agentwrite_response"] == expected_response(prompt) and row["sections"] == 3 and row["plan"] == PLAN
    third = next(p["messages"][-1]["content"] for p in fake.payloads
                 if f"Writing task: {SHORT_PROMPTS[0]}" in p["messages"][-1]["content"]
                 and "Now write section 3 " in p["messages"][-1]["content"])
    assert "This is section 1 of" in third and "This is section 2 of" in third and "(100 words)" in third
    summary = json.loads((it / "agentwrite_responses.summary.json").read_text())
    assert summary["reject_reasons"] == {"plan_unparseable": 2} and summary["rows"] == 2


def test_an_instruction_whose_plans_never_parse_is_exhausted_with_its_reason(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS[:1])
    with FakeEndpoint(text=fake_model(bad_plans=99), delay=0) as fake:
        proc = step(AGENTWRITE, tmp_path, "--max_tries", "2", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fake.requests == 2
    summary = json.loads((tmp_path / "results" / "iter_1" / "agentwrite_responses.summary.json").read_text())
    assert summary["exhausted"] == 1 and summary["rows"] == 0 and summary["reject_reasons"] == {"plan_unparseable": 2}


def test_kill_9_mid_chain_then_rerun_redoes_no_finished_request(tmp_path):
    """Killed once a few requests are journaled: the rerun sends exactly the requests that were not journaled."""
    write_instructions(tmp_path, SHORT_PROMPTS)
    journal = tmp_path / "results" / "iter_1" / "agentwrite_responses.journal.jsonl"
    needed = len(SHORT_PROMPTS) * 4  # a plan and 3 sections each
    with FakeEndpoint(text=fake_model(delay=0.2), delay=0) as fake:
        running = step(AGENTWRITE, tmp_path, "--workers", "2", base_url=fake.base_url, wait=False)
        journaled = kill_9_after_lines(running, journal, 5)
        assert 5 <= journaled < needed
    with FakeEndpoint(text=fake_model(), delay=0) as fake:
        proc = step(AGENTWRITE, tmp_path, "--workers", "2", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert fake.requests == needed - journaled
    rows = load_rows(tmp_path / "results" / "iter_1" / "agentwrite_responses")
    assert sorted(rows["agentwrite_response"]) == sorted(expected_response(p) for p in SHORT_PROMPTS)


def test_instructions_from_a_jsonl_and_bad_input_get_one_line(tmp_path):
    src = tmp_path / "tasks.jsonl"
    src.write_text(json.dumps({"instruction": SHORT_PROMPTS[0]}) + "\n" + json.dumps({"query": SHORT_PROMPTS[1]}) + "\n")
    with FakeEndpoint(text=fake_model(), delay=0) as fake:
        proc = step(AGENTWRITE, tmp_path, "--instructions", str(src), "--count", "1", base_url=fake.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [r["prompt"] for r in load_rows(tmp_path / "results" / "iter_1" / "agentwrite_responses")] == \
            SHORT_PROMPTS[:1]
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"text": "no instruction field"}) + "\n")
        line = one_error_line(step(AGENTWRITE, tmp_path / "b", "--instructions", str(bad), base_url=fake.base_url))
        assert "line 1 has no 'prompt', 'instruction' or 'query'" in line
        line = one_error_line(step(AGENTWRITE, tmp_path / "c", base_url=fake.base_url))
        assert "run step0" in line and "--instructions" in line


def test_collect_data_gathers_agentwrite_rows_marked_with_their_method(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS[:2])
    with FakeEndpoint(text=fake_model(), delay=0) as fake:
        assert step(AGENTWRITE, tmp_path, base_url=fake.base_url).returncode == 0
    out = tmp_path / "long.jsonl"
    proc = subprocess.run([str(SERVE_PY), str(ROOT / "collect_data.py"), "--results", str(tmp_path / "results"),
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = jsonl_rows(out)
    assert sorted((r["query"], r["response"], r["method"]) for r in rows) == \
        sorted((p, expected_response(p), "agentwrite") for p in SHORT_PROMPTS[:2])
    assert "2 AgentWrite" in proc.stdout


def test_collect_data_refuses_a_bad_output_before_reading_anything(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS[:1])
    for output, expected in ((tmp_path, "is a directory"), (tmp_path / "no" / "long.jsonl", "there is no directory")):
        proc = subprocess.run([str(SERVE_PY), str(ROOT / "collect_data.py"), "--results", str(tmp_path / "results"),
                               "--output", str(output)], capture_output=True, text=True, timeout=300)
        assert expected in one_error_line(proc)
    assert not (tmp_path / "no").exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_agentwrite_on_the_served_model_survives_kill_9(served, tmp_path):
    """The real model plans and writes (small sizes); killed with -9 once requests are journaled, then rerun: the
    stage completes, every journaled request stays done (the rerun's requests are the ones not journaled)."""
    write_instructions(tmp_path, SHORT_PROMPTS[:3])
    args = ("--max_tokens", "160", "--workers", "3", "--max_tries", "2")
    journal = tmp_path / "results" / "iter_1" / "agentwrite_responses.journal.jsonl"
    running = step(AGENTWRITE, tmp_path, *args, base_url=served.base_url, wait=False)
    kill_9_after_lines(running, journal, 2, timeout=600)
    before = jsonl_rows(journal)
    proc = step(AGENTWRITE, tmp_path, *args, base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    it = tmp_path / "results" / "iter_1"
    assert (it / "agentwrite_responses" / MARKER).is_file()
    after = jsonl_rows(journal)
    assert after[:len(before)] == before  # the journal only grew
    # Every chain resumed from its last journaled state: a later record of a key never has fewer sections written
    # or fewer plan tries than an earlier one.
    last: dict[str, dict] = {}
    for record in after:
        prev = last.get(record["key"])
        if prev:
            assert len(record["written"]) >= len(prev["written"]) and record["try"] >= prev["try"]
        last[record["key"]] = record
    summary = json.loads((it / "agentwrite_responses.summary.json").read_text())
    assert summary["accepted"] + summary["exhausted"] == 3
    for row in load_rows(it / "agentwrite_responses"):
        assert row["sections"] >= 2 and row["agentwrite_response"].count("\n\n") >= row["sections"] - 1


def test_a_chain_whose_text_fills_the_context_ends_unkept(tmp_path):
    """Sections of 3,000 words: the text so far soon leaves no room in the default model's 8,192-token context."""
    write_instructions(tmp_path, SHORT_PROMPTS[:1])

    def answer(payload):
        content = payload["messages"][-1]["content"]
        if "Do not write the text yet" in content:
            return "\n".join(f"Section {i}: part {i} (3000 words)" for i in range(1, 6))
        assert payload["max_tokens"] <= 8192  # never asks for more than the context leaves
        return " ".join(["word"] * 3000)

    with FakeEndpoint(text=answer, delay=0) as fake:
        proc = step(AGENTWRITE, tmp_path, "--max_tokens", "4000", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 2 <= fake.requests < 6  # the plan and the sections that fit
    summary = json.loads((tmp_path / "results" / "iter_1" / "agentwrite_responses.summary.json").read_text())
    assert summary["reject_reasons"] == {"context_full": 1} and summary["rows"] == 0
