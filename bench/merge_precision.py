"""How much of a LoRA adapter's effect survives when it is merged into the base weights and the copy is kept in a
16-bit float rather than float32? Rounded to nearest (bfloat16, as the CPU worker served merged copies until
2026-12-01, or float16), or stochastically to bfloat16, as the worker's `merged_model` serves them since 2026-12-02.

On the first --rows rows of a LLaMA-Factory dataset of this project (alpaca JSON: instruction, output), the mean loss
of the outputs under: the base model; the adapter applied unmerged (PEFT, float32); the merged copy in float32; the
merged copy rounded to nearest bfloat16 and float16; and the worker's copy. "Effect kept" is a rounded copy's loss
gain over the base, as a share of the adapter's. Also: the share of the changed weights that the rounding takes back
to the base's value.

Usage: .venv/bin/python bench/merge_precision.py ADAPTER_DIR DATASET_JSON [--rows 12] [--flavour llama]
"""
import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def examples(prompts, rows: list[dict], cutoff: int = 1024):
    """(input_ids, labels) per row: the instruction as the flavour's chat request (`prompts`, a PromptBuilder: the
    system prompt the rows carry, as served), then the output and EOS, whose tokens are scored."""
    import torch

    tokenizer = prompts.tokenizer
    for r in rows:
        p = tokenizer(prompts.chat(r["instruction"]), add_special_tokens=False)["input_ids"]
        o = tokenizer(r["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        yield torch.tensor([(p + o)[:cutoff]]), torch.tensor([([-100] * len(p) + o)[:cutoff]])


def mean_loss(model, batches: list) -> float:
    import torch

    total = count = 0
    with torch.no_grad():
        for ids, labels in batches:
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapter", type=Path)
    p.add_argument("dataset", type=Path, help="LLaMA-Factory alpaca JSON, e.g. results/iter_1/data/gen_sft.json")
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--flavour", default="llama", choices=["llama", "qwen"], help="the flavour that made the dataset")
    args = p.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.serve.worker import merged_model

    base = ensure_default_model()
    prompts = PromptBuilder(Flavour(ROOT / args.flavour), AutoTokenizer.from_pretrained(str(base)))
    batches = list(examples(prompts, json.loads(args.dataset.read_text())[: args.rows]))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_base = mean_loss(model, batches)
    peft = PeftModel.from_pretrained(model, str(args.adapter))
    loss_adapter = mean_loss(peft, batches)
    merged = peft.merge_and_unload()
    loss_fp32 = mean_loss(merged, batches)
    changed = {name: weight != before[name] for name, weight in merged.state_dict().items()}
    n_changed = max(sum(int(c.sum()) for c in changed.values()), 1)
    report = [f"{args.adapter} on {len(batches)} rows of {args.dataset.name}: loss base {loss_base:.4f}, adapter "
              f"(unmerged, float32) {loss_adapter:.4f}, merged float32 {loss_fp32:.4f}"]
    def rounded(name: str, model) -> str:
        back = sum(int((changed[k] & (weight == before[k])).sum()) for k, weight in model.state_dict().items())
        loss = mean_loss(model, batches)
        return (f"{name} {loss:.4f}, effect kept {(loss_base - loss) / (loss_base - loss_adapter):.2f}, changed "
                f"weights rounded back to the base's {back / n_changed:.1%}")

    for dtype in (torch.bfloat16, torch.float16):  # each on a copy: Module.to rounds in place
        report.append(rounded(f"merged {str(dtype).removeprefix('torch.')}", copy.deepcopy(merged).to(dtype).float()))
    with tempfile.TemporaryDirectory() as tmp:
        served = AutoModelForCausalLM.from_pretrained(str(merged_model(base, args.adapter, Path(tmp))),
                                                      dtype=torch.float32).eval()
        report.append(rounded("the worker's copy (bfloat16, rounded stochastically)", served))
    print("; ".join(report))


if __name__ == "__main__":
    main()
