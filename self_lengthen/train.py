"""Training data and LoRA fine-tuning for one macro-iteration (runs in the serving env; trains in the training env).

mk_data       results/iter_K/extended_responses -> results/iter_K/data/{gen_sft,ext_sft}.json + dataset_info.json
mk_config     one LLaMA-Factory YAML per model, from the flavour's template and the profile's sizes
tokenize      rank 0 tokenizes the datasets once, in one process, through LLaMA-Factory's data API (training env)
train_adapter every rank runs `llamafactory-cli train` under torchrun (FORCE_TORCHRUN, NNODES, NODE_RANK, ...); on one
              CPU node, in the process itself
"""
import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import yaml

from .devices import TRAINING_PRELOAD, cpu_preload
from .errors import UsageError
from .flavour import Flavour, PromptBuilder
from .io import model_dir_in_place, write_text_atomic
from .stages.runner import MARKER, is_complete, require_complete

MODELS = ("gen_sft", "ext_sft")
LINE_KEEP = 0.8
ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / ".venv-train" / "bin" / "python"


def drop_lines(text: str, rng: random.Random, join: str = "\n", keep: float = LINE_KEEP) -> str:
    """The method's: keep each line (split on newlines) with probability `keep`, rejoin with `join`."""
    return join.join(line for line in text.split("\n") if rng.random() < keep)


def mk_data(iter_dir: Path, prompts: PromptBuilder, system: str | None, seed: int = 0) -> Path:
    """gen_sft (instruction -> extended) and ext_sft (extend request over the initial response with ~20% of its lines
    dropped -> extended). `system`: the system text every row carries (pick_template says which; None: none)."""
    data_dir = iter_dir / "data"
    if is_complete(data_dir):
        return data_dir
    source = iter_dir / "extended_responses"
    require_complete(source, f"python step2_ext_responses.py --iter {iter_dir.name.split('_')[-1]}")
    from datasets import load_from_disk

    rows = list(load_from_disk(str(source)))
    if not rows:
        raise UsageError(f"{source} has no rows: nothing to train on (raise --instruct_count, or check "
                         f"{iter_dir}/extended_responses.summary.json for why items were rejected)")
    extra = {"system": system} if system else {}
    rng = random.Random(f"{seed}-{iter_dir.name}-ext")
    join = prompts.flavour.config.ext_line_join
    datasets = {
        "gen_sft": [{"instruction": r["prompt"], "input": "", "output": r["extended_response"], **extra} for r in rows],
        "ext_sft": [{"instruction": prompts.extend_request(r["prompt"], drop_lines(r["initial_response"], rng, join)),
                     "input": "", "output": r["extended_response"], **extra} for r in rows],
    }
    tmp = iter_dir / ".data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_datasets(tmp, datasets)
    (tmp / MARKER).write_text(json.dumps({"rows": len(rows), "system": system}))
    shutil.rmtree(data_dir, ignore_errors=True)
    tmp.rename(data_dir)
    return data_dir


def write_datasets(data_dir: Path, datasets: dict[str, list[dict]]) -> None:
    """Alpaca-style rows as LLaMA-Factory datasets: data_dir/NAME.json for each, and their dataset_info.json (with
    a system column where the rows carry one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, records in datasets.items():
        (data_dir / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
        system = {"system": "system"} if records and "system" in records[0] else {}
        info[name] = {"file_name": f"{name}.json",
                      "columns": {"prompt": "instruction", "query": "input", "response": "output", **system}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=1))


def train_python() -> Path:
    if not TRAIN_PY.exists():
        raise UsageError(f"the training env is missing ({TRAIN_PY}); run 'make setup'")
    return TRAIN_PY


def pick_template(model_dir: Path, flavour: Flavour) -> tuple[str, str | None]:
    """(the LLaMA-Factory template that tokenizes like the model's chat template, the system text for every training
    row), for chat requests that carry the flavour's system prompt. Runs in the training env."""
    system = flavour.config.system_prompt
    cmd = [str(train_python()), "-m", "self_lengthen.lf_tools", "pick-template", "--model", str(model_dir),
           "--candidates", ",".join(flavour.config.lf_templates)] + (["--system", system] if system else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        raise UsageError(last[-1][7:] if last else f"template check failed: {proc.stderr[-500:]}")
    picked = json.loads(proc.stdout.strip().splitlines()[-1])
    return picked["template"], picked["system"]


def checkpoint_dtype(model_dir: Path) -> str:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def training_base(model_dir: Path, results: Path, gpus: int) -> Path:
    """The base model LLaMA-Factory trains on: the model itself, except on a CPU without native bfloat16 (AVX2), where
    a 16-bit checkpoint trains on a float32 copy of it (the same weights, upcast exactly), kept in results/ (which every
    node shares). LLaMA-Factory loads a checkpoint in its own dtype, and emulated bfloat16 is slow: one LoRA step of
    the default model took 101 s there, against 3.7 s in float32. With native bfloat16 the checkpoint itself is the
    faster: on AVX512-BF16 without AMX it trained 1.34x as fast as the float32 copy (bench/RESULTS.md)."""
    from .devices import cpu_has_native_bfloat16

    if gpus > 0 or checkpoint_dtype(model_dir) not in ("bfloat16", "float16") or cpu_has_native_bfloat16():
        return Path(model_dir)
    return float32_copy(model_dir, results)


def float32_copy(model_dir: Path, results: Path) -> Path:
    """results/.float32_base/<key>: the model's weights upcast to float32 (exactly), beside its tokenizer files; made
    once per model (the key is its path and its weight files' names, sizes and times)."""
    import hashlib

    weights = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin"))
    key = hashlib.sha256(str(Path(model_dir).resolve()).encode())
    for p in weights:
        key.update(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode())
    out = results / ".float32_base" / key.hexdigest()[:16]
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM

    with model_dir_in_place(out) as tmp:
        for p in Path(model_dir).iterdir():  # tokenizer, chat template and the rest; weights and config written below
            if p.is_file() and p not in weights:
                shutil.copy2(p, tmp / p.name)
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).save_pretrained(tmp)
    return out


def mk_config(iter_dir: Path, iteration: int, name: str, model_dir: Path, flavour: Flavour, profile: dict,
              template: str, gpus: int) -> Path:
    """Write results/iter_K/data/train_<name>.yaml and return its path."""
    config = yaml.safe_load((flavour.dir / "train_config_template" / "lora_sft.yaml").read_text())
    sizes = dict(profile["training"])
    use_deepspeed = sizes.pop("deepspeed", False) and gpus > 0
    bf16 = sizes.pop("bf16", False) and gpus > 0
    lora_rank = sizes.pop("lora_rank", 8)
    save_steps = sizes.pop("save_steps", None)
    if not sizes.pop("gradient_checkpointing", True):  # memory to spare: skip recomputing activations (same math)
        config["disable_gradient_checkpointing"] = True
    config.update(sizes)
    if int(config.get("per_device_train_batch_size", 1)) > 1:
        # Batches of similar lengths: less padding to compute on, same samples, steps and batch size.
        config.setdefault("train_sampling_strategy", "group_by_length")
    if save_steps:  # checkpoints a crashed training resumes from (see train_adapter); the last two are kept
        config.update(save_strategy="steps", save_steps=int(save_steps), save_total_limit=2)
    data_dir = iter_dir / "data"
    base = training_base(model_dir, iter_dir.parent, gpus)
    config.update(
        model_name_or_path=str(base), dataset=name, dataset_dir=str(data_dir), template=template,
        output_dir=str(iter_dir / "lora" / f".{name}.training"), tokenized_path=str(tokenized_dir(data_dir, name)),
        lora_rank=lora_rank, lora_alpha=2 * lora_rank, bf16=bf16, fp16=False,
    )
    if use_deepspeed:
        config["deepspeed"] = str(ROOT / "self_lengthen" / "ds_z3_offload.json")
    previous = iter_dir.parent / f"iter_{iteration - 1}" / "lora" / name
    if iteration > 1:
        if not (previous / "adapter_config.json").is_file():
            raise UsageError(f"iteration {iteration} continues {previous}, which is missing; finish iteration "
                             f"{iteration - 1} first")
        config["adapter_name_or_path"] = str(previous)
    path = data_dir / f"train_{name}.yaml"
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def tokenize(config_paths: list[Path], log, timeout: float = 7200) -> list[dict]:
    """Each config's dataset, in one process (LLaMA-Factory is imported once); no distributed variables, or HF would
    wait for the other ranks to join. Returns, per config, how many rows are longer than cutoff_len (cut_stats)."""
    run_logged([str(train_python()), "-m", "self_lengthen.lf_tools", "tokenize", *map(str, config_paths)], log,
               env=train_env(), what=f"tokenizing {', '.join(p.name for p in config_paths)}", timeout=timeout)
    return [cut_stats(Path(yaml.safe_load(p.read_text())["tokenized_path"])) for p in config_paths]


def tokenized_dir(data_dir: Path, name: str) -> Path:
    """Where dataset `name` of an iteration's data dir is tokenized (mk_config's tokenized_path)."""
    return data_dir / f"tokenized_{name}"


def cut_stats(tokenized_path: Path) -> dict | None:
    """{"rows", "cut", "cutoff_len"}: how many rows of a dataset tokenized into `tokenized_path` LLaMA-Factory cut
    at cutoff_len, as lf_tools.cut_rows counted them beside it (None before it did)."""
    path = tokenized_path.with_name(tokenized_path.name + ".stats.json")
    return json.loads(path.read_text()) if path.is_file() else None


DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "NNODES", "NPROC_PER_NODE",
             "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN")


def train_env(**extra) -> dict:
    """The training env's PATH, no serving-env leftovers, and only the distributed variables given in `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{train_python().parent}{os.pathsep}{env.get('PATH', '')}"  # torchrun, llamafactory-cli
    env.update({k: str(v) for k, v in extra.items()})
    return env


def in_one_process(dist, gpus: int) -> bool:
    """One node, on CPU: LLaMA-Factory trains in the process it starts in. There torchrun and DDP over a single
    process only add time (7.1 s of 44.6 per adapter, bench/train.py --launch). The adapters came out bit-identical
    in every bench run (6 of 6) and in 26 of 28 test comparisons; the trainer itself, launched the same way each
    time, gave one config a different loss in 1 of 5 runs, which may explain the 2 that differed (bench/RESULTS.md,
    2026-12-05 night and 2026-12-06). GPUs keep torchrun, as the method runs them: this was measured on CPU only."""
    return dist.world_size == 1 and gpus == 0


def trainer_env(dist, gpus: int) -> dict:
    """The trainer's environment on this rank: torchrun's (torchrun_env) unless it trains in one process."""
    return with_preload(train_env(), gpus) if in_one_process(dist, gpus) else torchrun_env(dist, gpus)


def torchrun_env(dist, gpus: int) -> dict:
    return with_preload(train_env(FORCE_TORCHRUN=1, NNODES=dist.world_size, NODE_RANK=dist.rank,
                                  NPROC_PER_NODE=max(1, gpus), MASTER_ADDR=dist.master_addr,
                                  MASTER_PORT=dist.master_port), gpus)


def with_preload(env: dict, gpus: int) -> dict:
    """On CPU, tcmalloc preloaded for the trainer (1.14x, devices.py) unless the user preloads something else."""
    if gpus == 0 and (preload := cpu_preload(TRAINING_PRELOAD)):
        env.setdefault("LD_PRELOAD", preload)
    return env


def train_adapter(config_path: Path, dist, gpus: int, log, timeout: float | None = None) -> None:
    """Every rank: llamafactory-cli train, data-parallel across nodes under torchrun (trainer_env)."""
    env = trainer_env(dist, gpus)
    cli = train_python().parent / "llamafactory-cli"
    cmd = [str(cli), "train", str(config_path)]
    resume = last_checkpoint(Path(yaml.safe_load(config_path.read_text())["output_dir"]))
    if resume is not None:  # a crashed run of this training left a checkpoint: go on from there
        cmd.append(f"resume_from_checkpoint={resume}")
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            out.write(f"self-lengthen: resuming from {resume}\n")
    run_logged(cmd, log, env=env, what=f"training {config_path.stem[6:]}", timeout=timeout)


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint-N in output_dir (the trainer writes trainer_state.json last), or None."""
    complete = [d for d in output_dir.glob("checkpoint-*")
                if d.name.split("-")[-1].isdigit() and (d / "trainer_state.json").is_file()]
    return max(complete, key=lambda d: int(d.name.split("-")[-1]), default=None)


def run_logged(cmd: list[str], log: Path, *, env: dict, what: str, timeout: float | None = None) -> None:
    """Run `cmd` in its own process group with output to `log`; on failure or timeout, one error with the log's tail.
    At the timeout the whole group (the trainer, or torchrun and its workers) is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            raise UsageError(f"{what} timed out after {timeout:.0f}s; see {log}") from None
        except BaseException:
            kill_tree(proc.pid)  # interrupted: leave no trainer behind
            raise
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise UsageError(f"{what} failed (exit {code}); last lines of {log}:\n{tail}")


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its group and all its descendants: torchrun starts its workers in sessions of their own,
    so killing the group alone would leave them training."""
    import psutil

    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def publish_adapter(iter_dir: Path, name: str) -> Path:
    """Move the finished adapter from its training dir into results/iter_K/lora/<name> (rank 0)."""
    training = iter_dir / "lora" / f".{name}.training"
    final = iter_dir / "lora" / name
    if not (training / "adapter_config.json").is_file():
        raise UsageError(f"training {name} left no adapter in {training}")
    tmp = iter_dir / "lora" / f".{name}.publish"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    logs = ("trainer_log.jsonl", "all_results.json", "train_results.json")
    for item in training.iterdir():  # the adapter, its tokenizer files and the training logs; no checkpoints
        tokenizer_file = "token" in item.name and item.suffix in (".json", ".jinja", ".txt")
        if item.name.startswith("adapter_") or tokenizer_file or item.name in logs:
            shutil.copy2(item, tmp / item.name)
    tmp.rename(final)
    shutil.rmtree(training, ignore_errors=True)
    return final


def adapter_done(iter_dir: Path, name: str) -> bool:
    return (iter_dir / "lora" / name / "adapter_config.json").is_file()

