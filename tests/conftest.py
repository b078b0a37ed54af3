"""Shared fixtures. Heavy things (the converted model, a served stack) are built once per session."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE_PY = ROOT / ".venv" / "bin" / "python"
TRAIN_PY = ROOT / ".venv-train" / "bin" / "python"

sys.path.insert(0, str(ROOT))
# FastChat modules imported by tests write their log files into $LOGDIR (default: the current directory).
os.environ.setdefault("LOGDIR", tempfile.mkdtemp(prefix="self-lengthen-test-logs-"))


def jsonl_rows(path) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def one_error_line(proc) -> str:
    """The one `error:` line of a command that failed on bad input, with no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="session")
def default_model() -> Path:
    from self_lengthen.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


# English text long enough that 64 tokens cannot make a fifth of it ideographs, already repeating a 10-gram: a
# reject_early request after it is ended at the worker's first check.
DOOMED_PREFIX = ("The harbour wakes before the town does, and the gulls are the first to know it. " * 2
                 + "Fishermen check their nets, count their floats and argue about the weather over tea. " * 6)


def setup_installs_tcmalloc() -> bool:
    """Whether `make setup` installs tcmalloc here (scripts/setup_system.sh: as root with apt-get, unless
    SELF_LENGTHEN_NO_APT=1); where it does, the CPU engine and training must run with it."""
    import shutil

    return os.environ.get("SELF_LENGTHEN_NO_APT") != "1" and os.geteuid() == 0 and bool(shutil.which("apt-get"))


def kill_9_after_lines(running: subprocess.Popen, path: Path, lines: int, timeout: float = 120) -> int:
    """Wait until `path` (a checkpoint or journal) holds `lines` lines, then kill -9 `running` and reap it. Fails if
    it ends first or `timeout` seconds pass. Returns the lines the file holds after the kill."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= lines):
        assert running.poll() is None and time.monotonic() < deadline, running.stderr.read()[-2000:]
        time.sleep(0.02)
    os.kill(running.pid, signal.SIGKILL)
    running.communicate(timeout=60)
    return path.read_bytes().count(b"\n")


def env_with(**extra) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def make_random_adapter(base: Path, out: Path, seed: int, rank: int = 8) -> Path:
    """A real PEFT LoRA adapter with random (non-zero) weights, so it visibly changes the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


class Stack:
    """A served stack started with run_server.sh in `workdir`, stopped with stop_server.sh."""

    def __init__(self, workdir: Path, api_port: int, worker_port: int):
        self.workdir = workdir
        self.base_url = f"http://127.0.0.1:{api_port}/v1"
        self.worker_port = worker_port

    def worker_url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.worker_port + i}"


def start_stack(workdir: Path, iteration: int, *extra: str, env=None, timeout: int = 900):
    import subprocess

    return subprocess.run(
        ["bash", str(ROOT / "llama" / "run_server.sh"), "--base_model=default", f"--iter={iteration}",
         f"--workdir={workdir}", *extra],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def stop_stack(workdir: Path, env=None):
    import subprocess

    return subprocess.run(["bash", str(ROOT / "llama" / "stop_server.sh"), f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=180, env=env)


@pytest.fixture(scope="session")
def served(tmp_path_factory, default_model):
    """One served stack for the whole session: base + random gen_sft and ext_sft adapters (iteration 1)."""
    workdir = tmp_path_factory.mktemp("served")
    lora = workdir / "results" / "iter_1" / "lora"
    make_random_adapter(default_model, lora / "gen_sft", seed=1)
    make_random_adapter(default_model, lora / "ext_sft", seed=2)
    # Ports of its own, so that tests running the whole pipeline (default ports) can run beside it.
    ports = ["--api_port=18000", "--controller_port=18001", "--worker_port=18002"]
    # 1 GiB of KV cache per merged engine (3 of them): memory for the stacks other tests start beside this one.
    proc = start_stack(workdir, 1, "--timeout=800", *ports, env=env_with(VLLM_CPU_KVCACHE_SPACE=1))
    if proc.returncode != 0:
        stop_stack(workdir)
        pytest.fail(f"run_server.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    yield Stack(workdir, api_port=18000, worker_port=18002)
    out = stop_stack(workdir)
    assert out.returncode == 0, out.stderr
