"""Synthesis benchmarks, each a ratio measured within one run.

(a) throughput: step1 (Generator) + step2 (Extender), the real stage code on the same instructions and sampling,
    in generated tokens/s: through the whole stack (API server -> controller -> our worker -> vLLM) against
    vLLM in this process without any server (an AsyncLLM engine that the stages call directly). Goal >= 0.90.
(b) rss: the client's peak RSS (the real step1 process) at 2000 items over 200 items, against a fast fake
    endpoint. Goal <= 1.2.
(c) step2: the real Extender stage through the whole stack on a fixed set of initial responses
    (bench/data/step2_initial_responses.jsonl), against the engine's saturated throughput in the same run (vLLM
    offline, 32 of step2's chat requests generating --saturate_tokens each). E1: step2's tokens/s, counting every
    token the engine sent back, over the saturated tokens/s (goal >= 0.8). E2: the share of those tokens that the
    stage recorded (goal >= 0.95). `step2-fixture` makes the fixed set (step1 on the llama seeds, cpu-demo sizes).
(e) early: step2 on the fixed set twice through one stack, without and then with --reject_early (the worker ends
    a request once the response check is sure to reject its text): tokens and wall seconds per finished chain, and
    the ratios (goal: fewer tokens for the same kind of outcome; the accept/reject decisions are the same).
(d) beside: the Generator's held-out answers and step1 on the same instructions through the stack, one after the
    other (as before 2026-12-02) and then beside each other (as the pipeline runs them), each from a fresh workdir:
    wall time and tokens/s of the two stages together, and the ratio of wall times.

The bench starts itself again, once, with the environment our workers get (run_with_engine_env).
Usage: .venv/bin/python bench/synthesis.py [throughput|rss|step2|step2-fixture|early|beside|all] [--instructions 8]
       [--profile cpu-demo] [--workers N] [--attempts N]
The stack uses ports 18900-18902 and is stopped before the in-process engine starts, so each side has the machine
to itself.
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from self_lengthen.client import RequestCount  # noqa: E402
from self_lengthen.stages.runner import save_dataset  # noqa: E402
from self_lengthen.io import write_jsonl_atomic  # noqa: E402

FLAVOUR = ROOT / "llama"
PORTS = {"api": 18900, "controller": 18901, "worker": 18902}


# --- (a) throughput ---------------------------------------------------------------------------------------------

class InProcessEngine(RequestCount):
    """The Client interface (chat, complete, models) over a vLLM AsyncLLM in this process: no HTTP, no FastChat.
    Prompts and sampling are translated exactly as the worker translates them."""

    def __init__(self, model_dir: Path):
        if missing_engine_env():
            raise SystemExit("InProcessEngine: this process lacks our workers' environment; call "
                             "synthesis.run_with_engine_env() first thing in the bench's main()")
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from self_lengthen.client import DEFAULT_SAMPLING

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.sampling = DEFAULT_SAMPLING
        self.base_url = "an in-process engine"
        super().__init__()
        self.eos_ids = [self.tokenizer.eos_token_id]
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        from self_lengthen.serve.worker import engine_defaults

        async def make():  # as our worker builds its engines on this machine
            return AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model_dir), **engine_defaults()))

        self.engine = asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout=900)
        self.context_len = self.engine.model_config.max_model_len

    def models(self) -> list[str]:
        return ["base"]

    def close(self):
        """Stop the engine's core process (it outlives an os._exit of this one otherwise)."""
        self.engine.shutdown()

    def chat(self, model: str, messages: list[dict], **sampling):
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.complete(model, prompt, **sampling)

    def complete(self, model: str, prompt: str, **sampling):
        return self.complete_with_ids(model, prompt, **sampling)[0]

    def complete_with_ids(self, model: str, prompt: str, **sampling):
        """(the Completion, its generated token ids)."""
        from vllm.inputs import TokensPrompt

        from self_lengthen.chat_template import needs_special_tokens
        from self_lengthen.client import Completion
        from self_lengthen.serve.worker import sampling_params

        ids = self.tokenizer.encode(prompt, add_special_tokens=needs_special_tokens(self.tokenizer, prompt))
        params = {**self.sampling, **{k: v for k, v in sampling.items() if v is not None}}
        # As the API server does: max_tokens is capped by what the context leaves.
        params["max_new_tokens"] = min(int(params.pop("max_tokens")), self.context_len - len(ids))

        async def run():
            last = None
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids),
                                                  sampling_params(params, self.eos_ids), uuid.uuid4().hex):
                last = out
            choice = last.outputs[0]
            return Completion(choice.text, choice.finish_reason, len(choice.token_ids)), list(choice.token_ids)

        with self.sending():
            completion, ids = asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=1800)
        self.received(completion.completion_tokens)
        return completion, ids


STAGES = {"generate": "initial_responses", "extend": "extended_responses"}
SAME_WORK = ["--no-reject_early"]  # (a): what the in-process engine can do too (see throughput)


def run_stage(stage: str, workdir: Path, model_dir: Path, profile: str, client=None, extra=(), iteration=1) -> dict:
    """One stage (step1 `generate` or step2 `extend`) of iteration 1 in `workdir`, with the profile's sizes (and
    `extra` options after them). Returns the tokens it generated, its wall seconds and its summary."""
    from self_lengthen.pipeline import stage_args
    from self_lengthen.stages import extend, generate
    from self_lengthen.stages.common import StageContext
    from self_lengthen.profile import load_profile

    argv = stage_args(load_profile(profile), stage, iteration, workdir, model_dir, seed=0) + list(extra)
    if client is None:
        argv += ["--base_url", f"http://127.0.0.1:{PORTS['api']}/v1"]
    module = {"generate": generate, "extend": extend}[stage]
    ctx = StageContext.create(module.parser().parse_args(argv), FLAVOUR)
    if client is not None:
        ctx.client = client
    samples, done = [], threading.Event()

    def sample():  # requests in flight, once a second
        while not done.wait(1.0):
            samples.append(getattr(ctx.client, "in_flight", 0))

    threading.Thread(target=sample, daemon=True).start()
    start = time.monotonic()
    try:
        module.run(ctx)
    finally:
        done.set()
    seconds = time.monotonic() - start
    summary = json.loads((workdir / "results" / f"iter_{iteration}" / f"{STAGES[stage]}.summary.json").read_text())
    return {"tokens": summary["tokens_generated"], "seconds": seconds, "summary": summary,
            "mean_in_flight": sum(samples) / len(samples) if samples else 0.0}


def new_workdir(side: str, prompts: list[str], initial_from: Path | None = None) -> Path:
    """A fresh workdir holding the instructions and, if given, a copy of another run's step1 output."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-synthesis-{side}-"))
    save_dataset([{"prompt": p} for p in prompts], ["prompt"], workdir / "results" / "iter_1" / "instructions")
    if initial_from is not None:
        name = STAGES["generate"]
        shutil.copytree(initial_from / "results" / "iter_1" / name, workdir / "results" / "iter_1" / name)
    return workdir


def total(*runs: dict) -> dict:
    tokens, seconds = sum(r["tokens"] for r in runs), sum(r["seconds"] for r in runs)
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def describe(side: str, step1: dict, step2: dict) -> str:
    both = total(step1, step2)
    return (f"{side}: step1 {step1['tokens']} tokens in {step1['seconds']:.0f} s, "
            f"step2 {step2['tokens']} tokens in {step2['seconds']:.0f} s; "
            f"{both['tokens']} tokens in {both['seconds']:.0f} s = {both['tok_s']:.1f} tok/s")


def throughput(args) -> str:
    """Both sides run step1 on the same instructions. Sampling makes their step1 outputs differ, and step2's
    workload (how many items, so how many requests in flight) follows from them, so both sides run step2 on the
    stack's step1 output: the same items, prompts and sampling. Both run without --reject_early: ending a text sure
    to be rejected is our worker's, which the in-process engine does not have, and it changes the work."""
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import load_seeds

    model = ensure_default_model()
    prompts = load_seeds(FLAVOUR / "seeds.jsonl")[: args.instructions]

    stack_dir = new_workdir("stack", prompts)
    stop = start_stack(stack_dir, model)
    try:
        stack = [run_stage(stage, stack_dir, model, args.profile, extra=SAME_WORK) for stage in STAGES]
    finally:
        subprocess.run(stop, check=False, timeout=300)
    print(describe("stack", *stack), flush=True)

    engine = InProcessEngine(model)
    try:
        direct = [run_stage("generate", new_workdir("direct-step1", prompts), model, args.profile, client=engine,
                            extra=SAME_WORK),
                  run_stage("extend", new_workdir("direct-step2", prompts, initial_from=stack_dir), model,
                            args.profile, client=engine, extra=SAME_WORK)]
    finally:
        engine.close()
    print(describe("in-process vLLM", *direct), flush=True)
    s, d = total(*stack), total(*direct)
    return (f"(a) step1+step2 on {len(prompts)} instructions ({args.profile} sizes), step2 on the same items: "
            f"stack {s['tok_s']:.1f} tok/s, in-process vLLM {d['tok_s']:.1f} tok/s, ratio {s['tok_s'] / d['tok_s']:.2f}")


# --- (c) step2 at the engine's speed ----------------------------------------------------------------------------

FIXTURE = ROOT / "bench" / "data" / "step2_initial_responses.jsonl"


def start_stack(workdir: Path, model: Path, iteration: int = 0) -> list[str]:
    serve = [sys.executable, "-m", "self_lengthen.serve.cluster"]
    stop = [*serve, "stop", f"--workdir={workdir}"]
    try:
        subprocess.run([*serve, "start", f"--workdir={workdir}", f"--base_model={model}", f"--iter={iteration}",
                        f"--api_port={PORTS['api']}", f"--controller_port={PORTS['controller']}",
                        f"--worker_port={PORTS['worker']}"], check=True, timeout=1800)
    except subprocess.TimeoutExpired:
        subprocess.run(stop, check=False, timeout=300)  # what the start had started
        raise
    return stop


def stack_cpu_seconds(workdir: Path) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process of the stack in `workdir` (from its pid files, with their
    children: vLLM's engine core and its model process) and of this process (the client)."""
    import psutil

    procs = [("client (this process)", psutil.Process())]
    for pid_file in sorted((workdir / "run").rglob("*.pid")):
        info = json.loads(pid_file.read_text())
        try:
            parent = psutil.Process(info["pid"])
            procs.append((info["name"], parent))
            procs += [(f"{info['name']}/{child.name()}", child) for child in parent.children(recursive=True)]
        except psutil.Error:
            continue
    out = {}
    for name, proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[name] = out.get(name, 0.0) + times.user + times.system
    return out


def zero_adapters(workdir: Path, model: Path) -> None:
    """gen_sft and ext_sft of iteration 1 as LoRAs whose B matrices are zero: served merged, they are three engines
    with the base model's weights, so step2 through `ext_sft` does the base model's work beside two idle engines."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name in ("gen_sft", "ext_sft"):
        base = AutoModelForCausalLM.from_pretrained(str(model), torch_dtype=torch.bfloat16)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        get_peft_model(base, config).save_pretrained(str(workdir / "results" / "iter_1" / "lora" / name))


def step2_fixture(args) -> str:
    """step1 through the stack on the first --instructions llama seeds, at the profile's sizes: the fixed
    initial responses that (c) extends."""
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import load_seeds
    from datasets import load_from_disk

    model = ensure_default_model()
    workdir = new_workdir("fixture", load_seeds(FLAVOUR / "seeds.jsonl")[: args.instructions])
    stop = start_stack(workdir, model)
    try:
        run_stage("generate", workdir, model, args.profile)
    finally:
        subprocess.run(stop, check=False, timeout=300)
    rows = load_from_disk(str(workdir / "results" / "iter_1" / STAGES["generate"]))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(FIXTURE, ({"prompt": r["prompt"], "initial_response": r["initial_response"]} for r in rows))
    return f"step2 fixture: {len(rows)} initial responses from {args.instructions} instructions -> {FIXTURE}"


def step2_requests(rows: list[dict], model: Path, n: int = 32) -> tuple[list[list[dict]], list[str]]:
    """The requests that saturate the engine: n of step2's own chat requests (the first half of an initial response,
    to expand), as messages; and n of the mix step2 sends, n/2 such chat requests and n/2 completions over the whole
    text (a round's second request, with its long prompt), as formatted prompts."""
    from self_lengthen.chat_template import load_tokenizer
    from self_lengthen.flavour import Flavour, PromptBuilder
    from self_lengthen.text import split_blocks

    prompts = PromptBuilder(Flavour(FLAVOUR), load_tokenizer(model))
    messages, mix = [], []
    for i in range(n):
        row = rows[i % len(rows)]
        blocks = split_blocks(row["initial_response"])
        request = prompts.extend_request(row["prompt"], "\n\n".join(blocks[: len(blocks) // 2]))
        messages.append(prompts.messages(request))
        mix.append(prompts.chat(request) if i % 2 == 0
                   else prompts.extend_completion(row["prompt"], row["initial_response"], ""))
    return messages, mix


def fixture_rows() -> list[dict]:
    if not FIXTURE.is_file():
        raise SystemExit(f"{FIXTURE} is missing: run `bench/synthesis.py step2-fixture` first")
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def step2(args) -> str:
    from self_lengthen.default_model import ensure_default_model

    from serving import offline

    rows = fixture_rows()
    model = ensure_default_model()
    workdir = new_workdir("step2", [])
    iteration = 1 if args.engines == 1 else 2  # 3 engines: iteration 2 through iteration 1's (zero) adapters
    if iteration == 2:
        zero_adapters(workdir, model)
    save_dataset(rows, ["prompt", "initial_response"], workdir / "results" / f"iter_{iteration}" / STAGES["generate"])
    extra = []
    if args.workers:
        extra += ["--workers", str(args.workers)]
    if args.attempts:
        extra += ["--attempts", str(args.attempts)]
    stop = start_stack(workdir, model, iteration - 1)
    try:
        before = stack_cpu_seconds(workdir)
        stage = run_stage("extend", workdir, model, args.profile, extra=extra, iteration=iteration)
        cpu = {k: v - before.get(k, 0.0) for k, v in stack_cpu_seconds(workdir).items()}
    finally:
        subprocess.run(stop, check=False, timeout=300)
    machine = stage["seconds"] * (os.cpu_count() or 1)
    print("CPU during step2, share of the machine: " + ", ".join(
        f"{k} {100 * v / machine:.1f}%" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v > 0), flush=True)
    summary = stage["summary"]
    received = summary["tokens_received_this_run"]
    stage_rate = received / stage["seconds"]
    print(f"step2: {summary['items']} items finished ({summary['accepted']} accepted), {received} tokens in "
          f"{stage['seconds']:.0f} s = {stage_rate:.1f} tok/s; recorded {summary['tokens_this_run']} "
          f"({summary['tokens_recorded_share']:.3f}); mean requests in flight {stage['mean_in_flight']:.1f}; "
          f"tokens in capped requests {summary['tokens_capped_this_run']} (already repeating: "
          f"{summary['tokens_capped_repeating_this_run']}), in rejected ones "
          f"{summary['tokens_rejected_this_run']}; requests ended early "
          f"{summary.get('requests_ended_early_this_run', 0)}; reasons {summary['reject_reasons']}", flush=True)

    messages, mix = step2_requests(rows, model)
    saturated, saturated_mix = offline(model, messages, args.saturate_tokens, raw_prompts=mix)
    return (f"(c) step2 on {len(rows)} fixed initial responses ({args.profile} sizes{', ' + ' '.join(extra) if extra else ''}, "
            f"{args.engines} engine{'s' if args.engines > 1 else ''} loaded): "
            f"{received} tokens in {stage['seconds']:.0f} s = {stage_rate:.1f} tok/s; saturated engine (offline, 32 x "
            f"{args.saturate_tokens} tokens) {saturated:.1f} tok/s on step2's chat requests, {saturated_mix:.1f} on "
            f"its chat and completion mix; E1 {stage_rate / saturated:.2f} (against the mix: "
            f"{stage_rate / saturated_mix:.2f}); E2 {summary['tokens_recorded_share']:.3f}; {summary['accepted']} of "
            f"{summary['items']} items accepted; stack CPU outside the model: "
            f"{100 * sum(v for k, v in cpu.items() if 'VLLM::Worker' not in k) / machine:.1f}% of the machine")


def early(args) -> str:
    from self_lengthen.default_model import ensure_default_model

    rows, model = fixture_rows(), ensure_default_model()
    extra = ["--attempts", str(args.attempts)] if args.attempts else []
    extra += ["--workers", str(args.workers)] if args.workers else []
    stop = start_stack(new_workdir("early-stack", []), model)
    runs = {}
    try:
        for side, flag in (("without", "--no-reject_early"), ("with", "--reject_early")):
            workdir = new_workdir(f"early-{side}", [])
            save_dataset(rows, ["prompt", "initial_response"], workdir / "results" / "iter_1" / STAGES["generate"])
            stage = run_stage("extend", workdir, model, args.profile, extra=extra + [flag])
            s = stage["summary"]
            runs[side] = {"tokens": s["tokens_received_this_run"], "seconds": stage["seconds"], "items": s["items"],
                          "accepted": s["accepted"], "early": s.get("requests_ended_early_this_run", 0),
                          "reasons": s["reject_reasons"]}
            r = runs[side]
            print(f"{side} reject_early: {r['items']} chains finished ({r['accepted']} accepted) in {r['seconds']:.0f} s, "
                  f"{r['tokens']} tokens ({r['tokens'] / r['items']:.0f} per chain, {r['tokens'] / r['seconds']:.1f} "
                  f"tok/s); requests ended early {r['early']}; reasons {r['reasons']}", flush=True)
    finally:
        subprocess.run(stop, check=False, timeout=300)
    a, b = runs["without"], runs["with"]
    per_chain = (b["tokens"] / b["items"]) / (a["tokens"] / a["items"])
    per_chain_s = (b["seconds"] / b["items"]) / (a["seconds"] / a["items"])
    return (f"(e) step2 on {len(rows)} fixed initial responses ({args.profile} sizes{', ' + ' '.join(extra) if extra else ''}): "
            f"without reject_early {a['items']} chains ({a['accepted']} accepted), {a['tokens'] / a['items']:.0f} tokens "
            f"and {a['seconds'] / a['items']:.1f} s per chain; with it {b['items']} chains ({b['accepted']} accepted), "
            f"{b['tokens'] / b['items']:.0f} tokens and {b['seconds'] / b['items']:.1f} s per chain, {b['early']} "
            f"requests ended early; tokens per chain {per_chain:.2f}x, seconds per chain {per_chain_s:.2f}x")


# --- (b) client memory ------------------------------------------------------------------------------------------

ANSWER = ("A complete answer of moderate length, written in full sentences so that it passes the checks. " * 20).strip()


def peak_rss_mb(items: int, base_url: str) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="bench-synthesis-"))
    prompts = [f"Write an essay about topic number {i}." for i in range(items // 2)]
    save_dataset([{"prompt": p} for p in prompts], ["prompt"], workdir / "results" / "iter_1" / "instructions")
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "exec('try:\\n runpy.run_path(sys.argv[0], run_name=\"__main__\")\\nexcept SystemExit: pass'); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, str(FLAVOUR / "step1_gen_initial_responses.py"), "--iter",
                          "1", "--workdir", str(workdir), "--base_url", base_url, "--workers", "32"],
                         capture_output=True, text=True, check=True, timeout=3600)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


# --- (d) the held-out answers beside step1 ---------------------------------------------------------------------

def beside(args) -> str:
    from self_lengthen.default_model import ensure_default_model
    from self_lengthen.flavour import load_seeds
    from self_lengthen.pipeline import run_beside, stage_args
    from self_lengthen.profile import load_profile

    model = ensure_default_model()
    prompts = load_seeds(FLAVOUR / "seeds.jsonl")[: args.instructions]
    sizes = load_profile(args.profile)
    url = ["--base_url", f"http://127.0.0.1:{PORTS['api']}/v1"]

    def commands(workdir: Path) -> list[list[str]]:
        return [[sys.executable, str(FLAVOUR / script), *stage_args(sizes, stage, 1, workdir, model, seed=0), *url]
                for script, stage in (("heldout_generator.py", "heldout"),
                                      ("step1_gen_initial_responses.py", "generate"))]

    def measured(side: str, workdir: Path, seconds: float) -> dict:
        it = workdir / "results" / "iter_1"
        tokens = sum(json.loads((it / f"{name}.summary.json").read_text())["tokens_generated"]
                     for name in ("heldout", "heldout_longen", "initial_responses"))
        print(f"{side}: {tokens} tokens in {seconds:.0f} s = {tokens / seconds:.1f} tok/s", flush=True)
        return {"tokens": tokens, "seconds": seconds}

    stop = start_stack(Path(tempfile.mkdtemp(prefix="bench-beside-stack-")), model)
    try:
        after = new_workdir("after", prompts)
        start = time.monotonic()
        for cmd in commands(after):
            subprocess.run(cmd, cwd=after, check=True, timeout=7200)
        one_after = measured("one after the other", after, time.monotonic() - start)
        side_by_side = new_workdir("beside", prompts)
        heldout, step1 = commands(side_by_side)
        start = time.monotonic()
        run_beside([(heldout, "held-out answers", side_by_side / "heldout.log")], step1, "step1", cwd=side_by_side,
                   timeout=7200)
        together = measured("beside each other", side_by_side, time.monotonic() - start)
    finally:
        subprocess.run(stop, check=False, timeout=300)
    a, b = one_after, together
    return (f"(d) held-out answers + step1 on {len(prompts)} instructions ({args.profile} sizes): one after the other "
            f"{a['seconds']:.0f} s ({a['tokens'] / a['seconds']:.1f} tok/s), beside each other {b['seconds']:.0f} s "
            f"({b['tokens'] / b['seconds']:.1f} tok/s); wall time ratio {b['seconds'] / a['seconds']:.2f}")


def rss(args) -> str:
    from fake_endpoint import FakeEndpoint

    with FakeEndpoint(text=ANSWER) as fake:
        small = peak_rss_mb(args.small, fake.base_url)
        large = peak_rss_mb(args.large, fake.base_url)
    return (f"(b) client peak RSS {small:.0f} MB at {args.small} items, {large:.0f} MB at {args.large} items, "
            f"ratio {large / small:.2f}")


def missing_engine_env() -> dict | None:
    """engine_env() where this process lacks any of it, else None."""
    from self_lengthen.serve.cluster import engine_env

    env = engine_env()
    return env if env != dict(os.environ) else None


def run_with_engine_env():
    """Start this bench again, once, with engine_env() where it lacks any of it (on CPU: thread binding, and
    tcmalloc and Intel's OpenMP preloaded, which load only when a process starts), so that an InProcessEngine, whose
    core vLLM forks from this process, runs as the stack's engine runs. Call it first thing in main()."""
    env = missing_engine_env()
    if env:
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main():
    run_with_engine_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", nargs="?", choices=["throughput", "rss", "step2", "step2-fixture", "early", "beside", "all"], default="all")
    p.add_argument("--instructions", type=int, default=8)
    p.add_argument("--profile", default="cpu-demo", help="whose generation sizes (max_tokens, tries, workers)")
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--workers", type=int, default=None, help="(c): requests in flight (default: the profile's)")
    p.add_argument("--attempts", type=int, default=None, help="(c): extensions per initial response")
    p.add_argument("--saturate_tokens", type=int, default=512, help="(c): tokens per saturating request")
    p.add_argument("--engines", type=int, choices=[1, 3], default=1,
                   help="(c): 3 loads the base and two merged zero adapters, as iteration 2 on CPU does")
    args = p.parse_args()
    from serving import ran_past

    try:
        results = run_benches(args)
    except subprocess.TimeoutExpired as exc:
        raise SystemExit(ran_past("bench/synthesis.py", exc))
    print("\n".join(results), flush=True)
    os._exit(0)  # the engine is shut down; its threads' teardown at interpreter exit can still hang


def run_benches(args) -> list[str]:
    results = []
    if args.which in ("rss", "all"):
        results.append(rss(args))
        print(results[-1], flush=True)
    if args.which in ("throughput", "all"):
        results.append(throughput(args))
    if args.which == "step2-fixture":
        results.append(step2_fixture(args))
    if args.which in ("step2", "all"):
        results.append(step2(args))
    if args.which == "early":
        results.append(early(args))
    if args.which in ("beside", "all"):
        results.append(beside(args))
    return results


if __name__ == "__main__":
    main()
