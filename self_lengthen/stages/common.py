"""What every stage shares: its command line, its context (paths, client, prompts, models) and its run."""
import argparse
import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..chat_template import load_tokenizer
from ..client import Client
from ..default_model import resolve_base_model
from ..dist import DistEnv
from ..errors import ArgParser, UsageError, positive_int
from ..flavour import Flavour, PromptBuilder
from ..profile import parse_sampling
from ..text import count_words, drop_short
from ..io import Checkpoint, output_dir, write_json_atomic
from .runner import Journal, is_complete, run_items, save_dataset, summarize

DEFAULT_MAX_TOKENS = 16384  # the method's; the API server caps it by the model's context
# Every request of steps 0-2 stops at a horizontal rule or a triple newline, as the method's do.
STOP_STRINGS = ("\n\n---", "\n---", "---", "\n\n\n")


def stable_key(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def default_workers() -> int:
    from ..serve.cluster import gpu_count

    gpus = gpu_count()
    return DistEnv.from_env().world_size * gpus * 32 if gpus else 32


def base_parser(description: str, finish_fraction: float = 1.0) -> argparse.ArgumentParser:
    p = ArgParser(description=description)
    p.add_argument("--iter", type=int, required=True, help="macro-iteration (1-based)")
    p.add_argument("--workdir", default=".", help="where results/ lives (default: here)")
    p.add_argument("--workers", type=positive_int, default=None, help="requests in flight (default: 32 per GPU, 32 on CPU)")
    p.add_argument("--max_tokens", type=positive_int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--max_tries", type=positive_int, default=None, help="tries per item (default: the method's)")
    p.add_argument("--finish_fraction", type=float, default=finish_fraction,
                   help=f"end once more than this share of items is finished (default: the method's {finish_fraction:g})")
    p.add_argument("--keep_in_flight", action=argparse.BooleanOptionalAction, default=False,
                   help="past --finish_fraction, keep the items that finish with the request they have in flight "
                        "(the method drops them; no further request is sent either way)")
    p.add_argument("--time_budget", type=float, default=None,
                   help="minutes after which the stage ends, once at least one item was accepted")
    p.add_argument("--base_model", default="default", help="'default' or the HF dir the server serves (tokenizer)")
    p.add_argument("--base_url", default=None, help="OpenAI-compatible endpoint (default $SELF_LENGTHEN_BASE_URL "
                                                    "or http://127.0.0.1:8000/v1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop_short", action=argparse.BooleanOptionalAction, default=True,
                   help="length-biased sampling of the accepted rows (the method's; step1 and step2)")
    p.add_argument("--prompt_templates", default=None,
                   help="a prompt-template dir: ours (self_instruct.txt, judge.txt, extend.txt) or the original's "
                        "(self_instruct.md, judge_prompt.md, extend_response.md); default: the flavour's")
    p.add_argument("--reject_early", action=argparse.BooleanOptionalAction, default=True,
                   help="let the worker end a request (step1, step2's completion) once the response check is sure "
                        "to reject its text; the outcome is the same, without the tokens after that point")
    p.add_argument("--sampling", default=None,
                   help="FIELD=VALUE,... replacing the method's sampling (temperature 0.7, top_p 0.8, top_k 20, "
                        "repetition_penalty 1.1; top_k -1: off)")
    p.add_argument("--request_timeout", type=float, default=1800.0)
    p.add_argument("--retries", type=int, default=4, help="retries of a failing request (with backoff)")
    return p


@dataclass
class StageContext:
    args: argparse.Namespace
    flavour: Flavour
    prompts: PromptBuilder
    client: Client
    iter_dir: Path

    @classmethod
    def create(cls, args, flavour_dir: Path) -> "StageContext":
        if args.iter < 1:
            raise UsageError(f"--iter={args.iter}: iterations are numbered from 1")
        if not 0 < args.finish_fraction <= 1:
            raise UsageError(f"--finish_fraction={args.finish_fraction} must be in (0, 1]")
        if args.time_budget is not None and not args.time_budget > 0:
            raise UsageError(f"--time_budget={args.time_budget} must be a positive number of minutes")
        flavour = Flavour(flavour_dir, prompt_templates=args.prompt_templates)
        tokenizer = load_tokenizer(resolve_base_model(args.base_model))
        args.workers = args.workers or default_workers()
        sampling = parse_sampling(args.sampling) if args.sampling else None
        client = Client(args.base_url, timeout=args.request_timeout, retries=max(0, args.retries), sampling=sampling)
        iter_dir = output_dir(args.workdir, "--workdir").resolve() / "results" / f"iter_{args.iter}"
        iter_dir.mkdir(parents=True, exist_ok=True)
        return cls(args, flavour, PromptBuilder(flavour, tokenizer), client, iter_dir)

    def model(self, role: str) -> str:
        """The base model writes in iteration 1; the adapters trained in iteration k-1 afterwards."""
        return "base" if self.args.iter == 1 else role

    def check_model_served(self, name: str) -> None:
        """Fail early, with one line, if the endpoint does not serve `name` (or cannot be reached)."""
        served = self.client.models()
        if name not in served:
            how = ("without --no-serve_base" if name == "base" else
                   f"with --iter={self.args.iter - 1} so it serves the adapters of the previous iteration")
            raise UsageError(f"the endpoint serves {served}, not {name!r}; start run_server.sh {how}")

    def sampling(self, **extra) -> dict:
        """The method's request: its max_tokens and its stop strings (besides the model's own end-of-turn tokens)."""
        return {"max_tokens": self.args.max_tokens, "stop": list(STOP_STRINGS), **extra}

    def checked_whole(self, prefix: str = "") -> dict:
        """Request fields for a text that the response check judges whole (after `prefix`): with --reject_early,
        the worker ends the request once that check is sure to reject it (finish_reason "rejected")."""
        if not self.args.reject_early:
            return {}
        return {"reject_early": {"prefix": prefix, "meta_words": list(self.flavour.config.meta_words)}}


def finished(ctx: StageContext, name: str) -> Path | None:
    """The stage's dataset dir if a previous run completed it (then the stage is a no-op), else None."""
    out = ctx.iter_dir / name
    if is_complete(out):
        print(f"{name}: already complete at {out}")
        return out
    return None


def journal_path(ctx: StageContext, name: str) -> Path:
    return ctx.iter_dir / f"{name}.journal.jsonl"


def run_stage(ctx: StageContext, name: str, items: dict, work: Callable, *, columns: list[str],
              rows_of: Callable[[list[dict]], list[dict]], length_column: str | None, model: str = "base",
              journal: Journal | None = None, types: dict[str, str] | None = None) -> Path:
    """Resume-or-run one stage and write its dataset, summary and completion marker. With `length_column`, the
    accepted rows go through drop_short on that column's length in characters (the method's measure). A stage
    whose `work` records every request in `journal` gets its token counts from there."""
    out_dir = ctx.iter_dir / name
    if finished(ctx, name):
        return out_dir
    if not items:
        raise UsageError(f"{name}: nothing to do (the previous stage produced no rows)")
    checkpoint = Checkpoint(ctx.iter_dir / f"{name}.checkpoint.jsonl")
    before = set(checkpoint.records)
    received_before = ctx.client.tokens_received
    started = time.monotonic()
    try:
        records = run_items(items, work, checkpoint, workers=ctx.args.workers,
                            finish_fraction=ctx.args.finish_fraction, keep_in_flight=ctx.args.keep_in_flight,
                            desc=f"iter {ctx.args.iter} {name}",
                            time_budget=ctx.args.time_budget * 60 if ctx.args.time_budget else None)
    finally:
        checkpoint.close()
    if journal is None:
        summary = summarize(records, started, sum(r.get("tokens", 0) for r in records if r["key"] not in before))
    else:
        summary = summarize(records, started, journal.tokens_this_run)
        received = ctx.client.tokens_received - received_before
        # The share of what the engine sent back that is in a record (a finished round, or a request of a chain
        # that a rerun continues): the rest was lost with requests that never came back.
        summary["tokens_received_this_run"] = received
        summary["tokens_recorded_share"] = round(journal.tokens_this_run / received, 4) if received else 1.0
        summary["tokens_capped_this_run"] = journal.capped_tokens_this_run  # in requests that hit max_tokens
        summary["tokens_capped_repeating_this_run"] = journal.capped_repeating_tokens_this_run
        summary["tokens_rejected_this_run"] = dict(journal.rejected_tokens_this_run.most_common())
        summary["requests_ended_early_this_run"] = journal.ended_early_this_run  # finish_reason "rejected"
        summary["chains_unfinished"] = sum(1 for k in journal.records if k in items and k not in checkpoint.records)
    summary["items_kept_while_stopping"] = sum(1 for r in records if r.get("wind_down"))
    summary["model"] = model
    summary["sampling"] = ctx.client.sampling
    rows = rows_of([r for r in records if r["status"] == "accepted"])
    if length_column is not None and ctx.args.drop_short:
        summary["mean_words_before_drop_short"] = _mean([count_words(r[length_column]) for r in rows])
        rng = random.Random(f"{ctx.args.seed}-{name}-{ctx.args.iter}")
        rows = drop_short(rows, lambda row: len(row[length_column]), rng)
        summary["mean_words_after_drop_short"] = _mean([count_words(r[length_column]) for r in rows])
    summary["rows"] = len(rows)
    save_dataset(rows, columns, out_dir, types)
    write_json_atomic(ctx.iter_dir / f"{name}.summary.json", summary)
    print(f"{name}: {len(rows)} rows -> {out_dir} ({summary['accepted']} accepted, {summary['exhausted']} exhausted, "
          f"{summary['tokens_per_second_this_run']} tok/s)")
    return out_dir


def _mean(xs: list[int]) -> float:
    return round(sum(xs) / len(xs), 1) if xs else 0.0


def flavour_dir_of(script: str) -> Path:
    return Path(os.path.abspath(script)).parent
