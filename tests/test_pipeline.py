"""run.sh end to end on the default model with the tiny profile: one iteration killed with -9 and rerun, two nodes
on one machine, and bad input. (That the serving worker loads trained adapters is shown in test_training.py.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SERVE_PY, env_with, jsonl_rows
from self_lengthen.serve.procs import leader_alive, pid_records
from self_lengthen.train import kill_tree

RUN = ROOT / "llama" / "run.sh"
TINY = ["--base_model=default", "--instruct_count=2", "--profile=tiny"]


def run_sh(workdir, *args, env=None, timeout=2400, wait=True):
    cmd = ["bash", str(RUN), f"--workdir={workdir}", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# --- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--max_iter=0"], "argument --max_iter: 0 must be at least 1"),
    (["--instruct_count=many"], "argument --instruct_count: 'many' is not a whole number"),
    (["--colour=blue"], "unknown option --colour=blue"),
    (["--profile=huge"], "--profile=huge: unknown profile"),
    (["--adapter_mode=fast"], "invalid choice: 'fast'"),
])
def test_bad_options_get_one_clear_line(tmp_path, args, needle):
    proc = run_sh(tmp_path, "--base_model=default", *args, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_a_bad_profile_field_gets_one_clear_line_and_starts_nothing(tmp_path):
    profile = (ROOT / "self_lengthen" / "profiles" / "tiny.yaml").read_text().replace("workers: 8", "workers: -8")
    (tmp_path / "mine.yaml").write_text(profile)
    proc = run_sh(tmp_path, "--base_model=default", f"--profile={tmp_path / 'mine.yaml'}", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: profile {tmp_path / 'mine.yaml'}: generation.workers=-8 is not null or a positive whole number"]
    assert not (tmp_path / "logs").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("variable,value,needle", [
    ("SELF_LENGTHEN_BARRIER_TIMEOUT", "abc", "SELF_LENGTHEN_BARRIER_TIMEOUT='abc' is not a number"),
    ("SELF_LENGTHEN_BARRIER_TIMEOUT", "0", "SELF_LENGTHEN_BARRIER_TIMEOUT=0 must be a positive"),
    ("SELF_LENGTHEN_HEARTBEAT_TIMEOUT", "-5", "SELF_LENGTHEN_HEARTBEAT_TIMEOUT=-5 must be a positive"),
    ("WORLD_SIZE", "two", "WORLD_SIZE='two' is not a whole number"),
    ("MASTER_PORT", "70000", "MASTER_PORT=70000 is out of range: it must be from 1 to 65535"),
    ("SELF_LENGTHEN_API_PORT", "0", "SELF_LENGTHEN_API_PORT=0 is out of range"),
    ("VLLM_CPU_KVCACHE_SPACE", "lots", "VLLM_CPU_KVCACHE_SPACE='lots' is not a whole number"),
    ("FASTCHAT_WORKER_API_TIMEOUT", "-1", "FASTCHAT_WORKER_API_TIMEOUT=-1 must be a positive"),
    ("SELF_LENGTHEN_BASE_URL", "localhost:8000", "SELF_LENGTHEN_BASE_URL='localhost:8000' is not an http(s) URL"),
    ("NODE_ADDR", "a b", "NODE_ADDR='a b' is not an IP address or host name"),
    ("SELF_LENGTHEN_API_KEY_FILE", "/nonexistent/key", "cannot read the API key file /nonexistent/key"),
])
def test_bad_environment_gets_one_clear_line_and_starts_nothing(tmp_path, variable, value, needle):
    proc = run_sh(tmp_path, *TINY, "--max_iter=1", env=env_with(**{variable: value}), timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
    assert not list(tmp_path.glob("logs/*.log")), "a server was started"  # each server writes a log from its start


def test_rank_beyond_world_size(tmp_path):
    proc = run_sh(tmp_path, *TINY, "--max_iter=1", env=env_with(WORLD_SIZE=2, RANK=2), timeout=120)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "RANK=2 must be in [0, WORLD_SIZE=2)" in proc.stderr


# --- one node: an iteration killed with -9 midway, then rerun to the end -----------------------------------------------

@pytest.fixture(scope="module")
def one_iteration(tmp_path_factory):
    """run.sh for one iteration, killed with -9 (every process of it) once gen_sft is trained, while ext_sft's
    turn has begun, then run again. (Killing a stage in the middle and continuing it is shown in test_stages.py,
    test_step2_journal.py and test_chaos.py; killing run_collect_data.sh while it serves, below.)"""
    workdir = tmp_path_factory.mktemp("e2e")
    it = workdir / "results" / "iter_1"
    running = run_sh(workdir, *TINY, "--max_iter=1", wait=False)
    gen_sft = it / "lora" / "gen_sft" / "adapter_model.safetensors"
    deadline = time.monotonic() + 2400
    while time.monotonic() < deadline and not gen_sft.exists():
        assert running.poll() is None, running.stdout.read()[-3000:]
        time.sleep(0.2)
    kill_tree(running.pid)  # as a node that dies: run.sh and every process under it, trainers in their own sessions
    running.wait(timeout=60)
    assert gen_sft.exists() and not (it / "lora" / "ext_sft").exists()
    finished = [it / name / "_COMPLETE" for name in ("instructions", "initial_responses", "extended_responses",
                                                     "heldout")] + [gen_sft]
    before = {path: path.stat().st_mtime_ns for path in finished}
    rerun = run_sh(workdir, *TINY, "--max_iter=1")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return {"workdir": workdir, "before": before, "rerun": rerun}


@pytest.mark.slow
def test_one_iteration_leaves_every_artefact(one_iteration):
    workdir = one_iteration["workdir"]
    it = workdir / "results" / "iter_1"
    for name in ("instructions", "initial_responses", "extended_responses"):
        assert (it / name / "_COMPLETE").is_file()
        assert (it / f"{name}.summary.json").is_file() and (it / f"{name}.checkpoint.jsonl").is_file()
    for name in ("gen_sft", "ext_sft"):
        assert (it / "data" / f"{name}.json").is_file() and (it / "data" / f"train_{name}.yaml").is_file()
        assert (it / "lora" / name / "adapter_config.json").is_file()
        assert (it / "lora" / name / "adapter_model.safetensors").is_file()
    assert set(json.loads((it / "data" / "dataset_info.json").read_text())) == {"gen_sft", "ext_sft"}
    # what each stage wrote on the real model: its columns, unique instructions, responses to them, and extensions
    # that grew past the method's 1.2x
    from datasets import load_from_disk

    from self_lengthen.text import count_words

    instructions = load_from_disk(str(it / "instructions"))
    assert instructions.column_names == ["prompt"] and len(set(instructions["prompt"])) == len(instructions) >= 1
    initial = load_from_disk(str(it / "initial_responses"))
    assert initial.column_names == ["prompt", "initial_response"]
    assert len(initial) >= 1 and set(initial["prompt"]) <= set(instructions["prompt"])
    extended = load_from_disk(str(it / "extended_responses"))
    assert extended.column_names == ["prompt", "initial_response", "extended_response"] and len(extended) >= 1
    drafts = set(zip(initial["prompt"], initial["initial_response"]))
    for row in extended:
        assert (row["prompt"], row["initial_response"]) in drafts
        assert count_words(row["extended_response"]) > 1.2 * count_words(row["initial_response"])
    assert (it / "report.md").is_file() and (it / "words_hist.png").is_file()
    report = (workdir / "results" / "report.md").read_text()
    # it leads with the Generator (the base model, in iteration 1) on the profile's 2 held-out instructions
    assert report.index("held-out instructions") < report.index("## Synthesis")
    assert "| 1 | base | 2 |" in report and report.count("| 1 |") == 2
    assert (it / "heldout" / "_COMPLETE").is_file()
    assert json.loads((it / "heldout.summary.json").read_text())["model"] == "base"
    assert (workdir / "results" / "growth.png").is_file()
    assert not list((workdir / "run").rglob("*.pid"))  # the servers were stopped


@pytest.mark.slow
def test_rerun_after_kill_9_redoes_nothing_finished(one_iteration):
    workdir = one_iteration["workdir"]
    it = workdir / "results" / "iter_1"
    for path, mtime in one_iteration["before"].items():
        assert path.stat().st_mtime_ns == mtime, f"{path.relative_to(it)} was redone"
    out = one_iteration["rerun"].stdout
    assert "starting the servers" not in out and "training gen_sft" not in out  # synthesis and gen_sft were done
    assert "training ext_sft" in out
    # and a finished iteration is never trained again
    adapter = it / "lora" / "ext_sft" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    again = run_sh(workdir, *TINY, "--max_iter=1", timeout=300)
    assert again.returncode == 0 and "iteration 1: already complete" in again.stdout
    assert adapter.stat().st_mtime_ns == mtime


COLLECT = ROOT / "llama" / "run_collect_data.sh"


@pytest.fixture(scope="module")
def collected(one_iteration):
    """run_collect_data.sh on the finished iteration's adapters, 1 batch of 1 instruction: killed with -9 while its
    servers start (they live on, in groups of their own), then run again to the end."""
    workdir = one_iteration["workdir"]
    cmd = ["bash", str(COLLECT), "--base_model=default", "--max_iter=1", "--instruct_count=1", "--total_count=1",
           "--profile=tiny", f"--workdir={workdir}"]
    env = env_with(VLLM_CPU_KVCACHE_SPACE=1)  # 1 GiB per merged engine: memory for the rest
    running = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env=env)
    worker_pid = workdir / "run" / "rank0" / "worker0.pid"
    deadline = time.monotonic() + 600
    while not worker_pid.exists():
        assert time.monotonic() < deadline and running.poll() is None, running.stdout.read()[-3000:]
        time.sleep(0.5)
    time.sleep(3)
    orphans = pid_records(worker_pid.parent)
    os.killpg(running.pid, signal.SIGKILL)
    running.wait(timeout=60)
    assert orphans and all(leader_alive(r) for r in orphans)  # the servers outlive the kill
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return {"workdir": workdir, "orphans": orphans, "rerun": rerun}


@pytest.mark.slow
def test_run_collect_data_makes_a_batch_with_the_final_generator_and_stops_a_killed_runs_servers(collected):
    results = collected["workdir"] / "results"
    assert "batch 1/1 (iter_10000) done" in collected["rerun"].stdout
    assert "serving base, gen_sft at" in collected["rerun"].stdout  # no stage here extends: no ext_sft engine
    # the CPU default: LLaMA-Factory's adapter merged into a copy of the base (as a LoRA request: test_training.py)
    assert "serving adapters as merged copies" in (collected["workdir"] / "logs" / "worker0.log").read_text()
    assert not (results / "iter_10001").exists()
    for name in ("instructions", "initial_responses"):
        assert (results / "iter_10000" / name / "_COMPLETE").is_file()
    # written by the final Generator
    assert json.loads((results / "iter_10000" / "initial_responses.summary.json").read_text())["model"] == "gen_sft"
    # ... which first answered the held-out instructions, as the Generator that would start iteration 2
    assert (results / "iter_2" / "heldout" / "_COMPLETE").is_file()
    assert json.loads((results / "iter_2" / "heldout.summary.json").read_text())["model"] == "gen_sft"
    report = (results / "report.md").read_text()
    assert "| 1 | base | 2 |" in report and "| 2 | gen_sft | 2 |" in report
    assert not list((collected["workdir"] / "run").rglob("*.pid"))  # servers stopped, the killed run's too
    assert not [r for r in collected["orphans"] if leader_alive(r)]


@pytest.mark.slow
def test_collect_data_writes_long_jsonl(collected, tmp_path):
    """long.jsonl has every (prompt, response) of every iteration and batch, each once."""
    from datasets import load_from_disk

    results = collected["workdir"] / "results"
    out = tmp_path / "long.jsonl"
    proc = subprocess.run([str(SERVE_PY), str(ROOT / "collect_data.py"), "--results", str(results),
                           "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = jsonl_rows(out)
    expected = set()
    for d in results.glob("iter_*/initial_responses"):
        expected |= {(r["prompt"], r["initial_response"]) for r in load_from_disk(str(d))}
    for d in results.glob("iter_*/extended_responses"):
        expected |= {(r["prompt"], r["extended_response"]) for r in load_from_disk(str(d))}
    assert any("iter_10000" in str(d) for d in results.glob("iter_*/initial_responses"))
    assert {(r["query"], r["response"]) for r in rows} == expected and len(rows) == len(expected)
    assert all(set(r) == {"query", "response", "method"} and r["method"] == "self-lengthen" for r in rows)


@pytest.mark.slow
def test_sigterm_while_the_servers_start_leaves_nothing_running(tmp_path):
    """A scheduler's SIGTERM to run.sh's process group while the servers start: exit 143 and no server left."""
    env = env_with(SELF_LENGTHEN_API_PORT=18900, SELF_LENGTHEN_CONTROLLER_PORT=18901, SELF_LENGTHEN_WORKER_PORT=18902)
    running = run_sh(tmp_path, *TINY, "--max_iter=1", env=env, wait=False)
    worker_pid = tmp_path / "run" / "rank0" / "worker0.pid"
    deadline = time.monotonic() + 300
    while not worker_pid.exists():
        assert time.monotonic() < deadline and running.poll() is None, running.stdout.read()[-3000:]
        time.sleep(0.5)
    records = pid_records(tmp_path / "run" / "rank0")
    time.sleep(3)
    os.killpg(running.pid, signal.SIGTERM)
    out = running.communicate(timeout=300)[0]
    assert running.returncode == 143 and "Traceback" not in out, out[-3000:]
    assert records and not list((tmp_path / "run" / "rank0").glob("*.pid"))
    assert not [r for r in records if leader_alive(r)]


# --- two nodes on one machine -----------------------------------------------------------------------------------------

def two_node_env(rank: int, **extra) -> dict:
    return env_with(WORLD_SIZE=2, RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=29731,
                    SELF_LENGTHEN_API_KEY="two-node-test-key", SELF_LENGTHEN_API_PORT=18800,
                    SELF_LENGTHEN_CONTROLLER_PORT=18801, SELF_LENGTHEN_WORKER_PORT=18802 + 10 * rank,
                    VLLM_CPU_KVCACHE_SPACE=1, **extra)


def copy_synthesis(one_iteration, workdir: Path) -> Path:
    """The synthesis outputs the real model wrote in the one-node run, copied into `workdir` (to keep the suite's time
    in bounds): a run there goes straight to training."""
    import shutil

    source = one_iteration["workdir"] / "results" / "iter_1"
    target = workdir / "results" / "iter_1"
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name.startswith(("instructions", "initial_responses", "extended_responses")):
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target / item.name)
    return target


@pytest.mark.slow
def test_two_nodes_complete_one_iteration_with_data_parallel_training(one_iteration, tmp_path):
    """Two run.sh processes (RANK 0 and 1) on a shared workdir holding the one-node run's synthesis: both ranks meet
    at their barriers, rank 0 writes the data and configs, and both train gen_sft and ext_sft together,
    data-parallel over gloo. (Two ranks serving together is shown in test_cluster.py.)"""
    target = copy_synthesis(one_iteration, tmp_path)
    # one core each, as two 1-core nodes: two trainers with 2 threads each on 2 cores took 37 s a step
    ranks = {r: run_sh(tmp_path, *TINY, "--max_iter=1", env=two_node_env(r, OMP_NUM_THREADS=1), wait=False)
             for r in (0, 1)}
    outputs = {r: p.communicate(timeout=2400)[0] for r, p in ranks.items()}
    for r, p in ranks.items():
        assert p.returncode == 0, f"rank {r}:\n{outputs[r][-4000:]}"
    for name in ("gen_sft", "ext_sft"):
        assert (target / "lora" / name / "adapter_config.json").is_file()
        for r in (0, 1):
            log = (tmp_path / "logs" / f"train_iter1_{name}.rank{r}.log").read_text()
            assert "world size: 2" in log, log[-2000:]
    assert "training gen_sft on 2 node(s)" in outputs[1] and "iteration 1: complete" in outputs[1]
    assert (target / "_ITERATION_COMPLETE").is_file()


@pytest.mark.slow
def test_when_a_rank_fails_the_other_stops_with_a_clear_error(tmp_path):
    """Rank 1 fails (its model path is wrong); rank 0 stops at its next barrier, naming rank 1 and why."""
    zero = run_sh(tmp_path, *TINY, "--max_iter=1", env=two_node_env(0, SELF_LENGTHEN_BARRIER_TIMEOUT=300), wait=False)
    one = run_sh(tmp_path, "--base_model=/nonexistent/model", "--instruct_count=2", "--profile=tiny", "--max_iter=1",
                 env=two_node_env(1), timeout=300)
    assert one.returncode != 0 and "/nonexistent/model" in one.stderr
    out = zero.communicate(timeout=400)[0]
    assert zero.returncode != 0
    assert "another rank failed (rank1: --base_model=/nonexistent/model" in out


@pytest.mark.slow
def test_when_a_rank_is_killed_with_9_the_other_stops_at_its_heartbeat_timeout(one_iteration, tmp_path):
    """Rank 0 dies by kill -9 (it and every process under it, as a node that dies) while it prepares the training data,
    so it writes no failure marker. Rank 1, waiting for it at the barrier, sees rank 0's heartbeat stop and exits with
    one clear line, long before the barrier's 15-min timeout."""
    copy_synthesis(one_iteration, tmp_path)
    env = {"SELF_LENGTHEN_BARRIER_TIMEOUT": 900, "SELF_LENGTHEN_HEARTBEAT_TIMEOUT": 20}
    zero = run_sh(tmp_path, *TINY, "--max_iter=1", env=two_node_env(0, **env), wait=False)
    one = run_sh(tmp_path, *TINY, "--max_iter=1", env=two_node_env(1, **env), wait=False)
    try:
        sync = tmp_path / "results" / ".sync"
        # rank 1 waits at iter_1/data, and rank 0 is past the synthesis, preparing the data (with its heartbeat on:
        # a rank killed before its first beat may yet come, and is only named at the barrier's timeout)
        ready = [sync / "iter_1__data" / "rank1", sync / "iter_1__synthesis" / "rank0", sync / "alive-rank0"]
        deadline = time.monotonic() + 600
        while not all(p.exists() for p in ready):
            assert time.monotonic() < deadline and zero.poll() is None and one.poll() is None
            time.sleep(0.2)
        assert not (sync / "iter_1__data" / "rank0").exists()
        kill_tree(zero.pid)
        killed = time.monotonic()
        out = one.communicate(timeout=600)[0]
        assert one.returncode != 0
        assert time.monotonic() - killed < 120, out[-2000:]
        last = out.strip().splitlines()[-1]
        assert "stops at step 'iter_1/data': no heartbeat from rank 0" in last, out[-2000:]
    finally:
        for proc in (zero, one):
            if proc.poll() is None:
                kill_tree(proc.pid)


@pytest.mark.slow
def test_a_rank_that_never_comes_is_named_at_the_timeout(tmp_path):
    start = time.monotonic()
    zero = run_sh(tmp_path, *TINY, "--max_iter=1", env=two_node_env(0, SELF_LENGTHEN_BARRIER_TIMEOUT=20), timeout=300)
    assert zero.returncode != 0
    assert "rank(s) 1 never arrived" in zero.stderr and "iter_1/begin" in zero.stderr
    assert time.monotonic() - start < 200


SLEEPER = ("import signal, sys, time, pathlib\n"
           "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(sys.argv[1]).write_text('stopped'), sys.exit(1)))\n"
           "time.sleep(60)\n")


@pytest.mark.parametrize("failing", ["side", "main"])
def test_a_stage_run_beside_another_stops_it_when_it_fails(tmp_path, failing):
    """The held-out answers run beside step1: if either fails, the other gets SIGTERM (so it checkpoints) and the run
    fails with one line naming the one that failed."""
    from self_lengthen.errors import UsageError
    from self_lengthen.pipeline import run_beside

    py, marker = sys.executable, tmp_path / "stopped"
    fail = [py, "-c", "import time, sys; time.sleep(1); sys.exit(3)"]
    sleep = [py, "-c", SLEEPER, str(marker)]
    side, main = (fail, sleep) if failing == "side" else (sleep, fail)
    start = time.monotonic()
    with pytest.raises(UsageError) as err:
        run_beside([(side, "the side stage", tmp_path / "side.log")], main, "the main stage", cwd=tmp_path, timeout=60)
    assert time.monotonic() - start < 30
    assert f"the {failing} stage" in str(err.value) and "failed (exit 3)" in str(err.value)
    assert ("side.log" in str(err.value)) == (failing == "side")
    assert marker.read_text() == "stopped"


def test_a_stage_past_the_barrier_timeout_is_stopped_and_the_run_fails_saying_so(tmp_path):
    """Every wait has a timeout: a stage (or two beside each other) still running after the profile's barrier_timeout,
    which the other ranks would not wait past, gets SIGTERM, so it checkpoints what it finished."""
    from self_lengthen.errors import UsageError
    from self_lengthen.pipeline import run_beside, run_stage

    py, marker = sys.executable, tmp_path / "stopped"
    start = time.monotonic()
    with pytest.raises(UsageError) as err:
        run_stage([py, "-c", SLEEPER, str(marker)], "step2", cwd=tmp_path, timeout=2)
    assert time.monotonic() - start < 30 and marker.read_text() == "stopped"
    assert str(err.value).startswith("step2 ran past 2 s (the profile's barrier_timeout) and was stopped;")
    marker.unlink()
    start = time.monotonic()
    with pytest.raises(UsageError) as err:
        run_beside([([py, "-c", SLEEPER, str(marker)], "the held-out answers", tmp_path / "side.log")],
                   [py, "-c", "print('done')"], "step1", cwd=tmp_path, timeout=2)
    assert time.monotonic() - start < 30 and marker.read_text() == "stopped"
    assert str(err.value).startswith("the held-out answers ran past 2 s")


def test_stages_run_beside_another_write_their_output_to_their_logs(tmp_path, capfd):
    from self_lengthen.pipeline import run_beside

    py, said = sys.executable, []
    side = [py, "-c", "import sys, time; print(sys.argv[1], 'progress', file=sys.stderr); time.sleep(1); "
                      "print(sys.argv[1], 'done')"]
    main = [py, "-c", "print('main output')"]
    logs = {name: tmp_path / "logs" / f"{name}.log" for name in ("first", "second")}
    run_beside([([*side, name], f"the {name} side stage", log) for name, log in logs.items()], main, "the main stage",
               cwd=tmp_path, timeout=60, say=said.append)
    assert said == [*(f"the {name} side stage, beside the next stage (output: {log})" for name, log in logs.items()),
                    "the main stage"]
    for name, log in logs.items():
        text = log.read_text()
        assert f"{name} progress" in text and f"{name} done" in text and "main output" not in text
        assert ({"first", "second"} - {name}).pop() not in text
    out = capfd.readouterr()
    assert "main output" in out.out and "side" not in out.out + out.err


@pytest.mark.parametrize("mode", [None, "lora", "merged"])
def test_the_servers_are_started_with_the_chosen_adapter_mode(tmp_path, mode):
    """run.sh --adapter_mode reaches run_server.sh's parser as given (auto when not given)."""
    from types import SimpleNamespace

    from self_lengthen.pipeline import Pipeline, parse_args
    from self_lengthen.serve import cluster

    args = parse_args([f"--adapter_mode={mode}"] if mode else [])
    driver = SimpleNamespace(args=args, workdir=tmp_path, model_dir=tmp_path / "model", sync=SimpleNamespace(timeout=60))
    start = Pipeline.serve_cmd(driver, "start", 2)
    served = cluster.parse(start[start.index("start"):])
    assert (served.adapter_mode, served.iter, served.base_model) == (mode or "auto", 2, str(tmp_path / "model"))
    assert served.timeout == 60 and Path(served.workdir) == tmp_path


@pytest.mark.parametrize("mode", ["merged", "lora"])
def test_step0_runs_ahead_where_it_spares_the_later_iterations_an_engine(tmp_path, default_model, mode):
    """With merged copies (CPU) iteration 1 runs every iteration's step0, which asks only the base model, and the
    later iterations serve only the adapters; with LoRA requests the base model's engine is there anyway."""
    from self_lengthen.pipeline import Pipeline, parse_args
    from self_lengthen.serve import cluster
    from self_lengthen.stages.runner import MARKER

    pipe = Pipeline(parse_args([f"--workdir={tmp_path}", "--max_iter=3", f"--adapter_mode={mode}"]), ROOT / "llama")
    merged = mode == "merged"

    def instructions_done(k):
        (pipe.iter_dir(k) / "instructions").mkdir(parents=True)
        (pipe.iter_dir(k) / "instructions" / MARKER).write_text("")

    assert pipe.step0_iterations(1) == ([1, 2, 3] if merged else [1]) and pipe.serves_base(1)
    instructions_done(1)
    instructions_done(2)  # iteration 3's was stopped before it finished (a rerun after kill -9)
    assert pipe.step0_iterations(1) == ([3] if merged else [])
    assert pipe.serves_base(1) and pipe.serves_base(2)  # merged: iteration 2 still has iteration 3's step0 to run
    instructions_done(3)
    assert pipe.step0_iterations(2) == [] and pipe.serves_base(1)
    assert pipe.serves_base(2) == pipe.serves_base(3) == (not merged)
    start = pipe.serve_cmd("start", 1, pipe.serves_base(2))
    assert cluster.parse(start[start.index("start"):]).serve_base == (not merged)


@pytest.mark.parametrize("profile", ["gpu", "cpu-demo", "tiny", "study"])
def test_stage_options_follow_the_profile(tmp_path, profile):
    from self_lengthen.pipeline import stage_args
    from self_lengthen.stages import extend, generate, self_instruct
    from self_lengthen.profile import load_profile

    sizes = load_profile(profile)
    modules = {"self_instruct": self_instruct, "generate": generate, "extend": extend}
    for stage, module in modules.items():
        extra = ["--count", "3"] if stage == "self_instruct" else []
        args = module.parser().parse_args(stage_args(sizes, stage, 1, tmp_path, tmp_path, seed=0) + extra)
        # the method ends step1 and step2 once more than 95% of their items are finished; step0 runs to the end
        method = {"self_instruct": 1.0, "generate": 0.95, "extend": 0.95}[stage]
        assert args.finish_fraction == (sizes["generation"].get("finish_fraction") or {}).get(stage, method)
        tries = (sizes["generation"].get("max_tries") or {}).get(stage)
        if tries:
            assert args.max_tries == tries
        if stage == "self_instruct":
            assert args.judge_parse == ("strict" if profile == "gpu" else "lenient")
        else:  # the method's sampler on gpu; off where the default model keeps only a few rows (study: in step1)
            assert args.drop_short is (profile == "gpu" or (profile, stage) == ("study", "generate"))
        # the method drops what finishes past its 95%; cpu-demo keeps it in step1 and step2
        assert args.keep_in_flight is (profile == "cpu-demo" and stage != "self_instruct")
    assert args.attempts == sizes["generation"].get("extend_attempts")
    assert args.time_budget == (sizes["generation"].get("time_budget") or {}).get("extend")
    assert args.stop_when_grown is sizes["generation"].get("extend_stop_when_grown", False)  # the method: 3 rounds
    if profile == "cpu-demo":  # the method's end of step2 (its chains end together), what is in flight kept; 2 attempts
        assert stage == "extend" and args.finish_fraction == 0.95 and args.keep_in_flight and args.attempts is None
        assert args.max_tries == 1 and args.workers == 48 and args.stop_when_grown  # a try ends once past 1.2x
    if profile == "study":  # room for a Generator twice the base model's length, every held-out instruction
        assert "--count" not in stage_args(sizes, "heldout", 1, tmp_path, tmp_path, seed=0)
        assert sizes["generation"]["max_tokens"]["generate"] >= 2048


def test_a_profile_can_end_the_extenders_tries_once_grown(tmp_path):
    """`generation.extend_stop_when_grown` (not the method's; set in cpu-demo) reaches step2 and no other stage."""
    from self_lengthen.pipeline import stage_args
    from self_lengthen.profile import load_profile
    from self_lengthen.stages import extend

    sizes = load_profile("cpu-demo")
    given = {stage: "--stop_when_grown" in stage_args(sizes, stage, 1, tmp_path, tmp_path, seed=0)
             for stage in ("self_instruct", "generate", "extend", "heldout")}
    assert given == {"self_instruct": False, "generate": False, "extend": True, "heldout": False}
    assert extend.parser().parse_args(stage_args(sizes, "extend", 1, tmp_path, tmp_path, seed=0)).stop_when_grown


def test_a_profiles_sampling_reaches_step1_and_step2_but_not_the_heldout_answers(tmp_path):
    """`generation.sampling` replaces fields of the method's sampling in the stages whose texts are trained on;
    the Generator's held-out answers keep the method's sampling, so iterations stay comparable."""
    import yaml

    from self_lengthen.client import DEFAULT_SAMPLING, Client
    from self_lengthen.pipeline import stage_args
    from self_lengthen.profile import load_profile, parse_sampling
    from self_lengthen.stages import generate

    profile = yaml.safe_load((ROOT / "self_lengthen" / "profiles" / "cpu-demo.yaml").read_text())
    profile["generation"]["sampling"] = {"generate": {"temperature": 1.0, "top_k": -1}, "extend": {"top_p": 1.0}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(profile))
    sizes = load_profile(str(tmp_path / "mine.yaml"))
    options = {stage: stage_args(sizes, stage, 1, tmp_path, tmp_path, seed=0)
               for stage in ("self_instruct", "generate", "extend", "heldout")}
    given = {stage: opts[opts.index("--sampling") + 1] if "--sampling" in opts else None
             for stage, opts in options.items()}
    assert given == {"self_instruct": None, "generate": "temperature=1.0,top_k=-1", "extend": "top_p=1.0",
                     "heldout": None}
    args = generate.parser().parse_args(options["generate"])
    sent = Client("http://127.0.0.1:9/v1", api_key="", sampling=parse_sampling(args.sampling)).sampling
    assert sent == {**DEFAULT_SAMPLING, "temperature": 1.0, "top_k": -1}


def test_gpu_profile_trains_as_the_original(tmp_path):
    """LoRA rank 8, alpha 16, all linear layers, batch 1, no accumulation, lr 1e-4, cosine, 10% warm-up, 4 epochs,
    cutoff 16384, bf16, ZeRO-3 offload, continuing from the previous iteration's adapter."""
    import yaml

    from self_lengthen.flavour import Flavour
    from self_lengthen.profile import load_profile
    from self_lengthen.train import mk_config

    flavour = Flavour(ROOT / "qwen")
    previous = tmp_path / "results" / "iter_1" / "lora" / "gen_sft"
    previous.mkdir(parents=True)
    (previous / "adapter_config.json").write_text("{}")
    iter_dir = tmp_path / "results" / "iter_2"
    (iter_dir / "data").mkdir(parents=True)
    config = yaml.safe_load(mk_config(iter_dir, 2, "gen_sft", tmp_path / "model", flavour, load_profile("gpu"),
                                      "qwen", gpus=8).read_text())
    expected = {"lora_rank": 8, "lora_alpha": 16, "lora_target": "all", "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 1, "learning_rate": 1e-4, "lr_scheduler_type": "cosine",
                "warmup_steps": 0.1, "num_train_epochs": 4, "cutoff_len": 16384, "bf16": True,
                "adapter_name_or_path": str(previous)}
    assert {k: config.get(k) for k in expected} == expected
    assert config["deepspeed"].endswith("ds_z3_offload.json") and "disable_gradient_checkpointing" not in config
    offload = json.loads(open(config["deepspeed"]).read())["zero_optimization"]
    assert offload["stage"] == 3 and offload["offload_optimizer"]["device"] == "cpu"


def test_cpu_demo_trains_one_epoch_at_four_times_the_method_s_rate(tmp_path):
    """cpu-demo's departure (README): the method's 4 epochs at 1e-4 become 1 epoch at 4e-4, the profile's values
    over the template's; the schedule and the adapter otherwise the method's."""
    import yaml

    from self_lengthen.flavour import Flavour
    from self_lengthen.profile import load_profile
    from self_lengthen.train import mk_config

    iter_dir = tmp_path / "results" / "iter_1"
    (iter_dir / "data").mkdir(parents=True)
    config = yaml.safe_load(mk_config(iter_dir, 1, "gen_sft", tmp_path / "model", Flavour(ROOT / "llama"),
                                      load_profile("cpu-demo"), "llama3", gpus=1).read_text())
    expected = {"learning_rate": 4e-4, "num_train_epochs": 1, "lr_scheduler_type": "cosine", "warmup_steps": 0.1,
                "lora_rank": 8, "lora_alpha": 16, "lora_target": "all"}
    assert {k: config.get(k) for k in expected} == expected


def test_run_and_collect_choose_the_same_default_profile():
    from self_lengthen.profile import profile_name

    assert profile_name(None, gpus=4) == "gpu" and profile_name(None, gpus=0) == "cpu-demo"
    assert profile_name("tiny", gpus=4) == "tiny"
    for module in ("pipeline", "collect"):  # both ask profile_name, with the node's GPU count
        assert "profile_name(args.profile" in (ROOT / "self_lengthen" / f"{module}.py").read_text()
