"""Training throughput: the project's training call against a plain `llamafactory-cli train`, same data, in one run.

Ours is what run.sh does: mk_config's YAML, rank 0 tokenizes once, then `llamafactory-cli train` (on one CPU node in
the process itself, train.in_one_process).
Plain is the same YAML as a user would hand it to `llamafactory-cli train`: without the lines in OUR_LINES, on the
model itself (ours trains on a float32 copy of it on a CPU without native bfloat16: train.training_base). Both
train one epoch of the cpu-demo profile's sizes on the same rows, whose lengths vary as synthesized responses do.
Throughput is real (unpadded) tokens trained per second of wall time, start-up included; the trainer's own loop
time (train_runtime) is printed beside it.

With --launch, the same rows are trained instead under torchrun and in one process, in turns (`--repeats` each):
wall and loop time, loss, and whether the adapters are bit-identical. With --dtypes, the same rows are trained in
turns on the 16-bit checkpoint itself and on its exact float32 copy (train.float32_copy): wall, loop time and loss.
With --parallel, both adapters (gen_sft, ext_sft of the same rows) are trained in turns one after the other, each with
every core (as run.sh does), and at the same time, each pinned to its own share of the cores: wall and loss.

Usage: .venv/bin/python bench/train.py [--rows 64] [--seed 0] [--launch | --dtypes | --parallel] [--repeats 2]
"""
import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from self_lengthen.chat_template import load_tokenizer  # noqa: E402
from self_lengthen.default_model import ensure_default_model  # noqa: E402
from self_lengthen.dist import DistEnv  # noqa: E402
from self_lengthen.flavour import Flavour, PromptBuilder  # noqa: E402
from self_lengthen.profile import load_profile  # noqa: E402
from self_lengthen.stages.runner import save_dataset  # noqa: E402
from self_lengthen.train import (float32_copy, mk_config, mk_data, pick_template, run_logged, tokenize,  # noqa: E402
                                 torchrun_env, train_adapter, train_env, train_python, trainer_env)

# What mk_config adds to a LLaMA-Factory YAML beyond the profile's sizes: tokenize once; batches grouped by length;
# no activation recomputation where memory is plentiful (cpu-demo). None changes what is computed per sample.
OUR_LINES = ("tokenized_path", "train_sampling_strategy", "disable_gradient_checkpointing")
WORDS = ("river town mill bank bridge market winter harvest story family road lantern festival school letter "
         "garden storm boat song memory teacher baker journey hill window").split()


def paragraph(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def build(rows: int, seed: int):
    """A results dir with `rows` extended responses of 80 to 700 words (paragraphs of 40 to 90 words)."""
    rng = random.Random(seed)
    model = ensure_default_model()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    it = work / "results" / "iter_1"
    data = []
    for i in range(rows):
        target = rng.randint(80, 700)
        paras = [paragraph(rng, rng.randint(40, 90)) for _ in range(max(1, target // 65))]
        data.append({"prompt": f"Write about river town {i}.", "initial_response": paras[0],
                     "extended_response": "\n\n".join(paras)})
    save_dataset(data, ["prompt", "initial_response", "extended_response"], it / "extended_responses")
    flavour = Flavour(ROOT / "llama")
    template, system = pick_template(model, flavour)
    mk_data(it, PromptBuilder(flavour, load_tokenizer(model)), system)
    profile = load_profile("cpu-demo")
    configs = [mk_config(it, 1, name, model, flavour, profile, template, gpus=0) for name in ("gen_sft", "ext_sft")]
    return work, configs


def real_tokens(tokenized_path: Path) -> int:
    """Unpadded tokens in one epoch: the lengths of the tokenized examples (both sides train the same ones)."""
    from datasets import load_from_disk

    data = load_from_disk(str(tokenized_path))
    data = data["train"] if hasattr(data, "keys") and "train" in data else data
    return sum(len(ids) for ids in data["input_ids"])


def train_runtime(output_dir: Path) -> float:
    """Seconds the trainer spent in its loop, as it reports them (no interpreter, model or data start-up)."""
    return float(json.loads((output_dir / "train_results.json").read_text())["train_runtime"])


def variant(cfg: dict, out: Path, **changes) -> tuple[Path, Path]:
    """Training config `cfg` with `changes`, training into `out`, written beside it as out.yaml: (its path, out)."""
    path = out.with_name(f"{out.name}.yaml")
    path.write_text(yaml.safe_dump({**cfg, **changes, "output_dir": str(out)}))
    return path, out


def compare_launch(config: Path, work: Path, repeats: int) -> None:
    """torchrun (a launcher, torchrun, DDP over one worker) against one process, in turns, on the same tokenized rows."""
    import torch
    from safetensors.torch import load_file

    out = Path(yaml.safe_load(config.read_text())["output_dir"])
    cli = str(train_python().parent / "llamafactory-cli")
    envs = {"torchrun": torchrun_env(DistEnv(), 0), "one process": trainer_env(DistEnv(), 0)}
    assert "FORCE_TORCHRUN" not in envs["one process"], "trainer_env no longer trains one CPU node in one process"
    walls, adapters = {name: [] for name in envs}, {}
    for i in range(repeats):
        for name, env in envs.items():
            shutil.rmtree(out, ignore_errors=True)
            start = time.monotonic()
            run_logged([cli, "train", str(config)], work / f"launch_{i}_{name.replace(' ', '_')}.log", env=env,
                       what=f"training ({name})")
            walls[name].append(time.monotonic() - start)
            results = json.loads((out / "all_results.json").read_text())
            adapters.setdefault(name, []).append(load_file(str(out / "adapter_model.safetensors")))
            print(f"{name}: {walls[name][-1]:.1f} s wall, {results['train_runtime']:.1f} s loop, "
                  f"loss {results['train_loss']:.6f}", flush=True)
    first = adapters["torchrun"][0]
    same = all(a.keys() == first.keys() and all(torch.equal(a[k], first[k]) for k in first)
               for runs in adapters.values() for a in runs)
    mean = {name: sum(w) / len(w) for name, w in walls.items()}
    print(f"mean wall: torchrun {mean['torchrun']:.1f} s, one process {mean['one process']:.1f} s, "
          f"ratio {mean['torchrun'] / mean['one process']:.2f}; every adapter bit-identical: {same}")


def compare_dtypes(config: Path, work: Path, repeats: int) -> None:
    """The checkpoint in its own 16-bit dtype against its float32 copy, in turns, on the same tokenized rows."""
    cfg = yaml.safe_load(config.read_text())
    model = ensure_default_model()
    bases = {"checkpoint": model, "float32 copy": float32_copy(model, work / "results")}
    cli = str(train_python().parent / "llamafactory-cli")
    walls, loops = {name: [] for name in bases}, {name: [] for name in bases}
    for i in range(repeats):
        for name, base in bases.items():
            path, out = variant(cfg, work / f"dtype_{i}_{name.replace(' ', '_')}", model_name_or_path=str(base))
            start = time.monotonic()
            run_logged([cli, "train", str(path)], work / f"{out.name}.log", env=trainer_env(DistEnv(), 0),
                       what=f"training ({name})")
            walls[name].append(time.monotonic() - start)
            results = json.loads((out / "all_results.json").read_text())
            loops[name].append(results["train_runtime"])
            print(f"{name}: {walls[name][-1]:.1f} s wall, {results['train_runtime']:.1f} s loop, "
                  f"loss {results['train_loss']:.6f}", flush=True)
    mean = {name: (sum(walls[name]) / repeats, sum(loops[name]) / repeats) for name in bases}
    print(f"mean wall: checkpoint {mean['checkpoint'][0]:.1f} s, float32 copy {mean['float32 copy'][0]:.1f} s, "
          f"ratio {mean['checkpoint'][0] / mean['float32 copy'][0]:.2f}; loop ratio "
          f"{mean['checkpoint'][1] / mean['float32 copy'][1]:.2f}")


def compare_parallel(configs: list[Path], work: Path, repeats: int) -> None:
    """Both adapters one after the other (each with all cores) against both at once (each on its own cores)."""
    import os
    import subprocess

    cli = str(train_python().parent / "llamafactory-cli")
    cores = sorted(os.sched_getaffinity(0))
    shares = [cores[i::len(configs)] for i in range(len(configs))]

    def job(config: Path, tag: str, share=None):
        path, out = variant(yaml.safe_load(config.read_text()), work / f"{tag}_{config.stem}")
        env = trainer_env(DistEnv(), 0)
        cmd = [cli, "train", str(path)]
        if share:
            env["OMP_NUM_THREADS"] = str(len(share))
            cmd = ["taskset", "-c", ",".join(map(str, share))] + cmd
        return cmd, env, out

    def loss(out: Path) -> float:
        return json.loads((out / "all_results.json").read_text())["train_loss"]

    walls = {"one after the other": [], "at the same time": []}
    for i in range(repeats):
        start = time.monotonic()
        outs = []
        for config in configs:
            cmd, env, out = job(config, f"seq{i}")
            run_logged(cmd, work / f"{out.name}.log", env=env, what=f"training {config.stem}")
            outs.append(out)
        walls["one after the other"].append(time.monotonic() - start)
        print(f"one after the other: {walls['one after the other'][-1]:.1f} s; losses "
              f"{', '.join(f'{loss(o):.6f}' for o in outs)}", flush=True)
        start = time.monotonic()
        procs, outs = [], []
        for config, share in zip(configs, shares):
            cmd, env, out = job(config, f"par{i}", share)
            log = open(work / f"{out.name}.log", "wb")
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL), log))
            outs.append(out)
        try:
            for proc, log in procs:
                if proc.wait(timeout=7200) != 0:
                    sys.exit(f"error: a training at the same time failed; see {log.name}")
        finally:
            for proc, log in procs:  # one failed or timed out: stop the other
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=60)
                log.close()
        walls["at the same time"].append(time.monotonic() - start)
        print(f"at the same time (cores {shares}): {walls['at the same time'][-1]:.1f} s; losses "
              f"{', '.join(f'{loss(o):.6f}' for o in outs)}", flush=True)
    mean = {name: sum(w) / len(w) for name, w in walls.items()}
    print(f"mean wall: one after the other {mean['one after the other']:.1f} s, at the same time "
          f"{mean['at the same time']:.1f} s, ratio {mean['one after the other'] / mean['at the same time']:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launch", action="store_true", help="torchrun against one process instead of ours against plain")
    p.add_argument("--dtypes", action="store_true", help="the 16-bit checkpoint against its float32 copy")
    p.add_argument("--parallel", action="store_true", help="both adapters one after the other against at once")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if args.launch + args.dtypes + args.parallel > 1:
        sys.exit("error: --launch, --dtypes and --parallel are separate comparisons; pick one")
    work, configs = build(args.rows, args.seed)
    config = configs[0]
    if args.parallel:
        tokenize(configs, work / "tok.log")
        compare_parallel(configs, work, args.repeats)
        return
    if args.launch or args.dtypes:
        tokenize([config], work / "tok.log")
        (compare_launch if args.launch else compare_dtypes)(config, work, args.repeats)
        return
    ours_cfg = yaml.safe_load(config.read_text())
    plain, plain_out = variant({k: v for k, v in ours_cfg.items() if k not in OUR_LINES}, work / "plain",
                               model_name_or_path=str(ensure_default_model()))

    # Ours first: it reads the model from a cold page cache, which only slows it down.
    start = time.monotonic()
    tokenize([config], work / "tok.log")
    train_adapter(config, DistEnv(), 0, work / "ours.log")
    ours_s = time.monotonic() - start
    start = time.monotonic()
    run_logged([str(train_python().parent / "llamafactory-cli"), "train", str(plain)], work / "plain.log",
               env=train_env(), what="plain llamafactory-cli train")
    plain_s = time.monotonic() - start

    n = real_tokens(Path(ours_cfg["tokenized_path"]))
    ours_loop, plain_loop = train_runtime(Path(ours_cfg["output_dir"])), train_runtime(plain_out)
    print(f"{args.rows} rows, {n} real tokens, one epoch, batch {ours_cfg['per_device_train_batch_size']}, "
          f"cutoff {ours_cfg['cutoff_len']}; ours on {ours_cfg['model_name_or_path']}")
    print(f"wall (start-up included): plain {n / plain_s:.0f} tok/s ({plain_s:.0f}s), ours {n / ours_s:.0f} tok/s "
          f"({ours_s:.0f}s), ratio {plain_s / ours_s:.2f}")
    print(f"training loop (train_runtime): plain {n / plain_loop:.0f} tok/s ({plain_loop:.1f}s), ours "
          f"{n / ours_loop:.0f} tok/s ({ours_loop:.1f}s), ratio {plain_loop / ours_loop:.2f}")


if __name__ == "__main__":
    main()
