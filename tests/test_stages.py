"""The synthesis stages as users run them: the flavours' step scripts, as real processes.

Bad input and fault injection use a fake endpoint; everything else runs against the real served default model.
"""
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, SERVE_PY
from fake_endpoint import FakeEndpoint
from self_lengthen.stages.runner import MARKER, save_dataset

STEP0 = ROOT / "llama" / "step0_self_instruct.py"
STEP1 = ROOT / "llama" / "step1_gen_initial_responses.py"
STEP2 = ROOT / "llama" / "step2_ext_responses.py"
QWEN_STEP0 = ROOT / "qwen" / "step0_self_instruct.py"
SHORT_PROMPTS = [
    "Write three sentences about the moon.",
    "Describe a cup of tea in two sentences.",
    "Give two reasons to learn to swim, in full sentences.",
    "Write a short paragraph about autumn leaves.",
]


def step(script, workdir, *args, base_url, timeout=900, wait=True):
    cmd = [str(SERVE_PY), str(script), "--iter", "1", "--workdir", str(workdir), "--base_url", base_url, *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def write_instructions(workdir: Path, prompts):
    save_dataset([{"prompt": p} for p in prompts], ["prompt"], workdir / "results" / "iter_1" / "instructions")


def load_rows(path: Path):
    from datasets import load_from_disk

    return load_from_disk(str(path))


# --- bad input: one clear line and a non-zero exit ---------------------------------------------------------------

def test_missing_seed_file(tmp_path):
    with FakeEndpoint() as fake:
        line = one_error_line(step(STEP0, tmp_path, "--count", "2", "--seeds", str(tmp_path / "nope.jsonl"),
                                   base_url=fake.base_url))
    assert "nope.jsonl" in line and "no such file" in line


def test_empty_seed_file(tmp_path):
    (tmp_path / "seeds.jsonl").write_text("\n")
    with FakeEndpoint() as fake:
        line = one_error_line(step(STEP0, tmp_path, "--count", "2", "--seeds", str(tmp_path / "seeds.jsonl"),
                                   base_url=fake.base_url))
    assert "at least 2 seed instructions" in line


def test_malformed_jsonl_line_is_named(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"prompt": "Write an essay on rivers."}\n{"prompt": "Write a story."}\n{"prompt": oops}\n')
    with FakeEndpoint() as fake:
        line = one_error_line(step(STEP0, tmp_path, "--count", "2", "--seeds", str(seeds), base_url=fake.base_url))
    assert "line 3" in line


def test_missing_previous_stage_names_the_command(tmp_path):
    with FakeEndpoint() as fake:
        line = one_error_line(step(STEP1, tmp_path, base_url=fake.base_url))
    assert "step0_self_instruct.py" in line
    with FakeEndpoint() as fake:
        line = one_error_line(step(STEP2, tmp_path, base_url=fake.base_url))
    assert "step1_gen_initial_responses.py" in line


def test_unknown_model_name(tmp_path):
    write_instructions(tmp_path / "x", SHORT_PROMPTS)
    iter2 = tmp_path / "results" / "iter_2"
    iter2.parent.mkdir(parents=True)
    (tmp_path / "x" / "results" / "iter_1").rename(iter2)
    with FakeEndpoint(models=["base"]) as fake:
        proc = subprocess.run([str(SERVE_PY), str(STEP1), "--iter", "2", "--workdir", str(tmp_path), "--base_url",
                               fake.base_url], capture_output=True, text=True, timeout=300)
    line = one_error_line(proc)
    assert "'gen_sft'" in line and "--iter=1" in line


# --- fault injection -----------------------------------------------------------------------------------------------

def test_endpoint_failing_with_500_ends_the_stage_with_one_clear_line(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS)
    with FakeEndpoint("500") as fake:
        line = one_error_line(step(STEP1, tmp_path, "--retries", "1", "--workers", "2", base_url=fake.base_url))
        assert fake.requests >= 2
    assert "server error 500" in line
    assert not (tmp_path / "results" / "iter_1" / "initial_responses").exists()


def test_garbage_answers_end_the_stage_with_one_clear_line(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS)
    with FakeEndpoint("garbage") as fake:
        line = one_error_line(step(STEP1, tmp_path, "--retries", "1", base_url=fake.base_url))
    assert "unexpected answer" in line


def test_empty_answers_are_retried_then_counted_as_exhausted(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS)
    with FakeEndpoint("empty") as fake:
        proc = step(STEP1, tmp_path, "--max_tries", "3", base_url=fake.base_url)
        assert fake.requests == len(SHORT_PROMPTS) * 2 * 3
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "iter_1" / "initial_responses.summary.json").read_text())
    assert summary["exhausted"] == 8 and summary["reject_reasons"] == {"empty": 24} and summary["rows"] == 0


def test_sigterm_stops_a_stage_cleanly_and_keeps_its_checkpoint(tmp_path):
    """SIGTERM (a scheduler's stop) unwinds like Ctrl-C: one line, exit 143, finished items kept for the rerun."""
    write_instructions(tmp_path, [f"Write about place {i}." for i in range(10)])  # 20 items, 2 at a time
    checkpoint = tmp_path / "results" / "iter_1" / "initial_responses.checkpoint.jsonl"
    def slow_answer(payload):
        time.sleep(0.5)
        return "A complete answer."

    with FakeEndpoint(text=slow_answer) as fake:
        proc = step(STEP1, tmp_path, "--workers", "2", base_url=fake.base_url, wait=False)
        deadline = time.monotonic() + 120
        while not (checkpoint.exists() and checkpoint.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and err.strip().splitlines()[-1] == "terminated", err
    kept = _keys(checkpoint)
    assert 2 <= len(kept) < 20 and len(kept) == len(set(kept))
    assert not (tmp_path / "results" / "iter_1" / "initial_responses").exists()


def test_finished_stage_is_a_no_op(tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS)
    with FakeEndpoint(text="A complete answer about the topic, in one sentence.") as fake:
        first = step(STEP1, tmp_path, base_url=fake.base_url)
        assert first.returncode == 0, first.stderr[-2000:]
        calls = fake.requests
        second = step(STEP1, tmp_path, base_url=fake.base_url)
        assert second.returncode == 0 and "already complete" in second.stdout
        assert fake.requests == calls


# --- the real model ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script", [STEP0, QWEN_STEP0], ids=["llama", "qwen"])
def test_self_instruct_on_the_real_model(served, tmp_path, script):
    proc = step(script, tmp_path, "--count", "3", "--max_tries", "4", "--workers", "3", base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "iter_1" / "instructions"
    assert (out / MARKER).is_file()
    data = load_rows(out)
    assert data.column_names == ["prompt"]
    summary = json.loads((out.parent / "instructions.summary.json").read_text())
    assert summary["items"] == 3 and summary["accepted"] == len(data) and summary["tokens_generated"] > 0
    assert len(set(data["prompt"])) == len(data)


@pytest.mark.slow
def test_generate_then_extend_on_the_real_model(served, tmp_path):
    write_instructions(tmp_path, SHORT_PROMPTS[:3])
    proc = step(STEP1, tmp_path, "--max_tokens", "160", "--max_tries", "3", "--workers", "6", base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    initial = load_rows(tmp_path / "results" / "iter_1" / "initial_responses")
    assert initial.column_names == ["prompt", "initial_response"]
    assert len(initial) >= 1 and set(initial["prompt"]) <= set(SHORT_PROMPTS)
    proc = step(STEP2, tmp_path, "--max_tokens", "200", "--max_tries", "1", "--workers", "6", base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    extended = load_rows(tmp_path / "results" / "iter_1" / "extended_responses")
    assert extended.column_names == ["prompt", "initial_response", "extended_response"]
    summary = json.loads((tmp_path / "results" / "iter_1" / "extended_responses.summary.json").read_text())
    assert summary["items"] == 2 * len(initial)
    from self_lengthen.text import count_words

    for row in extended:
        assert count_words(row["extended_response"]) > 1.2 * count_words(row["initial_response"])


def _keys(checkpoint: Path) -> list[str]:
    return [json.loads(line)["key"] for line in checkpoint.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_kill_9_at_three_random_points_then_resume_loses_and_repeats_nothing(served, tmp_path):
    args = ("--max_tokens", "120", "--max_tries", "3", "--workers", "4")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for workdir in (clean, killed):
        write_instructions(workdir, SHORT_PROMPTS)
    proc = step(STEP1, clean, *args, base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = killed / "results" / "iter_1" / "initial_responses.checkpoint.jsonl"
    rng = random.Random(1234)
    kills = 0

    def done() -> int:  # finished (complete) checkpoint lines
        return checkpoint.read_bytes().count(b"\n") if checkpoint.exists() else 0

    for _ in range(3):
        # Kill once 1 or 2 more items are checkpointed: a random point inside the stage, whatever the machine's speed.
        target = done() + rng.randint(1, 2)
        running = step(STEP1, killed, *args, base_url=served.base_url, wait=False)
        deadline = time.monotonic() + 300
        while running.poll() is None and time.monotonic() < deadline:
            if done() >= target:
                os.kill(running.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        running.communicate(timeout=60)
    assert kills >= 1
    resumed = step(STEP1, killed, *args, base_url=served.base_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    keys = _keys(checkpoint)
    assert len(keys) == len(set(keys))  # no duplicate
    assert set(keys) == set(_keys(clean / "results" / "iter_1" / "initial_responses.checkpoint.jsonl"))
    assert len(keys) == 2 * len(SHORT_PROMPTS)
    assert (killed / "results" / "iter_1" / "initial_responses" / MARKER).is_file()


def test_finish_fraction_ends_the_stage_early_without_killing(tmp_path):
    """With --finish_fraction 0.5 the stage stops once half the items are done: queued ones are cancelled,
    in-flight ones finish their request, and the dataset holds what was finished."""
    write_instructions(tmp_path, [f"Write about place {i}." for i in range(10)])  # 20 items
    with FakeEndpoint(text="A complete answer.", delay=0) as fake:
        proc = step(STEP1, tmp_path, "--finish_fraction", "0.5", "--workers", "2", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "iter_1" / "initial_responses.summary.json").read_text())
    assert 10 <= summary["items"] < 20
    keys = [json.loads(line)["key"] for line in
            (tmp_path / "results" / "iter_1" / "initial_responses.checkpoint.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == summary["items"]
    assert (tmp_path / "results" / "iter_1" / "initial_responses" / MARKER).is_file()


def test_attempts_sets_how_many_extensions_each_initial_response_gets(tmp_path):
    """--attempts 1 (the cpu-demo profile's) gives one step2 item per initial response; the method's default is 2."""
    rows = [{"prompt": f"Write about place {i}.", "initial_response": f"Place {i} is quiet.\nIt has a river."}
            for i in range(3)]
    for attempts, expected in ((None, 6), ("1", 3)):
        workdir = tmp_path / f"attempts-{attempts}"
        save_dataset(rows, ["prompt", "initial_response"], workdir / "results" / "iter_1" / "initial_responses")
        extra = ("--attempts", attempts) if attempts else ()
        with FakeEndpoint(text="A complete answer.", delay=0) as fake:
            proc = step(STEP2, workdir, "--max_tries", "1", *extra, base_url=fake.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads((workdir / "results" / "iter_1" / "extended_responses.summary.json").read_text())
        assert summary["items"] == expected
    with FakeEndpoint(delay=0) as fake:
        assert "--attempts=0 must be at least 1" in one_error_line(
            step(STEP2, tmp_path / "bad", "--attempts", "0", base_url=fake.base_url))


def test_time_budget_ends_the_stage_once_something_was_accepted(tmp_path):
    """--time_budget 0.05 (3 s) with answers taking 0.5 s: the stage ends early, keeping what it finished; with
    answers that are never accepted it goes on to the end rather than write nothing."""
    def slow_answer(payload):
        time.sleep(0.5)
        return "A complete answer."

    prompts = [f"Write about place {i}." for i in range(20)]  # 40 items, 2 at a time: about 10 s in all
    for mode, text in (("ok", slow_answer), ("empty", "")):
        workdir = tmp_path / mode
        write_instructions(workdir, prompts)
        with FakeEndpoint(mode, text=text) as fake:
            proc = step(STEP1, workdir, "--time_budget", "0.05", "--workers", "2", "--max_tries", "1",
                        base_url=fake.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads((workdir / "results" / "iter_1" / "initial_responses.summary.json").read_text())
        if mode == "ok":
            assert 1 <= summary["accepted"] and summary["items"] < 40 and "time budget of 0.05 min" in proc.stdout
        else:
            assert summary["items"] == 40 and summary["accepted"] == 0
        assert (workdir / "results" / "iter_1" / "initial_responses" / MARKER).is_file()
