"""Serving on the real stack: FastChat controller + extended API server + our vLLM worker, default model, LoRAs."""
import json
import time
from pathlib import Path

import pytest
import requests

from self_lengthen.client import Client, RequestRejected

pytestmark = pytest.mark.slow
NAMES = ["base", "gen_sft", "ext_sft"]
QUESTION = [{"role": "user", "content": "Write two sentences about a lighthouse."}]
GREEDY = {"temperature": 0, "max_tokens": 48, "repetition_penalty": 1.0, "top_k": -1, "top_p": 1.0}


@pytest.fixture(scope="module")
def client(served):
    return Client(served.base_url, retries=1)


def test_models_lists_base_and_both_adapters(client):
    assert sorted(client.models()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_chat_and_completion_succeed_for_every_served_name(client, name):
    chat = client.chat(name, QUESTION, max_tokens=24)
    done = client.complete(name, "The lighthouse keeper", max_tokens=24)
    assert chat.text.strip() and chat.completion_tokens > 0
    assert done.text.strip() and done.completion_tokens > 0


def test_lora_changes_greedy_output(client):
    outputs = {name: client.chat(name, QUESTION, **GREEDY).text for name in NAMES}
    assert outputs["base"] != outputs["gen_sft"]
    assert outputs["base"] != outputs["ext_sft"]
    assert outputs["gen_sft"] != outputs["ext_sft"]
    # and greedy decoding is deterministic, so the difference is the adapter's
    assert client.chat("base", QUESTION, **GREEDY).text == outputs["base"]


def test_repetition_penalty_reaches_the_engine_on_chat(client):
    plain = client.chat("base", QUESTION, **GREEDY).text
    penalised = client.chat("base", QUESTION, **{**GREEDY, "repetition_penalty": 1.8}).text
    assert plain != penalised


def test_repetition_penalty_reaches_the_engine_on_completions(client):
    prompt = "List the days of the week: Monday, Tuesday,"
    plain = client.complete("base", prompt, **GREEDY).text
    penalised = client.complete("base", prompt, **{**GREEDY, "repetition_penalty": 1.8}).text
    assert plain != penalised


def test_seed_makes_sampling_reproducible(client):
    kw = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 32}
    a = client.chat("base", QUESTION, seed=7, **kw).text
    b = client.chat("base", QUESTION, seed=7, **kw).text
    others = {client.chat("base", QUESTION, seed=s, **kw).text for s in (8, 9, 10)}
    assert a == b
    assert others != {a}


def test_a_seeded_prompt_longer_than_a_prefill_chunk_is_answered_and_the_engine_lives_on(client, default_model):
    """vLLM's CPU runner rewinds a seeded request's generator for each prefill chunk it discards, which torch's CPU
    generator refuses: with chunked prefill on, this prompt (over the 2,048 tokens of a chunk) killed the engine."""
    from transformers import AutoTokenizer

    text = " ".join(f"Stone {i} lies by the path, grey and cold." for i in range(300))
    assert len(AutoTokenizer.from_pretrained(default_model).encode(text)) > 2048
    kw = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 16}
    long_question = [{"role": "user", "content": text + "\nHow many stones are there?"}]
    a = client.chat("base", long_question, seed=7, **kw)
    b = client.chat("base", long_question, seed=7, **kw)
    assert a.text == b.text and a.completion_tokens > 0
    assert client.chat("base", QUESTION, max_tokens=8).completion_tokens > 0


def test_chat_prompt_is_byte_identical_to_the_chat_template(client, default_model):
    """Greedy chat output equals greedy completion of apply_chat_template's prompt, token counts included."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    r = requests.post(client.base_url + "/chat/completions", json={"model": "base", "messages": QUESTION, **GREEDY},
                      timeout=120).json()
    c = requests.post(client.base_url + "/completions", json={"model": "base", "prompt": prompt, **GREEDY},
                      timeout=120).json()
    assert r["choices"][0]["message"]["content"] == c["choices"][0]["text"]
    expected_ids = tok.apply_chat_template(QUESTION, tokenize=True, add_generation_prompt=True, return_dict=True)
    assert r["usage"]["prompt_tokens"] == len(expected_ids["input_ids"]) == c["usage"]["prompt_tokens"]


def _stream(url, payload):
    pieces = []
    with requests.post(url, json={**payload, "stream": True}, stream=True, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line or line == b"data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix(b"data: "))
            choice = chunk["choices"][0]
            pieces.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return pieces


def test_streaming_matches_non_streaming(client):
    chat = {"model": "gen_sft", "messages": QUESTION, **GREEDY}
    pieces = _stream(client.base_url + "/chat/completions", chat)
    assert len([p for p in pieces if p]) > 3
    assert "".join(pieces) == client.chat("gen_sft", QUESTION, **GREEDY).text
    done = {"model": "base", "prompt": "Once upon a time", **GREEDY}
    pieces = _stream(client.base_url + "/completions", done)
    assert "".join(pieces) == client.complete("base", "Once upon a time", **GREEDY).text


def test_unknown_model_gets_a_clear_4xx(client):
    with pytest.raises(RequestRejected) as err:
        client.chat("no_such_model", QUESTION, max_tokens=4)
    assert "no_such_model" in str(err.value) and "400" in str(err.value)


def _aborted(served) -> int:
    return requests.get(served.worker_url() + "/worker_stats", timeout=10).json()["aborted"]


def _wait_for_abort(served, before: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _aborted(served) <= before:
        time.sleep(0.5)
    return _aborted(served)


LONG = {"model": "base", "max_tokens": 3000, "ignore_eos": True}


def test_client_disconnect_aborts_a_streaming_request(client, served):
    before = _aborted(served)
    with requests.post(client.base_url + "/chat/completions", json={**LONG, "messages": QUESTION, "stream": True},
                       stream=True, timeout=60) as r:
        lines = (line for line in r.iter_lines() if line)
        next(lines), next(lines)  # the role chunk, then the first generated text: the engine is at work
    assert _wait_for_abort(served, before) > before


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_client_disconnect_aborts_a_non_streaming_request(client, served, path):
    before = _aborted(served)
    body = {**LONG, "messages": QUESTION} if path.startswith("/chat") else {**LONG, "prompt": "Once upon a time"}
    with pytest.raises(requests.Timeout):  # the client gives up long before 3000 tokens are written
        requests.post(client.base_url + path, json=body, timeout=4)
    assert _wait_for_abort(served, before) > before


def _worker_stats(served) -> dict:
    return requests.get(served.worker_url() + "/worker_stats", timeout=10).json()


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_the_worker_ends_a_request_whose_text_is_sure_to_be_rejected(client, served, path):
    """A reject_early request whose prefix already repeats ends at the first check (CHECK_EVERY tokens), with
    finish_reason "rejected"; the same request without the field runs on."""
    from conftest import DOOMED_PREFIX
    from self_lengthen.serve.worker import CHECK_EVERY

    ask = client.chat if path.startswith("/chat") else client.complete
    arg = QUESTION if path.startswith("/chat") else "The lighthouse keeper"
    kw = {"max_tokens": 64, "ignore_eos": True}
    before = _worker_stats(served)
    ended = ask("base", arg, reject_early={"prefix": DOOMED_PREFIX, "meta_words": []}, **kw)
    after = _worker_stats(served)
    assert (ended.finish_reason, ended.completion_tokens) == ("rejected", CHECK_EVERY)
    assert after["rejected_early"] == before["rejected_early"] + 1
    assert after["tokens_left_at_rejection"] == before["tokens_left_at_rejection"] + 64 - CHECK_EVERY
    assert after["aborted"] == before["aborted"]  # not counted as a client that went away
    full = ask("base", arg, **kw)
    assert (full.finish_reason, full.completion_tokens) == ("length", 64)
    # a prefix that does not repeat: the request runs to its end
    fine = ask("base", arg, reject_early={"prefix": "", "meta_words": []}, **kw)
    assert fine.finish_reason == "length" and fine.completion_tokens == 64


def test_a_malformed_reject_early_is_refused_with_a_clear_4xx(client):
    with pytest.raises(RequestRejected) as err:
        client.complete("base", "Once upon a time", max_tokens=8, reject_early={"prefix": 3})
    assert "reject_early must be" in str(err.value)


def test_adapters_are_served_as_merged_copies_on_cpu(served):
    """On CPU (vLLM runs LoRA without torch.compile there) each adapter is served by an engine of its own."""
    log = (served.workdir / "logs" / "worker0.log").read_text()
    assert "serving adapters as merged copies" in log
    assert len(list((served.workdir / "run" / "rank0" / "merged").glob("*/config.json"))) == 2


def test_a_busy_engine_logs_its_throughput_under_the_name_it_serves(client, served):
    """Every 10 s (the worker's --stats-interval) each busy engine writes vLLM's stats line into the worker log, led by
    the names it serves, in the form bench/engine_load.py reads; idle engines stay quiet."""
    import sys
    from datetime import datetime

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    from engine_load import read_stats

    log = served.workdir / "logs" / "worker0.log"
    client.complete("ext_sft", "The lighthouse keeper", max_tokens=32, ignore_eos=True)
    deadline, rows = time.monotonic() + 45, []
    while time.monotonic() < deadline and not any(r["names"] == "ext_sft" for r in rows):
        time.sleep(1)
        rows = read_stats([log], datetime.now().year)
    assert any(r["names"] == "ext_sft" and r["gen"] > 0 for r in rows)
    assert {r["names"] for r in rows} <= set(NAMES)  # one engine per name on CPU: each line names one


def test_without_the_base_model_two_engines_serve_the_adapters(tmp_path, default_model):
    """run_server.sh --no-serve_base (the iterations after the first, whose step0 ran ahead in iteration 1): on CPU
    the worker starts the adapters' two engines, not the base model's, and serves only their names."""
    import re

    from conftest import env_with, make_random_adapter, start_stack, stop_stack

    lora = tmp_path / "results" / "iter_1" / "lora"
    make_random_adapter(default_model, lora / "gen_sft", seed=1)
    make_random_adapter(default_model, lora / "ext_sft", seed=2)
    ports = ["--api_port=18100", "--controller_port=18101", "--worker_port=18102"]  # beside `served` and run.sh's
    try:
        proc = start_stack(tmp_path, 1, "--no-serve_base", "--timeout=800", *ports,
                           env=env_with(VLLM_CPU_KVCACHE_SPACE=1))
        assert proc.returncode == 0, proc.stderr
        assert "serving gen_sft, ext_sft at http://127.0.0.1:18100/v1" in proc.stdout
        client = Client("http://127.0.0.1:18100/v1", retries=1)
        assert sorted(client.models()) == ["ext_sft", "gen_sft"]
        for name in ("gen_sft", "ext_sft"):
            assert client.chat(name, QUESTION, max_tokens=8).completion_tokens > 0
        log = (tmp_path / "logs" / "worker0.log").read_text()
        assert re.findall(r"starting the engine for (\w+)", log) == ["gen_sft", "ext_sft"]
    finally:
        assert stop_stack(tmp_path).returncode == 0


def test_a_merged_copy_equals_the_adapter_applied_and_is_made_once(tmp_path, default_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import make_random_adapter
    from self_lengthen.serve.worker import merged_model

    adapter = make_random_adapter(default_model, tmp_path / "a", seed=3)
    merged = merged_model(default_model, adapter, tmp_path / "merged")
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert merged_model(default_model, adapter, tmp_path / "merged") == merged  # cached: not merged again
    assert (merged / "model.safetensors").stat().st_mtime_ns == stamp
    other = make_random_adapter(default_model, tmp_path / "b", seed=4)
    assert merged_model(default_model, other, tmp_path / "merged") != merged  # keyed by the adapter's content
    assert not list((tmp_path / "merged").glob(".partial-*"))

    ids = AutoTokenizer.from_pretrained(default_model)("The lighthouse keeper climbed the stairs",
                                                       return_tensors="pt").input_ids
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    with torch.no_grad():
        plain = load(default_model)(ids).logits
        expected = PeftModel.from_pretrained(load(default_model), str(adapter))(ids).logits
        got = load(merged)(ids).logits
    # The adapter moves the logits far; the merged copy lands where the adapter does.
    assert (got - expected).abs().max() < 0.1 * (plain - expected).abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_a_merged_copy_keeps_a_small_trained_change(tmp_path, default_model):
    """Trained at lr 1e-4, an adapter moves most weights by less than half a bfloat16 step (about 2e-5 in a demo).
    Rounded to nearest, they fall back to the base's weights and the copy loses much of what was trained; rounded
    stochastically, the copy's next-token distributions stay within a few percent of the adapter's."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from self_lengthen.serve.worker import merged_model

    text = ("The lighthouse keeper climbed the stairs every evening at dusk. He lit the lamp, wound the clockwork "
            "that turned the lens, and wrote the weather into his log: wind from the west, a long swell, rain.")
    ids = AutoTokenizer.from_pretrained(default_model)(text, return_tensors="pt").input_ids
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype="auto").float().eval()  # noqa: E731
    torch.manual_seed(0)
    model = get_peft_model(load(default_model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=1e-4)
    for _ in range(5):  # a few steps of real training, as LLaMA-Factory takes them
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "a")

    def log_probs(m):
        with torch.no_grad():
            return torch.log_softmax(m(ids).logits[0], -1)

    def kl(p, q):  # mean over positions of KL(p || q)
        return float((p.exp() * (p - q)).sum(-1).mean())

    adapter = PeftModel.from_pretrained(load(default_model), str(tmp_path / "a"))
    expected = log_probs(adapter)
    moved = kl(expected, log_probs(load(default_model)))
    nearest = kl(expected, log_probs(adapter.merge_and_unload().to(torch.bfloat16).float()))
    got = kl(expected, log_probs(load(merged_model(default_model, tmp_path / "a", tmp_path / "merged"))))
    assert moved > 1e-3  # the training changed the model
    assert nearest > 0.1 * moved  # rounding to nearest would undo a good part of it (about 30%)
    assert got < 0.02 * moved  # the served copy keeps it


def test_the_engines_run_in_float32_on_a_cpu_without_native_bfloat16():
    """vLLM falls back to plain torch matmuls for bfloat16 on such a CPU (AVX2): 15.2 against 52.4 tok/s."""
    from self_lengthen.serve.worker import copy_dtype, engine_dtype

    assert engine_dtype("auto", on_cpu=True, native_bfloat16=False) == "float32"
    assert engine_dtype("auto", on_cpu=True, native_bfloat16=True) == "bfloat16"
    assert engine_dtype("auto", on_cpu=False, native_bfloat16=False) == "bfloat16"  # GPUs
    assert engine_dtype("bfloat16", on_cpu=True, native_bfloat16=False) == "bfloat16"  # as asked
    assert (copy_dtype("bfloat16"), copy_dtype("float16"), copy_dtype("float32")) == ("bfloat16", "bfloat16", "float32")


def test_the_served_engines_and_copies_are_in_this_machines_dtype(served):
    from safetensors import safe_open

    from self_lengthen.serve.worker import copy_dtype, served_dtype

    dtype = served_dtype()
    assert f"engines in {dtype}" in (served.workdir / "logs" / "worker0.log").read_text()
    for copy in (served.workdir / "run" / "rank0" / "merged").glob("*/model.safetensors"):
        with safe_open(str(copy), "pt") as f:
            assert str(f.get_tensor(next(iter(f.keys()))).dtype) == f"torch.{copy_dtype(dtype)}"


def test_a_float32_copy_is_the_exact_merge(tmp_path, default_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from conftest import make_random_adapter
    from self_lengthen.serve.worker import merged_model

    adapter = make_random_adapter(default_model, tmp_path / "a", seed=3)
    exact = merged_model(default_model, adapter, tmp_path / "merged", "float32")
    assert exact != merged_model(default_model, adapter, tmp_path / "merged")  # the bfloat16 copy is another
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # noqa: E731
    expected = PeftModel.from_pretrained(load(default_model), str(adapter)).merge_and_unload().state_dict()
    got = load(exact).state_dict()
    assert all(torch.equal(got[name], weight) for name, weight in expected.items())


def test_merged_engines_share_the_kv_budget_but_get_at_least_2_gib():
    from self_lengthen.serve.worker import merged_kv_space

    assert merged_kv_space(4, 1) == 4  # one engine: the whole budget
    assert merged_kv_space(4, 3) == 2  # iteration 2 on CPU: 4 // 3 would leave 1 GiB, too small for 32 requests
    assert merged_kv_space(12, 3) == 4
    assert merged_kv_space(1, 3) == 1  # never more than the budget


def test_the_cpu_engine_runs_with_tcmalloc_and_intel_openmp(served):
    """vLLM's CPU guide asks for both preloaded (1.03-1.05x the engine's tok/s, bench/RESULTS.md 2026-12-05); `make
    setup` installs tcmalloc where it may. The worker and every process it started, the engine's included, have both
    mapped."""
    import psutil

    from conftest import setup_installs_tcmalloc
    from self_lengthen.devices import ENGINE_PRELOAD, cpu_preload
    from self_lengthen.serve.cluster import engine_env_defaults
    from self_lengthen.serve.procs import pid_records

    preload = cpu_preload(ENGINE_PRELOAD)
    if setup_installs_tcmalloc():
        assert preload, f"{ENGINE_PRELOAD} not all found: did `make setup` (scripts/setup_system.sh) run?"
    elif not preload:  # elsewhere the engine runs without them, and must not be told to preload them
        assert "LD_PRELOAD" not in engine_env_defaults(0)
        return
    assert engine_env_defaults(0)["LD_PRELOAD"] == preload
    assert "LD_PRELOAD" not in engine_env_defaults(1)  # GPU engines: vLLM's own choice
    worker = next(r for r in pid_records(served.workdir / "run" / "rank0") if r["name"] == "worker0")
    process = psutil.Process(worker["pid"])
    members = [process.pid] + [child.pid for child in process.children(recursive=True)]
    assert len(members) >= 2, members  # the worker and its engine's processes
    for pid in members:
        maps = Path(f"/proc/{pid}/maps").read_text()
        for name in ENGINE_PRELOAD:
            assert name in maps, f"{name} not mapped in process {pid} of the worker's group"


def test_without_one_of_the_libraries_nothing_is_preloaded(monkeypatch):
    from self_lengthen import train
    from self_lengthen.devices import ENGINE_PRELOAD, cpu_preload
    from self_lengthen.dist import DistEnv
    from self_lengthen.serve import cluster

    missing = (*ENGINE_PRELOAD, "libno-such-library.so.9")
    assert cpu_preload(missing) is None
    monkeypatch.setattr(cluster, "ENGINE_PRELOAD", missing)
    monkeypatch.setattr(train, "TRAINING_PRELOAD", missing)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert "LD_PRELOAD" not in cluster.engine_env_defaults(0)
    assert "LD_PRELOAD" not in train.trainer_env(DistEnv(), 0)
    assert "LD_PRELOAD" not in train.torchrun_env(DistEnv(world_size=2), 0)


def test_on_a_small_cpu_the_engine_uses_every_core(served):
    """vLLM keeps one core for its scheduler by default; on a machine of up to 4 CPUs our engines take them all
    (1.5x the tokens/s on 2 cores, bench/RESULTS.md)."""
    import os

    from self_lengthen.serve.cluster import SMALL_CPU_COUNT, engine_env_defaults

    cpus = sorted(os.sched_getaffinity(0))
    log = (served.workdir / "logs" / "worker0.log").read_text()
    if len(cpus) <= SMALL_CPU_COUNT:
        assert engine_env_defaults(0)["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
        assert f"core ids={cpus}" in log and "reserved_cpus=[]" in log
    else:
        assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_env_defaults(0)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in engine_env_defaults(1)  # GPUs: vLLM's own choice


def test_the_engines_environment_fills_in_our_defaults_and_keeps_the_user_s_own(monkeypatch):
    """Our workers and the benches' engines start with engine_env(): our settings where the user set none."""
    import os

    from self_lengthen.serve.cluster import engine_env, engine_env_defaults, gpu_count

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "7")
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    env = engine_env()
    assert engine_env_defaults(gpu_count())["VLLM_CPU_KVCACHE_SPACE"] != "7"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "7"
    assert env["VLLM_CACHE_ROOT"] == engine_env_defaults(gpu_count())["VLLM_CACHE_ROOT"]
    assert env["PATH"] == os.environ["PATH"]


def test_tcmalloc_is_not_required_where_the_user_turned_set_up_s_apt_get_off(monkeypatch):
    from conftest import setup_installs_tcmalloc

    monkeypatch.setenv("SELF_LENGTHEN_NO_APT", "1")  # scripts/setup_system.sh then installs nothing
    assert not setup_installs_tcmalloc()


def test_cpu_engines_run_eager(served):
    """On CPU the engines skip torch.compile: no faster compiled, and twice as long to build (engine_defaults)."""
    from self_lengthen.serve.worker import engine_defaults, vllm_on_cpu

    if not vllm_on_cpu():
        assert "enforce_eager" not in engine_defaults()  # GPUs keep vLLM's compiled model and CUDA graphs
        return
    assert engine_defaults()["enforce_eager"] is True
    log = (served.workdir / "logs" / "worker0.log").read_text()
    configs = [line for line in log.splitlines() if "Initializing a V1 LLM engine" in line]
    assert configs and all("enforce_eager=True" in line for line in configs), configs[:1]
