"""run_server.sh / stop_server.sh: failures are clear and fast, and stopping leaves nothing behind."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import ROOT, env_with, start_stack, stop_stack
from self_lengthen.serve.ports import port_in_use
from self_lengthen.serve.procs import group_alive, pid_records


def records(workdir, rank=0):
    return pid_records(workdir / "run" / f"rank{rank}")


def test_missing_adapter_fails_fast_naming_the_path(tmp_path, default_model):
    t0 = time.monotonic()
    proc = start_stack(tmp_path, 2, "--timeout=60", timeout=120)
    assert proc.returncode != 0
    assert str(tmp_path / "results" / "iter_2" / "lora" / "gen_sft") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30
    assert records(tmp_path) == []


def test_serving_no_base_model_and_no_adapters_is_refused_before_anything_starts(tmp_path, default_model):
    proc = start_stack(tmp_path, 0, "--no-serve_base", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-serve_base serves only adapters: give --iter=K (1 or more)" in lines[0]
    assert records(tmp_path) == []


@pytest.mark.parametrize("names", ["extender", "gen_sft,base", ","])
def test_adapters_must_name_the_trained_adapters(tmp_path, default_model, names):
    proc = start_stack(tmp_path, 1, f"--adapters={names}", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"argument --adapters: {names!r}: name one or more of gen_sft, ext_sft" in lines[0]
    assert records(tmp_path) == []


@pytest.mark.parametrize("option,needle", [
    ("--api_port=0", "argument --api_port: 0 must be at least 1"),
    ("--worker_port=70000", "argument --worker_port: 70000 must be at most 65535"),
    ("--controller_port=http", "argument --controller_port: 'http' is not a whole number"),
    ("--max_model_len=-4", "argument --max_model_len: -4 must be at least 1"),
])
def test_bad_ports_get_one_line_before_anything_starts(tmp_path, option, needle):
    """Before, --api_port=0 started every server and then failed probing port 80."""
    proc = start_stack(tmp_path, 0, option, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "logs").exists() and records(tmp_path) == []


@pytest.mark.parametrize("option,needle", [
    ("--api_port=21002", "--api_port=21002 is also a worker's port (--worker_port=21002, 1 worker(s))"),
    ("--controller_port=8000", "--api_port and --controller_port are both 8000"),
])
def test_servers_sharing_a_port_get_one_line_before_anything_starts(tmp_path, default_model, option, needle):
    """Before, the controller and the API server started and the worker then failed, blaming an earlier run."""
    proc = start_stack(tmp_path, 0, option, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert records(tmp_path) == []


def test_worker_ports_stop_at_65535():
    """One port per worker (per GPU on a node): the last must exist; before, the bind failed with its own error."""
    from types import SimpleNamespace

    from self_lengthen.errors import UsageError
    from self_lengthen.serve.cluster import worker_ports

    args = SimpleNamespace(worker_port=65534, api_port=8000, controller_port=21001)
    assert worker_ports(args, 2) == [65534, 65535]
    with pytest.raises(UsageError, match=r"--worker_port=65534: 3 workers need ports 65534-65536, past 65535; "
                                         r"pick a --worker_port of at most 65533"):
        worker_ports(args, 3)
    with pytest.raises(UsageError, match=r"--controller_port=21001 is also a worker's port"):
        worker_ports(SimpleNamespace(worker_port=21000, api_port=8000, controller_port=21001), 4)


def test_only_the_adapters_named_must_exist(tmp_path):
    from self_lengthen.errors import UsageError
    from self_lengthen.serve.cluster import adapter_dirs

    gen = tmp_path / "results" / "iter_1" / "lora" / "gen_sft"
    gen.mkdir(parents=True)
    (gen / "adapter_config.json").write_text("{}")
    with pytest.raises(UsageError, match="adapter ext_sft not found"):
        adapter_dirs(tmp_path, 1)  # both, by default
    # gen_sft alone is served (as run_collect_data.sh serves it: the collect test in test_pipeline.py)
    assert adapter_dirs(tmp_path, 1, ("gen_sft",)) == {"gen_sft": gen}


def test_port_in_use_gets_a_clear_error_and_nothing_is_left_running(tmp_path, default_model):
    ports = ["--api_port=18500", "--controller_port=18501", "--worker_port=18502"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 18500))
        busy.listen()
        proc = start_stack(tmp_path, 0, "--timeout=60", *ports, timeout=120)
    assert proc.returncode != 0
    assert "port 18500" in proc.stderr and "already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert records(tmp_path) == []  # the controller it had started was stopped again
    assert port_in_use("127.0.0.1", 18501) is None


@pytest.mark.slow
def test_worker_killed_during_startup_is_reported_and_cleaned_up(tmp_path, default_model):
    ports = ["--api_port=18600", "--controller_port=18601", "--worker_port=18602"]
    proc = subprocess.Popen(
        ["bash", str(ROOT / "llama" / "run_server.sh"), "--base_model=default", "--iter=0", f"--workdir={tmp_path}",
         "--timeout=600", *ports],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_with(VLLM_CPU_KVCACHE_SPACE=1))
    pid_file = tmp_path / "run" / "rank0" / "worker0.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(8)  # let the engine start spawning its children
    worker = json.loads(pid_file.read_text())
    os.kill(worker["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "worker0 exited with code -9" in err
    stop = stop_stack(tmp_path)
    assert stop.returncode == 0, stop.stderr
    for rec in [worker, *records(tmp_path)]:
        assert not group_alive(rec["pgid"])
    for port in (18600, 18601, 18602):
        assert port_in_use("127.0.0.1", port) is None


@pytest.mark.slow
def test_two_ranks_share_one_controller_and_both_serve(tmp_path, default_model):
    """Two nodes simulated on loopback: rank 0 runs controller + API server + a worker, rank 1 a worker."""
    key = "test-key-" + os.urandom(6).hex()
    common = dict(WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", SELF_LENGTHEN_API_KEY=key, VLLM_CPU_KVCACHE_SPACE=1)
    ports = ["--api_port=18700", "--controller_port=18701"]
    envs = {rank: env_with(RANK=rank, **common) for rank in (0, 1)}
    with ThreadPoolExecutor(2) as pool:
        runs = {rank: pool.submit(start_stack, tmp_path, 0, "--timeout=800", *ports, f"--worker_port={18702 + 10 * rank}",
                                  env=envs[rank]) for rank in (0, 1)}
        results = {rank: f.result() for rank, f in runs.items()}
    try:
        for rank, proc in results.items():
            assert proc.returncode == 0, f"rank {rank}: {proc.stderr}"
        auth = {"Authorization": f"Bearer {key}"}
        # every port refuses a call without the key: the controller, each worker, the API server
        assert requests.post("http://127.0.0.1:18701/list_workers", timeout=10).status_code == 401
        assert requests.post("http://127.0.0.1:18701/register_worker", timeout=10,
                             json={"worker_name": "http://127.0.0.1:9", "check_heart_beat": False}).status_code == 401
        workers = requests.post("http://127.0.0.1:18701/list_workers", headers=auth, timeout=10).json()
        assert sorted(workers) == ["http://127.0.0.1:18702", "http://127.0.0.1:18712"]
        generate = {"model": "base", "prompt": "Hello", "max_new_tokens": 4, "temperature": 0}
        for addr in workers:
            for path in ("/worker_generate", "/worker_generate_stream", "/worker_get_status", "/count_token"):
                assert requests.post(addr + path, json=generate, timeout=30).status_code == 401, addr + path
            # ... and with the key each worker serves requests itself
            out = requests.post(addr + "/worker_generate", json=generate, headers=auth, timeout=120).json()
            assert out["error_code"] == 0 and out["text"]
        url = "http://127.0.0.1:18700/v1/completions"
        body = {"model": "base", "prompt": "Hello", "max_tokens": 4}
        assert requests.post(url, json=body, timeout=60).status_code == 401
        assert requests.post("http://127.0.0.1:18700/api/v1/token_check", timeout=60,
                             json={"prompts": [{"model": "base", "prompt": "Hi", "max_tokens": 1}]}).status_code == 401
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: requests.post(url, json=body, headers=auth, timeout=120).status_code, range(8)))
        assert codes == [200] * 8
        # the key is in no log file and on no process's command line
        for log in (tmp_path / "logs").iterdir():
            assert key not in log.read_text(errors="replace"), log
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert key.encode() not in cmdline.read_bytes(), cmdline
            except OSError:
                pass  # a process that ended meanwhile
        # a worker killed with -9 is reported by status, and stop_server.sh still cleans up
        rank1 = records(tmp_path, 1)
        os.kill(rank1[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30  # a SIGKILL lands asynchronously (later, if the process is in the kernel)
        while True:
            status = subprocess.run([sys.executable, "-m", "self_lengthen.serve.cluster", "status",
                                     f"--workdir={tmp_path}"], capture_output=True, text=True, env=envs[1], timeout=60)
            if status.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status.returncode != 0 and "worker0.rank1" in status.stderr and "NOT RUNNING" in status.stderr
    finally:
        all_records = records(tmp_path, 0) + records(tmp_path, 1)
        for rank in (0, 1):
            stop = stop_stack(tmp_path, env=envs[rank])
            assert stop.returncode == 0, stop.stderr
    for rec in all_records:
        assert not group_alive(rec["pgid"]), rec["name"]
    for port in (18700, 18701, 18702, 18712):
        assert port_in_use("127.0.0.1", port) is None


@pytest.mark.slow
def test_host_on_one_node_puts_every_server_at_that_address_and_a_key_guards_every_port(tmp_path, default_model):
    """--host=127.0.0.2 (loopback, not the default) with a key from a file: the servers find each other there, the
    stack is ready, and the controller, the worker and the API server each refuse a call without the key."""
    ports = ["--api_port=18650", "--controller_port=18651", "--worker_port=18652"]
    key = "host-key-" + os.urandom(6).hex()
    (tmp_path / "key").write_text(key + "\n")
    env = {k: v for k, v in env_with(VLLM_CPU_KVCACHE_SPACE=1).items() if k != "SELF_LENGTHEN_API_KEY"}
    t0 = time.monotonic()
    proc = start_stack(tmp_path, 0, "--timeout=300", "--host=127.0.0.2", f"--api_key_file={tmp_path / 'key'}", *ports,
                       env=env, timeout=400)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert time.monotonic() - t0 < 300
        auth = {"Authorization": f"Bearer {key}"}
        calls = [("http://127.0.0.2:18650/v1/completions", {"model": "base", "prompt": "Hello", "max_tokens": 2}),
                 ("http://127.0.0.2:18651/list_workers", None),
                 ("http://127.0.0.2:18652/worker_generate", {"model": "base", "prompt": "Hello", "max_new_tokens": 2})]
        for url, body in calls:
            assert requests.post(url, json=body, timeout=60).status_code == 401, url
            r = requests.post(url, json=body, headers=auth, timeout=120)
            assert r.status_code == 200, url
        assert port_in_use("127.0.0.1", 18650) is None  # nothing on the default address
    finally:
        stop_stack(tmp_path)
    for log in (tmp_path / "logs").iterdir():
        assert key not in log.read_text(errors="replace"), log


def test_a_network_host_on_one_node_needs_a_key(tmp_path, default_model):
    env = {k: v for k, v in os.environ.items() if k != "SELF_LENGTHEN_API_KEY"}
    proc = start_stack(tmp_path, 0, "--timeout=60", "--host=10.1.2.3", env=env, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--host=10.1.2.3 is a network address" in proc.stderr and "SELF_LENGTHEN_API_KEY" in proc.stderr
    assert records(tmp_path) == []
