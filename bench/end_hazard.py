"""Does training make the Generator stop sooner? The end-of-answer token's probability along fixed answers, under the
base model and under each run's final `gen_sft` adapter (issue 14, item 6).

Sampled lengths are noisy (16 held-out answers per model and run give +-12% on the mean). This scores fixed texts
instead: the base model's clean held-out answers of the runs given (ending a sentence, no repeated n-gram, under
max_tokens), each as its chat request then the answer. At every token of an answer before its last, the model's
probability of ending there (the tokenizer's EOS, `<|im_end|>`) is summed: the answer's *hazard*, the number of
times the model is expected to have stopped early. A model that stops sooner has a larger hazard on the same texts.
Also: the probability of ending where the answer does end, the answers' mean loss (how well the model fits them),
and the mean entropy of the model's next-token distributions along them (a sharper model has less). Each adapter
is applied unmerged in float32 (what was trained, not the served copy).

--adapters scores only those runs' adapters (on the answers of all the runs given), to add a run to a table.

Usage: .venv/bin/python bench/end_hazard.py /work/demo_N/results /work/demo_O/results ... [--adapters RESULTS ...]
"""
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from heldout_runs import answers, measured_iterations  # noqa: E402
from merge_precision import examples  # noqa: E402

from self_lengthen.errors import ArgParser, UsageError, cli_main  # noqa: E402
from self_lengthen.report import run_name  # noqa: E402
from self_lengthen.stages.heldout import is_clean  # noqa: E402


def final_adapter(results: Path) -> Path:
    its = measured_iterations(results)
    adapter = results / f"iter_{its[-1][0] - 1}" / "lora" / "gen_sft" if its else None
    if adapter is None or not (adapter / "adapter_config.json").exists():
        raise UsageError(f"{results}: no final gen_sft adapter beside its last held-out answers; "
                         "give a finished run's results dir")
    return adapter


def end_scores(model, batches: list, eos_id: int) -> dict:
    """Per answer: hazard (summed P(EOS) before its last token), P(EOS) at its end, mean loss, mean entropy of the
    next-token distributions; averaged over answers."""
    import torch

    hazards, ends, losses, entropies = [], [], [], []
    with torch.no_grad():
        for ids, labels in batches:
            scored = labels[0, 1:] != -100
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1][scored].float(), -1)
            targets = labels[0, 1:][scored]
            p_end = log_probs[:, eos_id].exp()
            hazards.append(float(p_end[:-1].sum()))  # the last scored token is the EOS itself
            ends.append(float(p_end[-1]))  # where the answer ends (its label is the EOS)
            losses.append(float(-log_probs.gather(1, targets[:, None]).mean()))
            entropies.append(float(-(log_probs.exp() * log_probs).sum(-1).mean()))
    return {"hazard": statistics.mean(hazards), "end": statistics.mean(ends), "loss": statistics.mean(losses),
            "entropy": statistics.mean(entropies)}


@cli_main
def main():
    p = ArgParser(prog="end_hazard.py", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="results dirs whose base answers are scored")
    p.add_argument("--adapters", nargs="+", type=Path, default=None,
                   help="results dirs whose final gen_sft to score (default: those of the runs)")
    args = p.parse_args()
    runs = args.runs
    adapters = {results: final_adapter(results) for results in (args.adapters or runs)}
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from self_lengthen.chat_template import load_tokenizer
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import Flavour, PromptBuilder

    base_path = ensure_default_model()
    tokenizer = load_tokenizer(base_path)
    prompts = PromptBuilder(Flavour(ROOT / "llama"), tokenizer)
    texts = [{"instruction": r["prompt"], "output": r["response"]}
             for results in runs for r in answers(results / "iter_1") if is_clean(r)]
    batches = list(examples(prompts, texts, cutoff=4096))
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32).eval()
    print(f"{len(texts)} clean held-out answers of the base model, from {len(runs)} runs; EOS {tokenizer.eos_token!r}")
    b = end_scores(base, batches, eos_id)
    print("| model | hazard (expected early stops per answer) | vs base | P(end) at the answer's end | mean loss | "
          "mean entropy (nats) |")
    print("|---|---|---|---|---|---|")
    print(f"| base | {b['hazard']:.3f} | 1.00 | {b['end']:.3f} | {b['loss']:.4f} | {b['entropy']:.4f} |", flush=True)
    ratios = []
    for results, adapter in adapters.items():
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        s = end_scores(model, batches, eos_id)
        base = model.unload()  # the base weights again, for the next adapter
        ratios.append(s["hazard"] / b["hazard"])
        print(f"| {run_name(results)} final gen_sft | {s['hazard']:.3f} | {ratios[-1]:.2f} | "
              f"{s['end']:.3f} | {s['loss']:.4f} | {s['entropy']:.4f} |", flush=True)
    print(f"\nhazard above the base's for {sum(r > 1 for r in ratios)} of {len(ratios)} adapters; "
          f"geometric mean ratio {math.exp(statistics.mean(map(math.log, ratios))):.3f}")


if __name__ == "__main__":
    main()
