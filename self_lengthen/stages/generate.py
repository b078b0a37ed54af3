"""step1 Generator: two initial responses per instruction, filtered and retried, then length-biased sampling."""
import threading
from collections import Counter
from pathlib import Path

from ..errors import cli_main
from ..text import check_response, reason_of_early_end
from .common import StageContext, base_parser, finished, run_stage, stable_key
from .runner import require_complete

MAX_TRIES = 20
RESPONSES_PER_INSTRUCTION = 2
FINISH_FRACTION = 0.95  # the method ends step1 once more than 95% of its items are finished


def make_work(ctx: StageContext, model: str):
    tries = ctx.args.max_tries or MAX_TRIES
    meta_words = ctx.flavour.config.meta_words

    def work(key: str, prompt: str, stop: threading.Event) -> dict | None:
        reasons, tokens = Counter(), 0
        for attempt in range(tries):
            if stop.is_set():
                return None
            out = ctx.client.chat(model, ctx.prompts.messages(prompt), **ctx.sampling(**ctx.checked_whole()))
            tokens += out.completion_tokens
            text = out.text.strip()
            if out.finish_reason == "rejected":  # the worker ended it: the check would reject any ending
                reason = reason_of_early_end(text, meta_words)
            else:
                reason = check_response(text, meta_words)
            if reason is None:
                return {"status": "accepted", "prompt": prompt, "initial_response": text,
                        "tries": attempt + 1, "reasons": reasons, "tokens": tokens}
            reasons[reason] += 1
        return {"status": "exhausted", "prompt": prompt, "tries": tries, "reasons": reasons, "tokens": tokens}

    return work


def run(ctx: StageContext) -> Path:
    if done := finished(ctx, "initial_responses"):
        return done
    source = ctx.iter_dir / "instructions"
    require_complete(source, f"python step0_self_instruct.py --iter {ctx.args.iter} --count N")
    from datasets import load_from_disk

    prompts = load_from_disk(str(source))["prompt"]
    model = ctx.model("gen_sft")
    ctx.check_model_served(model)
    items = {f"{stable_key(p)}-{j}": p for p in prompts for j in range(RESPONSES_PER_INSTRUCTION)}
    return run_stage(ctx, "initial_responses", items, make_work(ctx, model), columns=["prompt", "initial_response"],
                     rows_of=lambda recs: [{"prompt": r["prompt"], "initial_response": r["initial_response"]} for r in recs],
                     length_column="initial_response", model=model)


def parser():
    return base_parser(__doc__.splitlines()[0], finish_fraction=FINISH_FRACTION)


@cli_main
def main(flavour_dir: Path, argv=None):
    args = parser().parse_args(argv)
    run(StageContext.create(args, flavour_dir))
