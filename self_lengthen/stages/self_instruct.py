"""step0: grow long-writing instructions from seeds by raw completion, keeping those the model judges suitable."""
import random
import threading
from collections import Counter
from pathlib import Path

from ..errors import UsageError, cli_main
from ..flavour import load_seeds
from ..text import count_words
from .common import StageContext, base_parser, finished, run_stage
from .runner import Checkpoint

MAX_TRIES = 10
JUDGE_MAX_TOKENS = 24


class InstructionPool:
    """Few-shot examples (seeds, plus accepted instructions if the flavour grows the pool) and the accepted set."""

    def __init__(self, seeds: list[str], grow: bool):
        self.examples, self.grow = list(seeds), grow
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
            return True


def make_work(ctx: StageContext, pool: InstructionPool):
    cfg, prompts, client = ctx.flavour.config, ctx.prompts, ctx.client
    tries = ctx.args.max_tries or MAX_TRIES

    def work(key: str, _payload, stop: threading.Event) -> dict | None:
        reasons, tokens = Counter(), 0
        for attempt in range(tries):
            if stop.is_set():
                return None
            rng = random.Random(f"{ctx.args.seed}-{ctx.args.iter}-{key}-{attempt}")
            out = client.complete("base", prompts.self_instruct(*pool.sample(rng)),
                                  stop=prompts.self_instruct_stops(), **ctx.sampling(max_tokens=min(512, ctx.args.max_tokens)))
            tokens += out.completion_tokens
            candidate = prompts.parse_instruction(out.text)
            words = count_words(candidate)
            if not cfg.min_instruction_words < words < cfg.max_instruction_words:
                reasons["instruction_length"] += 1
                continue
            if pool.is_taken(candidate):
                reasons["duplicate"] += 1
                continue
            verdict = client.chat("base", [{"role": "user", "content": prompts.judge(candidate)}],
                                  max_tokens=JUDGE_MAX_TOKENS)  # sampled: a weak judge is not stuck on one answer
            tokens += verdict.completion_tokens
            suitable = prompts.parse_verdict(verdict.text)
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
    pool = InstructionPool(seeds, ctx.flavour.config.grow_pool)
    # Instructions accepted before a restart stay taken (and join the pool).
    ckpt_path = ctx.iter_dir / "instructions.checkpoint.jsonl"
    if ckpt_path.exists():
        previous = Checkpoint(ckpt_path)
        for rec in previous.records.values():
            if rec["status"] == "accepted":
                pool.claim(rec["prompt"])
        previous.close()
    items = {f"slot-{i:06d}": None for i in range(count)}
    return run_stage(ctx, "instructions", items, make_work(ctx, pool), columns=["prompt"],
                     rows_of=lambda recs: [{"prompt": r["prompt"]} for r in recs], length_of=None)


@cli_main
def main(flavour_dir: Path, argv=None):
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--count", type=int, required=True, help="instructions to request (each up to 10 tries)")
    p.add_argument("--seeds", default=None, help="JSONL with 'prompt', or a save_to_disk dataset dir "
                                                 "(default: the flavour's seeds.jsonl)")
    args = p.parse_args(argv)
    if args.count < 1:
        raise UsageError(f"--count={args.count} must be at least 1")
    ctx = StageContext.create(args, flavour_dir)
    run(ctx, args.count, Path(args.seeds) if args.seeds else ctx.flavour.dir / "seeds.jsonl")
