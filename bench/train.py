"""Training throughput: the project's training call (tokenize once, then llamafactory-cli under torchrun) against a
plain `llamafactory-cli train` of the same config and data, in one run. Prints the tokens/s ratio (goal >= 1.0).

Usage: .venv/bin/python bench/train.py [--rows 64] [--steps 8]
Prints two ratios: wall time with start-up (ours pays a separate tokenize process and torchrun's launcher) and the
training loop alone (the trainer's own train_runtime).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from self_lengthen.default_model import ensure_default_model  # noqa: E402
from self_lengthen.dist import DistEnv  # noqa: E402
from self_lengthen.flavour import Flavour, PromptBuilder  # noqa: E402
from self_lengthen.stages.runner import save_dataset  # noqa: E402
from self_lengthen.train import (load_profile, mk_config, mk_data, pick_template, run_logged, tokenize, torchrun,  # noqa: E402
                                 train_env, train_python)

PARA = "The river bends past the old mill, and the town grows along its banks as the years go by. "


def build(rows: int, steps: int):
    from transformers import AutoTokenizer

    model = ensure_default_model()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    it = work / "results" / "iter_1"
    data = [{"prompt": f"Write about river town {i}.", "initial_response": PARA * 3,
             "extended_response": (PARA * 6 + "\n\n") * 3} for i in range(rows)]
    save_dataset(data, ["prompt", "initial_response", "extended_response"], it / "extended_responses")
    flavour = Flavour(ROOT / "llama")
    data_dir = mk_data(it, PromptBuilder(flavour, AutoTokenizer.from_pretrained(model)))
    system = json.loads((data_dir / "_COMPLETE").read_text())["system"]
    profile = load_profile("tiny")
    profile["training"].update(max_steps=steps, per_device_train_batch_size=2)
    config = mk_config(it, 1, "gen_sft", model, flavour, profile, pick_template(model, flavour, system), gpus=0)
    return work, config


def tokens_in(config: Path) -> int:
    cfg = yaml.safe_load(config.read_text())
    return cfg["max_steps"] * cfg["per_device_train_batch_size"] * cfg["cutoff_len"]  # upper bound, same for both


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    work, config = build(args.rows, args.steps)
    plain_cfg = yaml.safe_load(config.read_text())
    plain_cfg.pop("tokenized_path")
    plain_cfg["output_dir"] = str(work / "plain_out")
    plain = work / "plain.yaml"
    plain.write_text(yaml.safe_dump(plain_cfg))
    start = time.monotonic()
    run_logged([str(train_python().parent / "llamafactory-cli"), "train", str(plain)], work / "plain.log",
               env=train_env(), what="plain llamafactory-cli train")
    plain_s = time.monotonic() - start
    start = time.monotonic()
    tokenize(config, work / "tok.log")
    torchrun(config, DistEnv(), 0, work / "ours.log")
    ours_s = time.monotonic() - start
    n = tokens_in(config)
    ours_loop = train_runtime(Path(yaml.safe_load(config.read_text())["output_dir"]))
    plain_loop = train_runtime(work / "plain_out")
    print(f"wall (start-up included): plain {n / plain_s:.0f} tok/s ({plain_s:.0f}s), ours {n / ours_s:.0f} tok/s "
          f"({ours_s:.0f}s), ratio {plain_s / ours_s:.2f}")
    print(f"training loop (train_runtime): plain {n / plain_loop:.0f} tok/s ({plain_loop:.1f}s), ours "
          f"{n / ours_loop:.0f} tok/s ({ours_loop:.1f}s), ratio {plain_loop / ours_loop:.2f} "
          f"(same config, {args.steps} steps)")


def train_runtime(output_dir: Path) -> float:
    """Seconds the trainer spent in its loop, as it reports them (no interpreter, model or data start-up)."""
    return float(json.loads((output_dir / "train_results.json").read_text())["train_runtime"])

if __name__ == "__main__":
    main()
