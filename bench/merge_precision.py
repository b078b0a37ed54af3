"""How much of a LoRA adapter's effect survives when it is merged into the base weights and the copy is kept in a
16-bit float rather than float32? Rounded to nearest (bfloat16, as the CPU worker served merged copies until
2026-12-01, or float16), or stochastically to bfloat16, as the worker's `merged_model` serves them since 2026-12-02.

On the first --rows rows of a LLaMA-Factory dataset of this project (alpaca JSON: instruction, output), the mean loss
of the outputs under: the base model; the adapter applied unmerged (PEFT, float32); the merged copy in float32; the
merged copy rounded to nearest bfloat16 and float16; and the worker's copy. "Effect kept" is a rounded copy's loss
gain over the base, as a share of the adapter's. Also: how far each model's next-token distributions are from the
adapter's there (mean KL per scored token), and the share of the changed weights that the rounding takes back to
the base's value.

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


def scores(model, batches: list, reference: list | None = None) -> tuple[float, float | None, list]:
    """The mean loss of the scored tokens; their mean KL(reference || model) per token, where `reference` holds
    another model's log-probabilities there; and this model's log-probabilities there."""
    import torch

    loss = kl = count = 0
    log_probs = []
    with torch.no_grad():
        for i, (ids, labels) in enumerate(batches):
            scored = labels[0, 1:] != -100
            out = model(input_ids=ids, labels=labels)
            n = int(scored.sum())
            loss += out.loss.item() * n
            log_probs.append(torch.log_softmax(out.logits[0, :-1][scored].float(), -1))
            if reference is not None:
                kl += float((reference[i].exp() * (reference[i] - log_probs[i])).sum())
            count += n
    return loss / count, (kl / count if reference is not None else None), log_probs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("adapter", type=Path)
    p.add_argument("dataset", type=Path, help="LLaMA-Factory alpaca JSON, e.g. results/iter_1/data/gen_sft.json")
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--flavour", default="llama", choices=["llama", "qwen"], help="the flavour that made the dataset")
    args = p.parse_args()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from self_lengthen.chat_template import load_tokenizer
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.serve.worker import merged_model

    base = ensure_default_model()
    prompts = PromptBuilder(Flavour(ROOT / args.flavour), load_tokenizer(base))
    batches = list(examples(prompts, json.loads(args.dataset.read_text())[: args.rows]))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft = PeftModel.from_pretrained(model, str(args.adapter))
    loss_adapter, _, expected = scores(peft, batches)
    with peft.disable_adapter():
        loss_base, kl_base, _ = scores(peft, batches, expected)
    merged = peft.merge_and_unload()
    loss_fp32, kl_fp32, _ = scores(merged, batches, expected)
    changed = {name: weight != before[name] for name, weight in merged.state_dict().items()}
    n_changed = max(sum(int(c.sum()) for c in changed.values()), 1)
    report = [f"{args.adapter} on {len(batches)} rows of {args.dataset.name} (KL: from the adapter's next-token "
              f"distributions, per scored token): base: loss {loss_base:.4f}, KL {kl_base:.5f}; adapter (unmerged, "
              f"float32): loss {loss_adapter:.4f}; merged float32: loss {loss_fp32:.4f}, KL {kl_fp32:.5f}"]

    def rounded(name: str, model) -> str:
        back = sum(int((changed[k] & (weight == before[k])).sum()) for k, weight in model.state_dict().items())
        loss, kl, _ = scores(model, batches, expected)
        return (f"{name}: loss {loss:.4f}, KL {kl:.5f}, effect kept {(loss_base - loss) / (loss_base - loss_adapter):.2f}"
                f", changed weights rounded back to the base's {back / n_changed:.1%}")

    for dtype in (torch.bfloat16, torch.float16):  # each on a copy: Module.to rounds in place
        report.append(rounded(f"merged {str(dtype).removeprefix('torch.')}", copy.deepcopy(merged).to(dtype).float()))
    with tempfile.TemporaryDirectory() as tmp:
        served = AutoModelForCausalLM.from_pretrained(str(merged_model(base, args.adapter, Path(tmp))),
                                                      dtype=torch.float32).eval()
        report.append(rounded("the worker's copy (bfloat16, rounded stochastically)", served))
    print("; ".join(report))


if __name__ == "__main__":
    main()
