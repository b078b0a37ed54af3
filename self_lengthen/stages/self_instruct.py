"""step0: grow long-writing instructions from seeds by raw completion, keeping those the model judges suitable."""
import random
import threading
from collections import Counter
from pathlib import Path

from ..errors import cli_main, positive_int
from ..flavour import load_seeds
from ..io import Checkpoint
from ..text import count_words
from .common import STOP_STRINGS, StageContext, base_parser, finished, run_stage
from .heldout import heldout_prompts

MAX_TRIES = 10
JUDGE_MAX_TOKENS = 24


class InstructionPool:
    """Few-shot examples and the accepted set. With `grow`, accepted instructions join the examples, which go back
    to the seeds after every `reset_every` accepted (the method's qwen flavour: 500); without, only seeds."""

    def __init__(self, seeds: list[str], grow: bool, reset_every: int | None = None, excluded: list[str] = ()):
        self.seeds, self.grow, self.reset_every = list(seeds), grow, reset_every
        self.excluded = {e.strip().lower() for e in excluded}  # the held-out instructions: never emitted
        self.examples = list(seeds)
        self.grown = 0  # accepted since the last reset
        self.taken: set[str] = {s.strip().lower() for s in seeds}
        self.lock = threading.Lock()

    def sample(self, rng: random.Random) -> tuple[str, str]:
        with self.lock:
            a, b = rng.sample(self.examples, 2)
        return a, b

    def is_taken(self, text: str) -> bool:
        with self.lock:
            return text.strip().lower() in self.taken

    def claim(self, text: str) -> bool:
        """Take `text` as accepted; False if it already was (by another worker, say)."""
        norm = text.strip().lower()
        with self.lock:
            if norm in self.taken:
                return False
            self.taken.add(norm)
            if self.grow:
                self.examples.append(text)
                self.grown += 1
                if self.reset_every and self.grown >= self.reset_every:
                    self.examples, self.grown = list(self.seeds), 0
            return True


def make_work(ctx: StageContext, pool: InstructionPool):
    cfg, prompts, client = ctx.flavour.config, ctx.prompts, ctx.client
    tries = ctx.args.max_tries or MAX_TRIES
    lenient = ctx.args.judge_parse == "lenient"
    stop = [*STOP_STRINGS, *prompts.self_instruct_stops()]

    def work(key: str, _payload, stop_event: threading.Event) -> dict | None:
        reasons, tokens = Counter(), 0
        for attempt in range(tries):
            if stop_event.is_set():
                return None
            rng = random.Random(f"{ctx.args.seed}-{ctx.args.iter}-{key}-{attempt}")
            out = client.complete("base", prompts.self_instruct(*pool.sample(rng)), **ctx.sampling(stop=stop))
            tokens += out.completion_tokens
            candidate = prompts.parse_instruction(out.text)
            words = count_words(candidate)
            if not cfg.min_instruction_words < words < cfg.max_instruction_words:
                reasons["instruction_length"] += 1
                continue
            if candidate.strip().lower() in pool.excluded:
                reasons["heldout"] += 1
                continue
            if pool.is_taken(candidate):
                reasons["duplicate"] += 1
                continue
            # Sampled: a weak judge is not stuck on one answer. The cap only cuts answers that are not a verdict.
            verdict = client.chat("base", prompts.messages(prompts.judge(candidate)),
                                  **ctx.sampling(max_tokens=min(JUDGE_MAX_TOKENS, ctx.args.max_tokens)))
            tokens += verdict.completion_tokens
            suitable = prompts.parse_verdict(verdict.text, lenient=lenient)
            if suitable is None:
                reasons["judge_unclear"] += 1
                continue
            if not suitable:
                reasons["judged_unsuitable"] += 1
                continue
            if not pool.claim(candidate):
                reasons["duplicate"] += 1
                continue
            return {"status": "accepted", "prompt": candidate, "tries": attempt + 1, "reasons": reasons, "tokens": tokens}
        return {"status": "exhausted", "tries": tries, "reasons": reasons, "tokens": tokens}

    return work


def run(ctx: StageContext, count: int, seeds_path: Path) -> Path:
    if done := finished(ctx, "instructions"):
        return done
    seeds = load_seeds(seeds_path)
    ctx.check_model_served("base")
    cfg = ctx.flavour.config
    pool = InstructionPool(seeds, cfg.grow_pool, cfg.pool_reset_every, excluded=heldout_prompts(ctx.flavour))
    # Instructions accepted before a restart stay taken (and join the pool, in the order they were accepted).
    ckpt_path = ctx.iter_dir / "instructions.checkpoint.jsonl"
    if ckpt_path.exists():
        previous = Checkpoint(ckpt_path)
        for rec in previous.records.values():
            if rec["status"] == "accepted":
                pool.claim(rec["prompt"])
        previous.close()
    items = {f"slot-{i:06d}": None for i in range(count)}
    return run_stage(ctx, "instructions", items, make_work(ctx, pool), columns=["prompt"],
                     rows_of=lambda recs: [{"prompt": r["prompt"]} for r in recs], length_column=None)


def parser():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--count", type=positive_int, required=True, help="instructions to request (each up to 10 tries)")
    p.add_argument("--seeds", default=None, help="JSONL with 'prompt', or a save_to_disk dataset dir "
                                                 "(default: the flavour's seeds.jsonl)")
    p.add_argument("--judge_parse", choices=("strict", "lenient"), default="strict",
                   help="strict (the method's): the whole answer must be the flavour's judge_answer; lenient: the "
                        "first yes/no word decides (for weak judges)")
    return p


@cli_main
def main(flavour_dir: Path, argv=None):
    args = parser().parse_args(argv)
    ctx = StageContext.create(args, flavour_dir)
    run(ctx, args.count, Path(args.seeds) if args.seeds else ctx.flavour.dir / "seeds.jsonl")
