"""Foundation: the two environments and the embedded default model, all real."""
import json
import shutil
import subprocess

import pytest

from conftest import SERVE_PY, TRAIN_PY, env_with


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)


def test_default_model_tokenizer_is_chatml_with_im_end_eos(default_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")
    config = json.loads((default_model / "config.json").read_text())
    assert config["eos_token_id"] == 2 and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config


@pytest.mark.slow
def test_default_model_answers_paris(default_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_reuses_the_cache(default_model):
    weights = default_model / "model.safetensors"
    before = weights.stat().st_mtime_ns
    proc = run([str(SERVE_PY), "-m", "self_lengthen.default_model"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(default_model)
    assert "converting" not in proc.stderr
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_truncated_model_dir_is_rebuilt(default_model, tmp_path):
    from self_lengthen.default_model import MODEL_NAME, is_complete

    damaged = tmp_path / "models" / MODEL_NAME
    shutil.copytree(default_model, damaged)
    with open(damaged / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert not is_complete(damaged)
    proc = run([str(SERVE_PY), "-m", "self_lengthen.default_model"], env=env_with(SELF_LENGTHEN_HOME=tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "converting" in proc.stderr
    assert proc.stdout.strip() == str(damaged)
    assert is_complete(damaged)
    assert (damaged / "model.safetensors").stat().st_size == (default_model / "model.safetensors").stat().st_size
    assert not [p for p in damaged.parent.iterdir() if p.name.startswith(f".{MODEL_NAME}.") and p.is_dir()]


def test_bad_base_model_gets_one_clear_line(tmp_path):
    proc = run([str(SERVE_PY), "-m", "self_lengthen.default_model", f"--base_model={tmp_path}/nope"])
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--base_model" in lines[0] and "nope" in lines[0]
    assert "Traceback" not in proc.stderr


def test_serving_env_imports_vllm_fastchat_and_package():
    proc = run([str(SERVE_PY), "-c", "import vllm, fastchat, self_lengthen, fastchat.serve.base_model_worker; print('ok')"])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_training_env_runs_llamafactory():
    proc = run([str(TRAIN_PY.parent / "llamafactory-cli"), "version"])
    assert proc.returncode == 0 and "0.9.5" in proc.stdout, proc.stderr[-2000:]
    proc = run([str(TRAIN_PY), "-c", "import llamafactory.train.tuner; print('ok')"])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


@pytest.mark.parametrize("python", [SERVE_PY, TRAIN_PY], ids=["serve", "train"])
def test_torch_is_cpu_build_and_no_nvidia_package(python):
    import os

    if os.path.exists("/dev/nvidia0"):
        pytest.skip("GPU node: the CUDA build is expected here")
    code = (
        "import importlib.metadata as md, torch, json;"
        "print(json.dumps([torch.__version__, sorted(d.metadata['Name'] for d in md.distributions()"
        " if d.metadata['Name'].lower().startswith('nvidia'))]))"
    )
    proc = run([str(python), "-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, nvidia = json.loads(proc.stdout.strip().splitlines()[-1])
    assert version.endswith("+cpu")
    assert nvidia == []
