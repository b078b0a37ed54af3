"""Does training move the Generator to its targets' length? Retrain one iteration's gen_sft of a finished run with a
given number of epochs (same rows, same starting adapter, same settings otherwise), then serve it and measure it on
the held-out instructions and on its own training prompts, beside the length of the targets it trained on.

Run it once with the run's own epochs (the baseline, which reproduces the run's adapter) and once with more: if the
Generator's length on its training prompts stays well under its targets' at the run's epochs and nears them with
more, the run underfits. `--epochs 0` trains nothing and measures the iteration's starting Generator (the base model
for iteration 1) the same way. `--rows` trains on the rows of several runs' gen_sft.json pooled instead of the
iteration's own: does the Generator move with more rows? `--targets initial` trains on the same rows with, as each
row's answer, the initial response its extension started from (a control: how much of what training does to the
Generator's length comes from the Extender's lengthening, and how much from training on the model's own sampled
writing at all). Each part is resumable (a rerun skips a finished training and finished answers).

Usage: .venv/bin/python bench/fit_check.py --results llama/study/results --iter 3 --epochs 10 --workdir /tmp/fit10
       [--learning_rate 1e-3] [--max_tokens 800] [--rows A/iter_1/data/gen_sft.json B/iter_1/data/gen_sft.json]
       [--targets initial]
Needs the machine to itself (training, then serving, on every core).
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from self_lengthen.errors import UsageError, cli_main  # noqa: E402
from self_lengthen.report import heldout_row  # noqa: E402
from self_lengthen.stages import heldout  # noqa: E402
from self_lengthen.stages.common import StageContext  # noqa: E402
from self_lengthen.text import count_words  # noqa: E402
from self_lengthen.train import (adapter_done, publish_adapter, run_logged, train_env, train_python,  # noqa: E402
                                 write_datasets)

LLAMA = ROOT / "llama"
TRAINING_PROMPTS = "training_prompts"


def config_path(work: Path, epochs: int) -> Path:
    """The retrained gen_sft's LLaMA-Factory config."""
    return work / f"train_gen_sft_{epochs}ep.yaml"


def pooled_rows(files: list[Path]) -> list[dict]:
    """The gen_sft rows of several runs, each (instruction, output) pair once."""
    rows, seen = [], set()
    for path in files:
        if not path.is_file():
            raise UsageError(f"--rows: {path} is not a file; give runs' iter_K/data/gen_sft.json")
        for row in json.loads(path.read_text(encoding="utf-8")):
            if (row["instruction"], row["output"]) not in seen:
                seen.add((row["instruction"], row["output"]))
                rows.append(row)
    return rows


def initial_targets(files: list[Path], rows: list[dict]) -> list[dict]:
    """`rows` (gen_sft rows read from `files`) with each extended answer replaced by the initial response that step2
    extended into it (from each file's iteration's extended_responses)."""
    from datasets import load_from_disk

    initial = {}
    for path in files:
        source = path.parent.parent / "extended_responses"
        if not source.is_dir():
            raise UsageError(f"--targets initial: {source} is missing; it needs the run's step2 output beside {path}")
        initial.update({(r["prompt"], r["extended_response"]): r["initial_response"]
                        for r in load_from_disk(str(source))})
    missing = sum((r["instruction"], r["output"]) not in initial for r in rows)
    if missing:
        raise UsageError(f"--targets initial: {missing} of {len(rows)} rows have no extension in their run's "
                         f"extended_responses; give gen_sft.json files as the runs wrote them")
    return [{**r, "output": initial[(r["instruction"], r["output"])]} for r in rows]


def moved(config: dict, results: Path) -> dict:
    """A run's training config with its paths under the run's results dir (where it was trained: the dir two above
    its dataset_dir) pointed at `results`, where the run is now. train() overwrites the dataset, tokenized and output
    paths, but the adapter it continues from (iteration >= 2) and, on an AVX2 machine, the float32 base copy kept
    under results/ must follow a moved run."""
    trained_at = str(Path(config["dataset_dir"]).parent.parent)
    return {key: str(results) + value[len(trained_at):]
            if isinstance(value, str) and (value == trained_at or value.startswith(trained_at + "/")) else value
            for key, value in config.items()}


def train(results: Path, k: int, epochs: int, work: Path, rows: list[dict], learning_rate: float | None = None) -> dict:
    """gen_sft of iteration k retrained on `rows` with `epochs` epochs (and `learning_rate`, if given), from the
    adapter the iteration started from, into work/results/iter_k/lora; ext_sft copied as is."""
    src, dst = results / f"iter_{k}", work / "results" / f"iter_{k}"
    if not adapter_done(dst, "gen_sft"):
        config = moved(yaml.safe_load((src / "data" / "train_gen_sft.yaml").read_text()), results)
        config["num_train_epochs"] = epochs
        if learning_rate is not None:
            config["learning_rate"] = learning_rate
        write_datasets(work / "data", {"gen_sft": rows})   # the run's own results stay as they are
        config["dataset_dir"] = str(work / "data")
        config["tokenized_path"] = str(work / "data" / "tokenized_gen_sft")
        shutil.rmtree(config["tokenized_path"], ignore_errors=True)
        config["output_dir"] = str(dst / "lora" / ".gen_sft.training")
        path = config_path(work, epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        shutil.rmtree(config["output_dir"], ignore_errors=True)
        run_logged([str(train_python().parent / "llamafactory-cli"), "train", str(path)], work / "train.log",
                   env=train_env(), what=f"training gen_sft ({epochs} epochs)")
        publish_adapter(dst, "gen_sft")
    if not adapter_done(dst, "ext_sft"):
        shutil.copytree(src / "lora" / "ext_sft", dst / "lora" / "ext_sft")
    return json.loads((dst / "lora" / "gen_sft" / "all_results.json").read_text())


def answer_training_prompts(ctx: StageContext, rows: list[dict]) -> None:
    """The Generator on the instructions it trained on (each once), with the method's sampling (as the held-out step
    answers)."""
    prompts = list(dict.fromkeys(r["instruction"] for r in rows))
    items = {f"{i:04d}": {"prompt": p} for i, p in enumerate(prompts)}
    heldout.answer(ctx, ctx.model("gen_sft"), TRAINING_PROMPTS, items)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True, help="a finished run's results dir")
    p.add_argument("--iter", type=int, required=True, help="the iteration whose gen_sft is retrained")
    p.add_argument("--epochs", type=int, required=True, help="0: no training, the iteration's starting Generator")
    p.add_argument("--learning_rate", type=float, default=None, help="default: the run's")
    p.add_argument("--workdir", type=Path, required=True, help="where the retrained adapter and answers go")
    p.add_argument("--max_tokens", type=int, default=2048, help="per answer (the study's final evaluation: 2048)")
    p.add_argument("--rows", type=Path, nargs="+", default=None,
                   help="gen_sft.json files whose rows, pooled, are trained on instead of the iteration's own")
    p.add_argument("--targets", choices=("extended", "initial"), default="extended",
                   help="initial: each row's answer is the initial response its extension started from (a control)")
    args = p.parse_args(argv)
    results, work, k = args.results.resolve(), args.workdir.resolve(), args.iter
    data = results / f"iter_{k}" / "data" / "gen_sft.json"
    if not data.is_file():
        raise UsageError(f"{data} is missing: --results must be a run whose iteration {k} trained")
    if args.epochs < 0:
        raise UsageError(f"--epochs={args.epochs} must be at least 0")
    files = args.rows or [data]
    rows = pooled_rows(files)
    if args.targets == "initial":
        rows = initial_targets(files, rows)
    if args.epochs:
        trained = train(results, k, args.epochs, work, rows, args.learning_rate)
        served_iter = k
    else:   # the adapters the iteration started from (none for iteration 1)
        trained, served_iter = {}, k - 1
        if k > 1 and not (work / "results" / f"iter_{k - 1}" / "lora").is_dir():
            shutil.copytree(results / f"iter_{k - 1}" / "lora", work / "results" / f"iter_{k - 1}" / "lora")
    serve = ["bash", str(LLAMA / "run_server.sh"), "--base_model=default", f"--iter={served_iter}",
             f"--workdir={work}"]
    try:
        if subprocess.run(serve, timeout=1800).returncode != 0:
            raise UsageError(f"run_server.sh failed; see {work}/run")
        stage_args = [f"--iter={served_iter + 1}", f"--workdir={work}", f"--max_tokens={args.max_tokens}",
                      "--workers=32", "--no-drop_short"]
        heldout.main(LLAMA, stage_args)
        ctx = StageContext.create(heldout.parser().parse_args(stage_args), LLAMA)
        answer_training_prompts(ctx, rows)
    finally:
        subprocess.run(["bash", str(LLAMA / "stop_server.sh"), f"--workdir={work}"], timeout=600)
    lr = yaml.safe_load(config_path(work, args.epochs).read_text())["learning_rate"] if args.epochs else None
    report = {"iter": k, "epochs": args.epochs, "learning_rate": lr, "targets": args.targets, "rows": len(rows),
              "instructions": len({r["instruction"] for r in rows}),
              "train_loss": round(trained["train_loss"], 3) if trained else None,
              "target_mean_words": round(statistics.mean(count_words(r["output"]) for r in rows), 1),
              "training_prompts": heldout_row(ctx.iter_dir, TRAINING_PROMPTS), "heldout": heldout_row(ctx.iter_dir)}
    (work / "fit_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
