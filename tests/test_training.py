"""Training with the real LLaMA-Factory in the training env, on the default model and a tiny mk_data output."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TRAIN_PY, setup_installs_tcmalloc
from self_lengthen.dist import DistEnv
from self_lengthen.flavour import Flavour, PromptBuilder
from self_lengthen.profile import load_profile
from self_lengthen.stages.runner import save_dataset
from self_lengthen.train import (MODELS, cut_stats, drop_lines, mk_config, mk_data, pick_template,
                                 publish_adapter, tokenize, train_adapter)

pytestmark = pytest.mark.slow
ROWS = [{"prompt": f"Write about the history of bridge number {i}.",
         "initial_response": f"Bridge {i} is old.\nIt crosses a river.\nPeople like it.\nIt was repaired twice.",
         "extended_response": f"Bridge {i} is very old; its first stones were laid centuries ago.\n\n"
                              f"It crosses a wide river, joining two towns that once traded across it.\n\n"
                              f"People still like it and walk over it every evening."} for i in range(6)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, default_model):
    """iteration 1 data, config and a trained gen_sft adapter (learning rate raised so 4 steps leave a mark)."""
    workdir = tmp_path_factory.mktemp("train")
    iter_dir = workdir / "results" / "iter_1"
    save_dataset(ROWS, ["prompt", "initial_response", "extended_response"], iter_dir / "extended_responses")
    flavour = Flavour(ROOT / "llama")
    from transformers import AutoTokenizer

    prompts = PromptBuilder(flavour, AutoTokenizer.from_pretrained(default_model))
    template, system = pick_template(default_model, flavour)
    data_dir = mk_data(iter_dir, prompts, system, seed=0)
    profile = load_profile("tiny")
    profile["training"]["per_device_train_batch_size"] = 2  # as cpu-demo: batches grouped by length
    configs = {m: mk_config(iter_dir, 1, m, default_model, flavour, profile, template, gpus=0) for m in MODELS}
    config = yaml.safe_load(configs["gen_sft"].read_text())
    config.update(learning_rate=5e-3, max_steps=4)
    configs["gen_sft"].write_text(yaml.safe_dump(config))
    tokenize([configs["gen_sft"]], workdir / "logs" / "tok.log")
    train_adapter(configs["gen_sft"], DistEnv(), 0, workdir / "logs" / "train.log")
    adapter = publish_adapter(iter_dir, "gen_sft")
    return {"workdir": workdir, "iter_dir": iter_dir, "data_dir": data_dir, "system": system, "template": template,
            "adapter": adapter, "profile": profile, "flavour": flavour, "prompts": prompts}


def test_mk_data_writes_alpaca_files_with_the_template_system(trained):
    data_dir = trained["data_dir"]
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert set(info) == {"gen_sft", "ext_sft"}
    gen = json.loads((data_dir / "gen_sft.json").read_text())
    ext = json.loads((data_dir / "ext_sft.json").read_text())
    assert [g["instruction"] for g in gen] == [r["prompt"] for r in ROWS]
    assert all(g["output"] == r["extended_response"] for g, r in zip(gen, ROWS))
    # the llama flavour's system prompt (the method's), which SmolLM2's ChatML template renders as it is
    assert trained["system"] == "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    assert all(e["system"] == trained["system"] for e in gen + ext)
    for e, r in zip(ext, ROWS):
        assert r["prompt"] in e["instruction"] and e["output"] == r["extended_response"]


def test_tokenizing_counts_the_rows_longer_than_cutoff_len(trained, tmp_path):
    """A row longer than cutoff_len is cut by LLaMA-Factory (its answer may lose its end): counted exactly, against
    the lengths LLaMA-Factory's own tokenization gave the uncut rows."""
    from datasets import load_from_disk

    data_dir = trained["data_dir"]
    assert cut_stats(data_dir / "tokenized_gen_sft") == {"rows": len(ROWS), "cut": 0, "cutoff_len": 512}
    lengths = sorted(len(r["input_ids"]) for r in load_from_disk(str(data_dir / "tokenized_gen_sft"))["train"])
    assert lengths[-1] < 512   # none was cut: these are the rows' whole lengths
    config = yaml.safe_load((data_dir / "train_gen_sft.yaml").read_text())
    for cutoff in (lengths[-1], lengths[0] - 1):   # the longest fits exactly; then every row is one token too long
        tokenized = tmp_path / f"tokenized_{cutoff}"
        shutil.copytree(data_dir / "tokenized_gen_sft", tokenized)
        path = tmp_path / f"train_{cutoff}.yaml"
        path.write_text(yaml.safe_dump({**config, "cutoff_len": cutoff, "tokenized_path": str(tokenized)}))
        [stats] = tokenize([path], tmp_path / f"tok_{cutoff}.log")
        expected = sum(n > cutoff for n in lengths)
        assert stats == cut_stats(tokenized) == {"rows": len(ROWS), "cut": expected, "cutoff_len": cutoff}
        assert expected == (0 if cutoff == lengths[-1] else len(ROWS))


def test_small_profiles_group_by_length_and_skip_recomputation(trained, default_model, tmp_path):
    """The fixture trained with both (so LLaMA-Factory accepts them). The gpu profile, batch 1 and long sequences,
    keeps LLaMA-Factory's defaults: no padding to save, and activations recomputed to fit in memory."""
    config = yaml.safe_load((trained["data_dir"] / "train_gen_sft.yaml").read_text())
    assert config["per_device_train_batch_size"] == 2 and config["train_sampling_strategy"] == "group_by_length"
    assert config["disable_gradient_checkpointing"] is True
    assert "'train_runtime'" in (trained["workdir"] / "logs" / "train.log").read_text()
    (tmp_path / "data").mkdir()
    gpu = yaml.safe_load(mk_config(tmp_path, 1, "gen_sft", default_model, trained["flavour"], load_profile("gpu"),
                                   trained["template"], gpus=0).read_text())
    assert "train_sampling_strategy" not in gpu and "disable_gradient_checkpointing" not in gpu


def test_on_a_cpu_without_native_bfloat16_training_runs_on_an_exact_float32_copy(trained, default_model, tmp_path):
    """LLaMA-Factory loads the base in its checkpoint's dtype; emulated bfloat16 (AVX2) made a LoRA step 27x slower."""
    import torch
    from safetensors.torch import load_file

    from self_lengthen.devices import cpu_has_native_bfloat16
    from self_lengthen.train import training_base

    config = yaml.safe_load((trained["data_dir"] / "train_gen_sft.yaml").read_text())
    used = Path(config["model_name_or_path"])
    assert used == training_base(default_model, trained["iter_dir"].parent, gpus=0)
    assert training_base(default_model, tmp_path, gpus=1) == default_model  # GPUs: the model as it is
    if cpu_has_native_bfloat16():
        assert used == default_model
        return
    assert used.parent == trained["iter_dir"].parent / ".float32_base"
    assert "Will use dtype=torch.float32" in (trained["workdir"] / "logs" / "train.log").read_text()
    assert json.loads((used / "config.json").read_text())["dtype"] == "float32"
    assert (used / "tokenizer.json").read_bytes() == (default_model / "tokenizer.json").read_bytes()
    base, copy = load_file(default_model / "model.safetensors"), load_file(used / "model.safetensors")
    assert set(copy) <= set(base) and all(torch.equal(copy[k], base[k].float()) for k in copy)
    before = (used / "model.safetensors").stat().st_mtime_ns  # made once
    assert training_base(default_model, trained["iter_dir"].parent, gpus=0) == used
    assert (used / "model.safetensors").stat().st_mtime_ns == before


def test_drop_lines_keeps_about_80_percent_and_joins_as_the_flavour_says():
    import random

    text = "\n".join(f"line {i}" for i in range(2000))
    kept = drop_lines(text, random.Random(0)).split("\n")
    assert 0.77 < len(kept) / 2000 < 0.83
    assert kept == [line for line in text.splitlines() if line in set(kept)]  # order kept
    # the method: qwen rejoins the kept lines with a blank line, llama with a newline
    assert Flavour(ROOT / "qwen").config.ext_line_join == "\n\n" and Flavour(ROOT / "llama").config.ext_line_join == "\n"
    assert drop_lines(text, random.Random(0), "\n\n").split("\n\n") == kept
    assert drop_lines("only line", random.Random(3), keep=0.0) == ""  # no line is forced to survive


def test_training_template_tokenizes_like_the_chat_template(trained, default_model):
    """The tokenized training data is token-for-token the model's chat template applied to the same conversation."""
    tokenized = trained["iter_dir"] / "data" / "tokenized_gen_sft"
    code = ("import json,sys; from datasets import load_from_disk; d=load_from_disk(sys.argv[1]);"
            "d=d['train'] if 'train' in d else d; print(json.dumps([list(x) for x in d['input_ids'][:3]]))")
    proc = subprocess.run([str(TRAIN_PY), "-c", code, str(tokenized)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lf_ids = json.loads(proc.stdout.strip().splitlines()[-1])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    gen = json.loads((trained["data_dir"] / "gen_sft.json").read_text())
    hf_ids = []
    for row in gen[:3]:  # the conversation as a chat request of the pipeline sends it, system prompt included
        conversation = trained["prompts"].messages(row["instruction"]) + [{"role": "assistant", "content": row["output"]}]
        hf_ids.append(list(tok.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]))
    assert sorted(lf_ids) == sorted(hf_ids)


def test_trained_adapter_changes_greedy_output(trained, default_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model)
    inputs = tok.apply_chat_template([{"role": "user", "content": ROWS[0]["prompt"]}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    base = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    with torch.no_grad():
        plain = base.generate(**inputs, max_new_tokens=30, do_sample=False)
        tuned = PeftModel.from_pretrained(base, str(trained["adapter"])).generate(**inputs, max_new_tokens=30,
                                                                                  do_sample=False)
    assert plain.tolist() != tuned.tolist()


def test_continuing_from_an_adapter_carries_its_weights_over(trained, default_model):
    """Iteration 2 trains from iteration 1's adapter: with a zero learning rate the weights come out unchanged."""
    from safetensors.torch import load_file

    workdir = trained["workdir"]
    iter2 = workdir / "results" / "iter_2"
    save_dataset(ROWS, ["prompt", "initial_response", "extended_response"], iter2 / "extended_responses")
    from transformers import AutoTokenizer

    mk_data(iter2, PromptBuilder(trained["flavour"], AutoTokenizer.from_pretrained(default_model)), trained["system"])
    config_path = mk_config(iter2, 2, "gen_sft", default_model, trained["flavour"], trained["profile"],
                            trained["template"], gpus=0)
    config = yaml.safe_load(config_path.read_text())
    assert config["adapter_name_or_path"] == str(trained["adapter"])
    assert config["tokenized_path"] != str(trained["iter_dir"] / "data" / "tokenized_gen_sft")
    config.update(learning_rate=0.0, max_steps=1)
    config_path.write_text(yaml.safe_dump(config))
    tokenize([config_path], workdir / "logs" / "tok2.log")
    train_adapter(config_path, DistEnv(), 0, workdir / "logs" / "train2.log")
    continued = publish_adapter(iter2, "gen_sft")
    before = load_file(str(trained["adapter"] / "adapter_model.safetensors"))
    after = load_file(str(Path(continued) / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and len(before) > 0
    assert all((before[k] == after[k]).all() for k in before)
    assert any(before[k].abs().sum() > 0 for k in before if "lora_B" in k)  # non-trivial weights carried over


def _dead(proc, timeout: float = 30.0) -> bool:
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("launch", ["one process", "torchrun"])
def test_a_killed_training_resumes_from_its_last_checkpoint(trained, default_model, launch):
    """The trainer is killed with -9 once checkpoint-2 is complete; the rerun goes on from a checkpoint, not step 0.
    One CPU node trains in one process; several nodes (or GPUs) under torchrun, whose launcher, torchrun and worker
    (in a session of its own) must all die with it, as when a node dies."""
    import copy
    import time

    import psutil

    from self_lengthen.devices import TRAINING_PRELOAD, cpu_preload
    from self_lengthen.train import kill_tree, torchrun_env, train_python, trainer_env

    workdir = trained["workdir"]
    tag = launch.replace(" ", "_")
    iter_dir = workdir / "results" / f"iter_resume_{tag}" / "iter_1"
    save_dataset(ROWS, ["prompt", "initial_response", "extended_response"], iter_dir / "extended_responses")
    from transformers import AutoTokenizer

    mk_data(iter_dir, PromptBuilder(trained["flavour"], AutoTokenizer.from_pretrained(default_model)), trained["system"])
    profile = copy.deepcopy(trained["profile"])
    profile["training"].update(max_steps=8, save_steps=1)
    config = mk_config(iter_dir, 1, "ext_sft", default_model, trained["flavour"], profile, trained["template"], gpus=0)
    assert yaml.safe_load(config.read_text())["save_strategy"] == "steps"
    tokenize([config], workdir / "logs" / f"tok_resume_{tag}.log")
    output_dir = Path(yaml.safe_load(config.read_text())["output_dir"])
    # what train_adapter() runs it with, on one CPU node and on a rank of several
    env = trainer_env(DistEnv(), 0) if launch == "one process" else torchrun_env(DistEnv(master_port=29733), 0)
    killed_log = workdir / "logs" / f"killed_{tag}.log"
    with open(killed_log, "wb") as log:
        trainer = subprocess.Popen([str(train_python().parent / "llamafactory-cli"), "train", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (output_dir / "checkpoint-2" / "trainer_state.json").exists():
        assert trainer.poll() is None and time.monotonic() < deadline, killed_log.read_text()[-2000:]
        time.sleep(0.2)
    processes = [psutil.Process(trainer.pid), *psutil.Process(trainer.pid).children(recursive=True)]
    if launch == "torchrun":
        assert len(processes) >= 3, processes  # LLaMA-Factory's launcher, torchrun, the worker
    # On CPU the trainer runs with tcmalloc (1.14x, devices.py) where the machine has it; `make setup` installs it
    # where it may.
    if setup_installs_tcmalloc():
        assert cpu_preload(TRAINING_PRELOAD), f"{TRAINING_PRELOAD} not found: did `make setup` run?"
    if cpu_preload(TRAINING_PRELOAD):
        assert all(TRAINING_PRELOAD[0] in Path(f"/proc/{p.pid}/maps").read_text() for p in processes), processes
    kill_tree(trainer.pid)
    trainer.wait(timeout=60)
    assert all(_dead(p) for p in processes)
    assert not (output_dir / "adapter_model.safetensors").exists()  # it really was cut short

    train_adapter(config, DistEnv(), 0, workdir / "logs" / f"resumed_{tag}.log")
    log = (workdir / "logs" / f"resumed_{tag}.log").read_text()
    assert "self-lengthen: resuming from" in log
    resumed_at = int(re.search(r"Resuming training from checkpoint with epoch \d+ and global step (\d+)", log)[1])
    assert 2 <= resumed_at < 8
    state = json.loads(sorted(output_dir.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[1]))[-1]
                       .joinpath("trainer_state.json").read_text())
    assert state["global_step"] == 8
    adapter = publish_adapter(iter_dir, "ext_sft")
    assert (Path(adapter) / "adapter_model.safetensors").is_file()
    assert not list(Path(adapter).glob("checkpoint-*"))


def test_one_cpu_node_trains_in_one_process_and_several_nodes_or_gpus_under_torchrun(trained):
    """On one CPU node LLaMA-Factory trains in the process it starts in: torchrun and DDP over one process only cost
    start-up time there (bench/train.py --launch: the same adapter, bit for bit, in 6 of 6 runs; bench/RESULTS.md,
    2026-12-05 night). The fixture's adapter was trained that way. Several nodes, and GPUs, keep torchrun."""
    from self_lengthen.train import trainer_env

    assert "FORCE_TORCHRUN" not in trainer_env(DistEnv(), 0)
    several = trainer_env(DistEnv(world_size=2, rank=1, master_port=29555), 0)
    assert (several["FORCE_TORCHRUN"], several["NNODES"], several["NODE_RANK"], several["MASTER_PORT"]) == \
        ("1", "2", "1", "29555")
    assert trainer_env(DistEnv(), 1)["FORCE_TORCHRUN"] == "1"
    log = (trained["workdir"] / "logs" / "train.log").read_text()
    assert "distributed training: False" in log and "'train_runtime'" in log


def test_serving_worker_loads_the_trained_adapter_as_a_lora_request(trained):
    """run_server.sh --iter=1 --adapter_mode=lora (the GPU path) serves the adapter LLaMA-Factory wrote as a LoRA
    request, and it changes greedy output. (The CPU default, a merged copy, serves LLaMA-Factory's gen_sft in
    test_pipeline.py's run_collect_data run; that a merged copy equals the adapter applied is shown on logits in
    test_serving.py.)"""
    from conftest import env_with, start_stack, stop_stack
    from self_lengthen.client import Client

    workdir = trained["workdir"]
    ports = ["--api_port=18300", "--controller_port=18301", "--worker_port=18302"]
    question = [{"role": "user", "content": ROWS[0]["prompt"]}]
    greedy = {"temperature": 0, "max_tokens": 30, "repetition_penalty": 1.0, "top_k": -1, "top_p": 1.0}
    proc = start_stack(workdir, 1, "--timeout=800", "--adapters=gen_sft", "--adapter_mode=lora", *ports,
                       env=env_with(VLLM_CPU_KVCACHE_SPACE=1))
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = Client("http://127.0.0.1:18300/v1", retries=1)
        outputs = {name: client.chat(name, question, **greedy).text for name in ("base", "gen_sft")}
    finally:
        stopped = stop_stack(workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert "serving adapters as LoRA requests" in (workdir / "logs" / "worker0.log").read_text()
    assert outputs["gen_sft"] != outputs["base"]


# Written for this test: the behaviour of Llama-3.1's chat template. It always writes a system turn that opens with
# its date lines, and puts the (trimmed) system message, if any, after them.
LLAMA31_STYLE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}"
    "{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}"
    "{% if date_string is not defined %}{% set date_string = '26 Jul 2024' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' }}{{ 'Cutting Knowledge Date: December 2023\n' }}"
    "{{ 'Today Date: ' + date_string + '\n\n' }}{{ system_message }}{{ '<|eot_id|>' }}"
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                r"\s+(?!\S)|\s+")


def test_llama31_system_prompt_round_trips_through_llama_factory(tmp_path, default_model):
    """The llama flavour sends the method's system prompt in every chat request; on a Llama-3.1 chat template the
    template check now passes, and a training row tokenizes through LLaMA-Factory's llama3 template exactly as the
    served chat prompt of the same conversation does."""
    from transformers import AutoTokenizer

    from tokenizers import Regex, pre_tokenizers

    tok = AutoTokenizer.from_pretrained(default_model)
    # Llama-3's pre-tokenizer rule (a run of newlines is one piece), so that "\n\n" splits as on a Llama-3.1 model
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tok.chat_template = LLAMA31_STYLE
    model_dir = tmp_path / "llama31-tokenizer"
    tok.save_pretrained(model_dir)
    flavour = Flavour(ROOT / "llama")
    template, system = pick_template(model_dir, flavour)
    assert template == "llama3"
    # the chat template writes its own date lines, then the system prompt sent: the training rows carry both
    assert system == "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" + \
        flavour.config.system_prompt.strip()
    row = {"instruction": ROWS[1]["prompt"], "output": ROWS[1]["extended_response"]}
    code = ("import json,sys; from transformers import AutoTokenizer; "
            "from llamafactory.data import get_template_and_fix_tokenizer; from llamafactory.hparams import DataArguments;"
            "tok=AutoTokenizer.from_pretrained(sys.argv[1]); t=get_template_and_fix_tokenizer(tok, DataArguments(template='llama3'));"
            "r=json.loads(sys.argv[2]); p,a=t.encode_oneturn(tok,[{'role':'user','content':r['instruction']},"
            "{'role':'assistant','content':r['output']}], sys.argv[3]); print(json.dumps(p+a))")
    proc = subprocess.run([str(TRAIN_PY), "-c", code, str(model_dir), json.dumps(row), system],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lf_ids = json.loads(proc.stdout.strip().splitlines()[-1])
    served = PromptBuilder(flavour, tok).messages(row["instruction"]) + [{"role": "assistant", "content": row["output"]}]
    assert served[0] == {"role": "system", "content": flavour.config.system_prompt}
    assert lf_ids == list(tok.apply_chat_template(served, tokenize=True, return_dict=True)["input_ids"])


def test_a_flavour_without_system_prompt_trains_with_the_templates_own_default(default_model):
    """qwen sends no system prompt; SmolLM2's chat template then writes its own, so the rows must carry it."""
    template, system = pick_template(default_model, Flavour(ROOT / "qwen"))
    assert template in Flavour(ROOT / "qwen").config.lf_templates
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
