"""Chaos: every resumable stage is killed with -9 at 20 random points, rerun after each kill, and at the end holds
every item exactly once and the same result as a run that was never interrupted.

The stage code is the real one, run as users run it (the flavours' scripts, the held-out answering,
eval/generate.py, run_collect_data's batches). A fake endpoint stands in for the model only as fault injection: its answers are a function of the
request, so an interrupted run can be compared with an uninterrupted one, and it is fast enough to kill 20 times
per stage. The real stack is killed at a few points per stage in test_stages.py, test_step2_journal.py and
test_pipeline.py.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SERVE_PY, jsonl_rows
from fake_endpoint import FakeEndpoint
from self_lengthen.stages.runner import save_dataset
from test_stages import STEP0, STEP1, STEP2, load_rows

KILLS = 20
pytestmark = pytest.mark.slow  # about 7 minutes in all: 6 stages x 21 process starts
MODELS = ("base", "gen_sft", "ext_sft")


def h(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def answer(payload: dict) -> str:
    """A model whose every answer is a function of the request: some accepted, some rejected, per stage."""
    time.sleep(0.01)  # a few requests in flight at any moment
    if "prompt" in payload:
        prompt = payload["prompt"]
        if prompt.rstrip().endswith("3:"):  # step0's few-shot completion
            return f" Write a long report on the harbour of town {h(prompt) % 10**6}.\nInstruction 4: x"
        words = " ".join(f"w{i}" for i in range(len(prompt.split())))  # step2's continuation, no repeated n-gram
        return f" {words} and then it stops mid" if h(prompt) % 3 == 0 else f" {words} and it ends."
    user = payload["messages"][-1]["content"]
    if "Draft" in user:  # step2's chat half: three blocks, two kept
        return "Head one opens the text.\n\nHead two goes on.\n\nHead three is cut."
    if user.startswith(("Write", "Describe")):  # step1's responses, the evaluation's and held-out answers
        n = h(user) % 12 + 2
        text = " ".join(f"Sentence {i} of the answer goes on." for i in range(n))
        return text[:-1] + " and" if h(user) % 5 == 0 else text  # a fifth end unfinished: rejected by step1
    return "yes" if h(user) % 4 else "no"  # step0's judge


def run_to_end(cmd: list[str], env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_and_rerun(cmd: list[str], fake: FakeEndpoint, rng: random.Random, spread: int, env=None) -> int:
    """Start `cmd`, SIGKILL its whole process group a random moment after a random number of further requests
    (0 to `spread`: 0 kills it while it starts), and start it again; KILLS times, unless a run ends first.
    Returns the kills made."""
    kills = 0
    while kills < KILLS:
        target = fake.requests + rng.randint(0, spread)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while proc.poll() is None and fake.requests < target and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.015))  # mid-request, mid-write or between: wherever the moment falls
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=60)
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"{cmd[1]} failed with {proc.returncode}:\n{err[-3000:]}")
        if proc.returncode == 0:
            break
    return kills


def checkpoint_records(path: Path) -> list[tuple]:
    """(key, status, tries, text) of each checkpoint line; every key must be there once."""
    lines = jsonl_rows(path)
    keys = [r["key"] for r in lines]
    assert len(keys) == len(set(keys)), f"{path.name}: a key recorded twice"
    return sorted((r["key"], r["status"], r.get("tries"),
                   r.get("prompt") or r.get("initial_response") or r.get("extended_response") or r.get("response"))
                  for r in lines)


def chaos(tmp_path: Path, name: str, prepare, command, outcome, spread: int):
    """The uninterrupted run, then the one killed KILLS times; their outcomes must be equal."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for workdir in (clean, killed):
        workdir.mkdir()
        prepare(workdir)
    with FakeEndpoint(text=answer, models=MODELS) as fake:
        env = {**os.environ, "SELF_LENGTHEN_BASE_URL": fake.base_url, "PYTHONPATH": str(ROOT)}
        run_to_end(command(clean, fake.base_url), env)
    expected = outcome(clean)
    with FakeEndpoint(text=answer, models=MODELS) as fake:
        env = {**os.environ, "SELF_LENGTHEN_BASE_URL": fake.base_url, "PYTHONPATH": str(ROOT)}
        kills = kill_and_rerun(command(killed, fake.base_url), fake, random.Random(name), spread, env)
        run_to_end(command(killed, fake.base_url), env)
    assert kills == KILLS, f"{name}: the stage finished after {kills} kills; give it more work"
    assert outcome(killed) == expected


def stage_cmd(script: Path, *args: str):
    return lambda workdir, url: [str(SERVE_PY), str(script), "--iter", "1", "--workdir", str(workdir),
                                 "--base_url", url, *args]


def dataset(path: Path, *columns: str) -> list[tuple]:
    data = load_rows(path)
    return sorted(zip(*(data[c] for c in columns)))


def iter1(workdir: Path) -> Path:
    return workdir / "results" / "iter_1"


def test_step0_survives_20_kills(tmp_path):
    def outcome(workdir):
        return (dataset(iter1(workdir) / "instructions", "prompt"),
                checkpoint_records(iter1(workdir) / "instructions.checkpoint.jsonl"))

    # one request in flight: which instruction a slot gets depends on those accepted before it (duplicates)
    chaos(tmp_path, "step0", lambda w: None,
          stage_cmd(STEP0, "--count", "60", "--workers", "1", "--judge_parse", "strict"), outcome, spread=5)


def test_step1_survives_20_kills(tmp_path):
    prompts = [f"Write a long report on the harbour of town {i}." for i in range(80)]

    def outcome(workdir):
        return (dataset(iter1(workdir) / "initial_responses", "prompt", "initial_response"),
                checkpoint_records(iter1(workdir) / "initial_responses.checkpoint.jsonl"))

    chaos(tmp_path, "step1", lambda w: save_dataset([{"prompt": p} for p in prompts], ["prompt"],
                                                    iter1(w) / "instructions"),
          stage_cmd(STEP1, "--workers", "4", "--max_tries", "3", "--finish_fraction", "1"), outcome, spread=8)


def test_step2_survives_20_kills(tmp_path):
    rows = [{"prompt": f"Write a long story about harbour {i}.",
             "initial_response": f"Harbour {i} wakes early.\n\nBoats leave at dawn.\n\nGulls follow them out."}
            for i in range(16)]

    def outcome(workdir):
        return (dataset(iter1(workdir) / "extended_responses", "prompt", "extended_response"),
                checkpoint_records(iter1(workdir) / "extended_responses.checkpoint.jsonl"))

    chaos(tmp_path, "step2", lambda w: save_dataset(rows, ["prompt", "initial_response"], iter1(w) / "initial_responses"),
          stage_cmd(STEP2, "--workers", "4", "--max_tries", "2", "--no-drop_short", "--finish_fraction", "1"),
          outcome, spread=8)


def test_heldout_answering_survives_20_kills(tmp_path):
    def outcome(workdir):
        return (dataset(iter1(workdir) / "heldout", "prompt", "response", "words", "unfinished"),
                checkpoint_records(iter1(workdir) / "heldout.checkpoint.jsonl"))

    chaos(tmp_path, "heldout", lambda w: None, stage_cmd(ROOT / "llama" / "heldout_generator.py", "--workers", "2"),
          outcome, spread=2)


def test_evaluation_answering_survives_20_kills(tmp_path):
    queries = [{"query": f"Describe town {i} in about {100 * (i % 5 + 1)} words.", "type": "words"} for i in range(200)]

    def prepare(workdir):
        (workdir / "sample.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))

    def command(workdir, url):
        return [str(SERVE_PY), str(ROOT / "eval" / "generate.py"), str(workdir / "sample.jsonl"), "--model", "gen_sft",
                "--workers", "4", "--max_tokens", "64", "--base_url", url]

    def outcome(workdir):
        rows = jsonl_rows(workdir / "sample.gen_sft.jsonl")
        assert [r["query"] for r in rows] == [q["query"] for q in queries]  # every query once, in order
        return rows, checkpoint_records(workdir / "sample.gen_sft.jsonl.checkpoint.jsonl")

    chaos(tmp_path, "eval", prepare, command, outcome, spread=5)


def test_run_collect_datas_batches_survive_20_kills(tmp_path):
    """The batches of run_collect_data (step0 + step1 each, in child processes): the whole process group is killed,
    as when a node dies."""
    profile = yaml.safe_load((ROOT / "self_lengthen" / "profiles" / "tiny.yaml").read_text())
    profile["generation"]["workers"] = 1  # step0's slots depend on the instructions accepted before them
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    script = ("import sys, argparse; from pathlib import Path; from self_lengthen.collect import collect_batches; "
              "from self_lengthen.profile import load_profile; "
              "args = argparse.Namespace(total_count=24, instruct_count=4, prompt_templates=None, seeds=None); "
              "collect_batches(Path('llama').resolve(), args, Path(sys.argv[1]), Path(sys.argv[2]), "
              "load_profile(sys.argv[3]), timeout=600)")

    def command(workdir, url):  # the stages find the endpoint at $SELF_LENGTHEN_BASE_URL, as under run_collect_data
        return [str(SERVE_PY), "-c", script, str(workdir), "default", str(tmp_path / "profile.yaml")]

    def outcome(workdir):
        batches = sorted((workdir / "results").glob("iter_*"))
        assert len(batches) == 6
        return [(b.name, dataset(b / "initial_responses", "prompt", "initial_response"),
                 checkpoint_records(b / "instructions.checkpoint.jsonl"),
                 checkpoint_records(b / "initial_responses.checkpoint.jsonl")) for b in batches]

    chaos(tmp_path, "collect", lambda w: None, command, outcome, spread=4)
