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

from conftest import ROOT, SERVE_PY, jsonl_rows, one_error_line
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


def step(script, workdir, *args, base_url, timeout=900, wait=True, iteration=1):
    cmd = [str(SERVE_PY), str(script), "--iter", str(iteration), "--workdir", str(workdir), "--base_url", base_url, *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


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


def test_step0_against_an_endpoint_without_the_base_model_says_how_to_serve_it(tmp_path):
    """Iterations whose step0 ran ahead are served with --no-serve_base; a step0 sent there anyway says so."""
    with FakeEndpoint(models=["gen_sft", "ext_sft"]) as fake:
        line = one_error_line(step(STEP0, tmp_path, "--count", "2", base_url=fake.base_url, iteration=2))
        assert fake.requests == 0  # nothing generated (the models list is a GET)
    assert "not 'base'" in line and "start run_server.sh without --no-serve_base" in line


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


def test_sampling_option_replaces_the_methods_fields_in_every_request(tmp_path):
    """--sampling (a profile's generation.sampling) replaces only the fields it names, in every request of the
    stage, and the stage's summary records what was sent; a bad value is one line before any request."""
    write_instructions(tmp_path, SHORT_PROMPTS)
    sent = []

    def answer(payload):
        sent.append({key: payload.get(key) for key in ("temperature", "top_p", "top_k", "repetition_penalty")})
        return "A complete answer about the topic, in one sentence."

    with FakeEndpoint(text=answer) as fake:
        line = one_error_line(step(STEP1, tmp_path, "--sampling", "temperature=warm", base_url=fake.base_url))
        assert fake.requests == 0 and "sampling 'temperature=warm': temperature='warm' is not a number" in line
        proc = step(STEP1, tmp_path, "--sampling", "temperature=1.0,top_k=-1", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = {"temperature": 1.0, "top_p": 0.8, "top_k": -1, "repetition_penalty": 1.1}
    assert len(sent) == len(SHORT_PROMPTS) * 2 and all(fields == expected for fields in sent)
    summary = json.loads((tmp_path / "results" / "iter_1" / "initial_responses.summary.json").read_text())
    assert summary["sampling"] == expected


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
def test_qwen_self_instruct_on_the_real_model(served, tmp_path):
    """The zh prompts on the served model. (llama's step0, and step1 then step2, on the real model: the end-to-end
    iteration in test_pipeline.py.)"""
    # The method's max_tokens (16384, as the profiles' gpu) would let a completion that never writes "Instruction 4"
    # run to the model's context; the profiles cap step0 (cpu-demo 400, tiny 600), and so does this test.
    proc = step(QWEN_STEP0, tmp_path, "--count", "2", "--max_tries", "4", "--workers", "2", "--max_tokens", "200",
                base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "iter_1" / "instructions"
    assert (out / MARKER).is_file()
    data = load_rows(out)
    assert data.column_names == ["prompt"]
    summary = json.loads((out.parent / "instructions.summary.json").read_text())
    assert summary["items"] == 2 and summary["accepted"] == len(data) and summary["tokens_generated"] > 0
    assert len(set(data["prompt"])) == len(data)


@pytest.mark.slow
def test_step0_and_step2_with_the_originals_template_format_on_the_real_model(served, tmp_path):
    """The original's format on the served model: a raw self_instruct.md written with the model's own chat tokens
    (as the original's are), judge_prompt.md and extend_response.md, and a prompts_train seeds dataset. (step1 uses
    none of these files: its initial responses here are written drafts, so step2 has something to extend.)"""
    from datasets import Dataset

    templates = tmp_path / "original_templates"
    templates.mkdir()
    (templates / "self_instruct.md").write_text(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nList writing tasks that each call for a long essay or story.<|im_end|>\n"
        "<|im_start|>assistant\nInstruction 1: {prompt1}\nInstruction 2: {prompt2}\nInstruction 3: ")
    (templates / "judge_prompt.md").write_text("Does this writing task call for a long text? Answer yes or no.\n\n"
                                               "Task: {prompt}")
    (templates / "extend_response.md").write_text("Task: {prompt}\n\nDraft:\n{response}\n\n"
                                                  "Rewrite the draft at greater length, with more detail.")
    seeds = tmp_path / "prompts_train"
    Dataset.from_dict({"prompt": ["Write an essay about the history of bridges.",
                                  "Write a story about a lighthouse keeper and a storm.",
                                  "Write a report on how cities can save water."]}).save_to_disk(str(seeds))
    common = ("--workers", "6", "--prompt_templates", str(templates), "--no-drop_short")
    proc = step(STEP0, tmp_path, *common, "--count", "3", "--max_tries", "10", "--max_tokens", "80",
                "--judge_parse", "lenient", "--seeds", str(seeds), base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "results" / "iter_1"
    instructions = load_rows(results / "instructions")["prompt"]
    assert instructions and not set(instructions) & {"Write an essay about the history of bridges."}
    draft = ("It began on a grey morning by the water.\n\nPeople gathered to watch and to talk.\n\n"
             "By evening the work was done, and everyone went home.")
    save_dataset([{"prompt": p, "initial_response": draft} for p in instructions], ["prompt", "initial_response"],
                 results / "initial_responses")
    # the format is what is tested here: step2 ends once a third of its items are finished
    proc = step(STEP2, tmp_path, *common, "--max_tokens", "200", "--max_tries", "1", "--attempts", "1",
                "--finish_fraction", "0.3", base_url=served.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results / "extended_responses" / MARKER).is_file()
    summary = json.loads((results / "extended_responses.summary.json").read_text())
    assert summary["items"] >= 1 and summary["tokens_generated"] > 0


def _keys(checkpoint: Path) -> list[str]:
    return [r["key"] for r in jsonl_rows(checkpoint)]


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
    keys = _keys(tmp_path / "results" / "iter_1" / "initial_responses.checkpoint.jsonl")
    assert len(keys) == len(set(keys)) == summary["items"]
    assert (tmp_path / "results" / "iter_1" / "initial_responses" / MARKER).is_file()


def test_attempts_sets_how_many_extensions_each_initial_response_gets(tmp_path):
    """--attempts 1 gives one step2 item per initial response; the method's default is 2."""
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
        assert "argument --attempts: 0 must be at least 1" in one_error_line(
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
                        "--finish_fraction", "1", base_url=fake.base_url)  # not the method's 95%: every item
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads((workdir / "results" / "iter_1" / "initial_responses.summary.json").read_text())
        if mode == "ok":
            assert 1 <= summary["accepted"] and summary["items"] < 40 and "time budget of 0.05 min" in proc.stdout
        else:
            assert summary["items"] == 40 and summary["accepted"] == 0
        assert (workdir / "results" / "iter_1" / "initial_responses" / MARKER).is_file()


# --- the method's rules, as the stages apply them (the endpoint records what they send) ----------------------------

LLAMA_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
METHOD_STOPS = {"\n\n---", "\n---", "---", "\n\n\n"}


def method_answers(payload):
    """What a cooperative model would answer each request of steps 0-2 with."""
    if "prompt" in payload:
        if payload["prompt"].rstrip().endswith("3:"):  # step0's few-shot completion
            return f" Write a long report on the harbour of town {random.randint(0, 10**9)}.\nInstruction 4: x"
        return " The rest of the text, written out in full sentences until it ends."  # step2's continuation
    user = payload["messages"][-1]["content"]
    if user.startswith("Write a long report"):  # step1: lengths vary, or drop_short would keep none
        return " ".join(f"Sentence {i} of a report that goes on." for i in range(random.randint(2, 30)))
    if "Draft" in user:  # step2's chat half
        return "H1 opens the text.\n\nH2 goes on.\n\nH3 would be cut."
    return "yes"  # the judge


def test_steps_0_to_2_send_the_methods_stops_and_system_prompt(tmp_path):
    with FakeEndpoint(text=method_answers, delay=0) as fake:
        for script, extra in ((STEP0, ("--count", "2")), (STEP1, ()), (STEP2, ("--max_tries", "1"))):
            proc = step(script, tmp_path, "--workers", "2", *extra, base_url=fake.base_url)
            assert proc.returncode == 0, proc.stderr[-2000:]
    payloads = fake.payloads
    assert {"completions", "chat"} == {"chat" if "messages" in p else "completions" for p in payloads}
    for p in payloads:
        assert METHOD_STOPS <= set(p["stop"]), p
        assert (p["temperature"], p["top_p"], p["top_k"], p["repetition_penalty"]) == (0.7, 0.8, 20, 1.1)
        if "messages" in p:  # every chat request of the llama flavour carries the method's system prompt
            assert p["messages"][0] == {"role": "system", "content": LLAMA_SYSTEM}
    step0 = [p for p in payloads if "prompt" in p and p["prompt"].rstrip().endswith("3:")]
    assert step0 and all({"Instruction 4", "Instructions 4"} <= set(p["stop"]) for p in step0)
    # step1's responses are judged whole: the worker may end them early; step0's requests are not
    step1 = [p for p in payloads if "messages" in p and p["messages"][-1]["content"].startswith("Write a long report")]
    assert step1 and all(p["reject_early"]["prefix"] == "" for p in step1)
    assert all("reject_early" not in p for p in step0)
    # the judge's strict verdict: the whole answer "yes"; the instructions are cut before "Instruction 4"
    data = load_rows(tmp_path / "results" / "iter_1" / "instructions")
    assert len(data) == 2 and all(p.startswith("Write a long report") and "Instruction" not in p for p in data["prompt"])


def test_step2_round_is_the_methods(tmp_path):
    """First half of the blocks, joined by blank lines, to the chat; 2/3 of its answer's blank-line blocks as the
    prefix, nothing added; the continuation appended as it comes; the result stored as it is."""
    initial = "A one.\n\nB two.\n\nC three.\n\nD four."
    save_dataset([{"prompt": "Write about letters.", "initial_response": initial}], ["prompt", "initial_response"],
                 tmp_path / "results" / "iter_1" / "initial_responses")
    with FakeEndpoint(text=method_answers, delay=0) as fake:
        proc = step(STEP2, tmp_path, "--max_tries", "1", "--attempts", "1", "--workers", "1", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chat, completion = fake.payloads[0], fake.payloads[1]
    asked = chat["messages"][-1]["content"]
    assert "A one.\n\nB two." in asked and "C three." not in asked
    assert "C three.\n\nD four." in completion["prompt"]
    assert completion["prompt"].endswith("<|im_start|>assistant\nH1 opens the text.\n\nH2 goes on.")
    # the record before drop_short (which never keeps a lone item: the shortest length is always dropped)
    record = json.loads((tmp_path / "results" / "iter_1" / "extended_responses.checkpoint.jsonl").read_text())
    expected = "H1 opens the text.\n\nH2 goes on." + method_answers({"prompt": ""})
    assert record["extended_response"] == expected  # rounds 2 and 3 were not longer, so round 1's text stands
    reasons = json.loads((tmp_path / "results" / "iter_1" / "extended_responses.summary.json").read_text())
    assert reasons["reject_reasons"] == {"not_longer": 2}
    # the completion, judged whole after its prefix, may be ended early by the worker; the chat half may not
    assert "reject_early" not in chat
    assert completion["reject_early"] == {"prefix": "H1 opens the text.\n\nH2 goes on.",
                                          "meta_words": ["revised", "revision", "response", "version", "paragraph"]}


def test_step2_ends_a_round_sure_to_fail_early_on_the_real_stack(served, tmp_path):
    """A completion after a prefix that already repeats: the worker ends it at its first check, and the round is
    recorded as rejected for the repetition; with --no-reject_early the same request runs to max_tokens, and is
    rejected all the same (for the check's first reason: mostly that it ends mid-sentence)."""
    from conftest import DOOMED_PREFIX
    from self_lengthen.serve.worker import CHECK_EVERY
    from self_lengthen.stages import extend
    from self_lengthen.stages.common import StageContext

    for flag, tokens, why in (("--reject_early", CHECK_EVERY, {"repetition"}),
                              ("--no-reject_early", 64, {"unfinished", "repetition"})):
        args = extend.parser().parse_args(["--iter", "1", "--workdir", str(tmp_path), "--base_url", served.base_url,
                                           "--max_tokens", "64", flag])
        ctx = StageContext.create(args, ROOT / "llama")
        sampling = ctx.sampling
        ctx.sampling = lambda **extra: sampling(ignore_eos=True, **extra)  # the model may not end it sooner
        text, reason, answer = extend.finish_round(ctx, "base", "Write about a harbour.", "A harbour.", DOOMED_PREFIX)
        assert (text, answer.completion_tokens) == (None, tokens) and reason in why, (flag, reason, answer)
        assert answer.finish_reason == ("rejected" if tokens == CHECK_EVERY else "length")


@pytest.mark.parametrize("prompts,finished", [(10, 20), (20, 39)])
def test_step1_ends_once_more_than_95_percent_are_finished(tmp_path, prompts, finished):
    """The method's end: more than 95% of the items finished. 20 items: 19 is exactly 95%, so all 20 run;
    40 items: 39 is past 95%, and the last one is dropped."""
    write_instructions(tmp_path, [f"Write about place {i}." for i in range(prompts)])
    with FakeEndpoint(text="A complete answer.", delay=0) as fake:
        proc = step(STEP1, tmp_path, "--workers", "1", base_url=fake.base_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "iter_1" / "initial_responses.summary.json").read_text())
    assert summary["items"] == finished


def test_step2_starts_its_items_in_a_seeded_shuffled_order(tmp_path):
    rows = [{"prompt": f"Write about place {i}.", "initial_response": f"Place {i} is quiet.\nIt has a river."}
            for i in range(12)]
    orders = []
    for seed in ("0", "0", "1"):
        workdir = tmp_path / f"seed-{seed}-{len(orders)}"
        save_dataset(rows, ["prompt", "initial_response"], workdir / "results" / "iter_1" / "initial_responses")
        with FakeEndpoint(text="A complete answer.", delay=0) as fake:
            proc = step(STEP2, workdir, "--max_tries", "1", "--attempts", "1", "--workers", "1", "--seed", seed,
                        base_url=fake.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        orders.append([p["messages"][-1]["content"] for p in fake.payloads if "messages" in p][::3])
    assert orders[0] == orders[1] != orders[2]  # the same seed, the same order; another seed, another
    started = [next(i for i in range(12) if f"place {i}." in asked) for asked in orders[0]]
    assert sorted(started) == list(range(12)) and started != list(range(12))  # every item, not in dataset order


def test_original_format_templates_and_seeds_dataset(tmp_path):
    """--prompt_templates and --seeds in the original's format (files this test writes, with the original's
    placeholders): self_instruct.md is sent as it is by raw completion; judge_prompt.md and extend_response.md by
    chat; the seeds come from a prompts_train dataset dir."""
    from datasets import Dataset

    templates = tmp_path / "prompt_templates"
    templates.mkdir()
    (templates / "self_instruct.md").write_text("RAW TASK LIST\nInstruction 1: {prompt1}\nInstruction 2: {prompt2}\n"
                                                "Instruction 3: ")
    (templates / "judge_prompt.md").write_text("JUDGE harbour? {prompt}\nAnswer yes or no.")
    (templates / "extend_response.md").write_text("EXTEND {prompt}\nDraft:\n{response}\nLonger, please.")
    seeds = tmp_path / "prompts_train"
    Dataset.from_dict({"prompt": ["SEED essay on rivers.", "SEED story about a lighthouse."]}).save_to_disk(str(seeds))
    work = tmp_path / "work"
    with FakeEndpoint(text=method_answers, delay=0) as fake:
        for script, extra in ((STEP0, ("--count", "2", "--seeds", str(seeds))), (STEP1, ()),
                              (STEP2, ("--max_tries", "1", "--attempts", "1"))):
            proc = step(script, work, "--workers", "2", "--prompt_templates", str(templates), *extra,
                        base_url=fake.base_url)
            assert proc.returncode == 0, proc.stderr[-2000:]
    raw = [p["prompt"] for p in fake.payloads if "prompt" in p and p["prompt"].startswith("RAW TASK LIST")]
    assert raw and all(p.endswith("Instruction 3: ") and p.count("SEED") == 2 for p in raw)  # no chat wrapping
    chats = [p["messages"][-1]["content"] for p in fake.payloads if "messages" in p]
    assert any(c.startswith("JUDGE harbour? Write a long report") for c in chats)
    assert any(c.startswith("EXTEND Write a long report") and "\nDraft:\n" in c for c in chats)
    completions = [p["prompt"] for p in fake.payloads if "prompt" in p and not p["prompt"].startswith("RAW")]
    assert completions and all("EXTEND Write a long report" in c for c in completions)
    assert (work / "results" / "iter_1" / "extended_responses" / MARKER).is_file()


def test_bad_prompt_template_dir_gets_one_line(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "self_instruct.md").write_text("{prompt1} {prompt2}")
    (tmp_path / "t" / "judge_prompt.md").write_text("{instruction}")  # not the original's placeholder
    (tmp_path / "t" / "extend_response.md").write_text("{prompt} {response}")
    with FakeEndpoint() as fake:
        line = one_error_line(step(STEP0, tmp_path, "--count", "1", "--prompt_templates", str(tmp_path / "t"),
                                   base_url=fake.base_url))
        assert "judge_prompt.md" in line and "{prompt}" in line
        line = one_error_line(step(STEP0, tmp_path, "--count", "1", "--prompt_templates", str(tmp_path / "none"),
                                   base_url=fake.base_url))
        assert "no such directory" in line


def test_instruction_pool_grows_and_resets_as_each_flavour_says():
    from self_lengthen.flavour import Flavour
    from self_lengthen.stages.self_instruct import InstructionPool

    seeds = ["Seed one.", "Seed two."]
    qwen, llama = Flavour(ROOT / "qwen").config, Flavour(ROOT / "llama").config
    assert (qwen.grow_pool, qwen.pool_reset_every) == (True, 500) and llama.grow_pool is False
    growing = InstructionPool(seeds, grow=True, reset_every=3)
    assert growing.claim("New a.") and growing.claim("New b.")
    assert growing.examples == seeds + ["New a.", "New b."]
    assert not growing.claim("new a.")  # the same instruction twice is a duplicate
    assert growing.claim("New c.") and growing.examples == seeds  # the third accepted resets the pool to the seeds
    assert growing.claim("New d.") and growing.examples == seeds + ["New d."]
    fixed = InstructionPool(seeds, grow=False)
    assert fixed.claim("New a.") and fixed.examples == seeds
    rng = random.Random(0)
    assert all(set(fixed.sample(rng)) == set(seeds) for _ in range(5))


def test_drop_short_applies_by_default_and_can_be_turned_off(tmp_path):
    """Equal lengths all sit at the first position, which the method's sampler never keeps: with it every row goes,
    without it (--no-drop_short, the small profiles) every accepted row is written."""
    rows = {}
    for flag in ((), ("--no-drop_short",)):
        workdir = tmp_path / ("off" if flag else "on")
        write_instructions(workdir, [f"Write about place {i}." for i in range(5)])
        with FakeEndpoint(text="A complete answer.", delay=0) as fake:
            proc = step(STEP1, workdir, "--workers", "2", *flag, base_url=fake.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows[bool(flag)] = len(load_rows(workdir / "results" / "iter_1" / "initial_responses"))
    assert rows == {False: 0, True: 10}


@pytest.mark.parametrize("script,args,needle", [
    (STEP0, ["--iter", "1", "--count", "0"], "argument --count: 0 must be at least 1"),
    (STEP1, ["--iter", "1", "--max_tries", "-1"], "argument --max_tries: -1 must be at least 1"),
    (ROOT / "llama" / "heldout_generator.py", ["--iter", "1", "--count", "2.5"],
     "argument --count: '2.5' is not a whole number"),
    (ROOT / "eval" / "generate.py", ["x.jsonl", "--workers", "0"], "argument --workers: 0 must be at least 1"),
    (ROOT / "eval" / "quality_eval.py", ["x.jsonl", "--tries", "0"], "argument --tries: 0 must be at least 1"),
])
def test_counts_below_one_get_one_line_from_every_command(tmp_path, script, args, needle):
    """Every count option takes the same check (errors.positive_int); before, some let 0 through silently (to one
    worker, or to the method's default)."""
    proc = subprocess.run([str(SERVE_PY), str(script), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert needle in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.parametrize("command", [
    ["bash", ROOT / "llama" / "run.sh", "--base_model=default"],
    ["bash", ROOT / "llama" / "run_server.sh", "--base_model=default", "--iter=0"],
    [SERVE_PY, STEP1, "--iter", "1"],
    [SERVE_PY, ROOT / "llama" / "heldout_generator.py", "--iter", "1"],
])
def test_a_workdir_that_is_a_file_gets_one_line_and_starts_nothing(tmp_path, command):
    """Before, each of these died with a traceback from mkdir (run.sh at results/.sync, before any server)."""
    (tmp_path / "results").write_text("not a directory")
    proc = subprocess.run([*map(str, command), f"--workdir={tmp_path / 'results'}"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert f"--workdir {tmp_path / 'results'}: is a file, not a directory" in one_error_line(proc)
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
