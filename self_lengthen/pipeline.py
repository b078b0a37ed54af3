"""The macro-iteration loop behind each flavour's run.sh: serve, synthesize, train; on every node; resumable.

Iteration K (1..max_iter), with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from the environment:
  1. run_server (all ranks) serving the base model and, from K=2, the LoRAs of iteration K-1
  2. rank 0: step0 self-instruct; step1 Generator, and beside it the same model on the held-out instructions (a
     measurement); step2 Extender. Then a barrier, and stop_server (all ranks)
     step0 asks only the base model. Where each adapter is an engine of its own (merged copies, on CPU), iteration 1
     also runs the later iterations' step0 beside its own (the same requests to the same model, sent earlier), and
     the later iterations serve only the adapters: one engine fewer to start, and no step0 to wait for.
  3. rank 0: mk_data, mk_config, and tokenizes both datasets; a barrier; every rank trains gen_sft, then ext_sft
Each finished step leaves a marker, so a rerun after any crash continues at the first unfinished step and never
redoes finished training. A failing rank writes a failure marker; the others stop with its message.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

from .default_model import resolve_base_model
from .dist import DistEnv, Sync, barrier_timeout
from .env import check_environment
from .errors import ArgParser, UsageError, cli_main, positive_int
from .flavour import Flavour, load_seeds, pop_flavour_dir
from .io import output_dir
from .serve.cluster import add_adapter_mode, gpu_count, server_command
from .stages.runner import is_complete
from .profile import load_profile, profile_name
from .report import heldout_line
from .train import MODELS, adapter_done, mk_config, mk_data, pick_template, publish_adapter, tokenize, train_adapter

STEP_TIMEOUT_SERVER = 1800


def stage_args(profile: dict, stage: str, k: int, workdir: Path, model_dir: Path, seed: int,
               prompt_templates: str | None = None, seeds: str | None = None) -> list[str]:
    """A stage's command-line options from the profile's generation sizes and options, and the user's prompt
    templates and seeds (None: the flavour's). `heldout` (the Generator on held-out instructions) takes step1's
    sizes and the profile's `heldout` count, and always the method's sampling."""
    gen = profile["generation"]
    extra = ["--count", str(gen["heldout"])] if stage == "heldout" and gen.get("heldout") else []
    sampling = (gen.get("sampling") or {}).get(stage)  # none for "heldout"
    if sampling:
        extra += ["--sampling", ",".join(f"{key}={value}" for key, value in sampling.items())]
    stage = "generate" if stage == "heldout" else stage
    max_tokens = gen["max_tokens"]
    if isinstance(max_tokens, dict):  # per stage
        max_tokens = max_tokens[stage]
    out = ["--iter", str(k), "--workdir", str(workdir), "--base_model", str(model_dir),
           "--max_tokens", str(max_tokens), "--seed", str(seed)]
    if gen.get("workers"):
        out += ["--workers", str(gen["workers"])]
    tries = (gen.get("max_tries") or {}).get(stage)
    if tries:
        out += ["--max_tries", str(tries)]
    fraction = (gen.get("finish_fraction") or {}).get(stage)
    if fraction:
        out += ["--finish_fraction", str(fraction)]
    if (gen.get("keep_in_flight") or {}).get(stage):
        out += ["--keep_in_flight"]
    budget = (gen.get("time_budget") or {}).get(stage)
    if budget:
        out += ["--time_budget", str(budget)]
    if stage == "extend" and gen.get("extend_attempts"):
        out += ["--attempts", str(gen["extend_attempts"])]
    if stage == "extend" and gen.get("extend_stop_when_grown"):
        out += ["--stop_when_grown"]
    if (gen.get("drop_short") or {}).get(stage) is False:
        out += ["--no-drop_short"]
    if stage == "self_instruct" and gen.get("judge_parse"):
        out += ["--judge_parse", str(gen["judge_parse"])]
    if stage == "self_instruct" and seeds:
        out += ["--seeds", str(Path(seeds).resolve())]
    if prompt_templates:
        out += ["--prompt_templates", str(Path(prompt_templates).resolve())]
    return out + extra


def parse_args(argv):
    p = ArgParser(prog="run.sh", description="Self-Lengthen macro-iterations on this node.")
    p.add_argument("--base_model", default="default", help="'default' or a local HF model dir")
    p.add_argument("--instruct_count", type=positive_int, default=5000, help="instructions requested per iteration")
    p.add_argument("--max_iter", type=positive_int, default=3, help="macro-iterations to run")
    p.add_argument("--workdir", default=".", help="holds results/ (shared by all nodes)")
    p.add_argument("--profile", default=None,
                   help="gpu, cpu-demo, study, tiny or a YAML file of the same shape "
                        "(default: gpu with GPUs, else cpu-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt_templates", default=None,
                   help="prompt-template dir, ours or the original's format (default: the flavour's)")
    p.add_argument("--seeds", default=None,
                   help="seed instructions: JSONL with 'prompt' or a save_to_disk dir such as the original's "
                        "prompts_train (default: the flavour's seeds.jsonl)")
    add_adapter_mode(p)
    p.add_argument("--collect", action=argparse.BooleanOptionalAction, default=True,
                   help="run run_collect_data.sh at the end when the profile asks for a total_count")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]}; run with --help for the options")
    return args


def stop_child(proc: subprocess.Popen, grace: float = 30.0, timeout: float = 120.0) -> None:
    """We are interrupted: let the child clean up (Ctrl-C and a group SIGTERM reach it too), SIGTERM it if it goes
    on running, and SIGKILL it only if that does not end it either."""
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def overdue(what: str, timeout: float) -> str:
    return (f"{what} ran past {timeout:.0f} s (the profile's barrier_timeout) and was stopped; what it finished is "
            f"kept: raise barrier_timeout (or $SELF_LENGTHEN_BARRIER_TIMEOUT) and run again to go on")


def run_stage(cmd: list[str], what: str, cwd: Path, timeout: float) -> None:
    """One stage (or a server start) in `cwd`, its output to the terminal. Past `timeout` (the barrier_timeout the
    other ranks wait no longer than) it gets SIGTERM, checkpoints what it finished, and the run fails saying so."""
    proc = subprocess.Popen(cmd, cwd=cwd)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_child(proc, grace=0)
        raise UsageError(overdue(what, timeout)) from None
    except BaseException:
        stop_child(proc)
        raise
    if code != 0:
        raise UsageError(f"{what} failed (exit {code}); see the output above")


def run_beside(sides: list[tuple[list[str], str, Path]], main: list[str], main_what: str, cwd: Path,
               timeout: float, say=print) -> None:
    """Each of `sides` (command, what it is, the log its output goes into) beside `main` (output to the terminal),
    all in `cwd`: stages against the same served model, so that each fills the engine's batch while another's last
    requests run nearly alone. If one fails, or they have not all ended within `timeout`, the rest are stopped
    (SIGTERM: each checkpoints what it finished) and the run fails naming the stage."""
    running = {}

    def stop_rest(grace: float) -> None:
        stopping = list(running)
        running.clear()  # so that an interrupt while stopping does not stop them twice
        for proc in stopping:
            stop_child(proc, grace=grace)

    try:
        for side, side_what, log in sides:
            say(f"{side_what}, beside the next stage (output: {log})")
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                running[subprocess.Popen(side, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)] = (side_what,
                                                                                                 f"see {log}")
        say(main_what)
        running[subprocess.Popen(main, cwd=cwd)] = (main_what, "see the output above")
        deadline = time.monotonic() + timeout
        while running:
            if time.monotonic() > deadline:
                late = " and ".join(what for what, _ in running.values())
                stop_rest(grace=0)
                raise UsageError(overdue(late, timeout))
            for proc, (what, where) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[proc]
                if code != 0:
                    stop_rest(grace=0)
                    raise UsageError(f"{what} failed (exit {code}); {where}")
            time.sleep(0.5)
    except BaseException:
        stop_rest(grace=30.0)
        raise


class Pipeline:
    def __init__(self, args, flavour_dir: Path):
        self.args = args
        self.dist = DistEnv.from_env()
        self.workdir = Path(args.workdir).resolve()
        self.results = self.workdir / "results"
        self.logs = self.workdir / "logs"
        # Created first, so that any failure from here on is reported to the other ranks.
        self.sync = Sync(self.results / ".sync", self.dist, timeout=3600.0)
        self.sync.clear_own_failure()
        try:
            self.flavour = Flavour(flavour_dir, prompt_templates=args.prompt_templates)
            if args.seeds:
                load_seeds(Path(args.seeds))  # fail now, not at step0
            self.gpus = gpu_count()
            self.profile_name = profile_name(args.profile, self.gpus)
            self.profile = load_profile(self.profile_name)
            self.sync.timeout = barrier_timeout(self.profile, self.profile_name)
            self.model_dir = resolve_base_model(args.base_model)
            self.lf_template = None  # (template, system) for training, once found (pick_template)
        except BaseException as exc:
            self.sync.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise

    # -- helpers ---------------------------------------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[rank {self.dist.rank} {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def iter_dir(self, k: int) -> Path:
        return self.results / f"iter_{k}"

    def script(self, name: str) -> str:
        return str(self.flavour.dir / name)

    def run(self, cmd: list[str], what: str) -> None:
        self.say(what)
        run_stage(cmd, what, self.workdir, timeout=self.sync.timeout)

    def serve_cmd(self, action: str, k: int | None = None, serve_base: bool = True) -> list[str]:
        if action != "start":
            return server_command(action, self.workdir)
        return server_command(action, self.workdir, base_model=self.model_dir, iter=k,
                              timeout=min(STEP_TIMEOUT_SERVER, self.sync.timeout), adapter_mode=self.args.adapter_mode,
                              serve_base=serve_base)

    def merged_copies(self) -> bool:
        """Whether each adapter is served by an engine of its own (--adapter_mode merged, or auto on CPU)."""
        return self.args.adapter_mode == "merged" or (self.args.adapter_mode == "auto" and self.gpus == 0)

    def step0_iterations(self, k: int) -> list[int]:
        """The iterations whose step0 runs in iteration k: its own, unless done, and with merged copies the later
        iterations' not done yet (step0 asks only the base model, which iteration k serves anyway)."""
        later = range(k + 1, self.args.max_iter + 1) if self.merged_copies() else ()
        return [j for j in (k, *later) if not is_complete(self.iter_dir(j) / "instructions")]

    def serves_base(self, k: int) -> bool:
        """Iteration 1's stages ask the base model; a later one's only when a step0 runs in it (merged copies)."""
        return k == 1 or not self.merged_copies() or bool(self.step0_iterations(k))

    def stage_args(self, k: int, stage: str) -> list[str]:
        return stage_args(self.profile, stage, k, self.workdir, self.model_dir, self.args.seed,
                          self.args.prompt_templates, self.args.seeds)

    # -- one iteration ---------------------------------------------------------------------------------------------
    def synthesize(self, k: int) -> None:
        d = self.iter_dir(k)
        if (d / "extended_responses" / "_COMPLETE").exists() or (d / "data" / "_COMPLETE").exists():
            self.sync.arrive(f"iter_{k}/synthesis")
            return
        # Servers left by a run of ours that was killed (their pid files are in workdir/run) go first.
        subprocess.run(self.serve_cmd("stop"), cwd=self.workdir, capture_output=True, timeout=300)
        self.sync.barrier(f"iter_{k}/begin")
        try:
            serve_base = self.serves_base(k)  # every rank reads the same results/ here, before rank 0 writes to it
            self.run(self.serve_cmd("start", k - 1, serve_base),
                     f"iteration {k}: starting the servers (adapters of iteration {k - 1}"
                     f"{'' if serve_base else '; not the base model: no step0 is left to run'})")
            if self.dist.is_master:
                py = sys.executable
                step0 = [(j, [py, self.script("step0_self_instruct.py"), *self.stage_args(j, "self_instruct"),
                              "--count", str(self.args.instruct_count)],
                          f"iteration {j}: step0 self-instruct" + (f", ahead in iteration {k}" if j != k else ""))
                         for j in self.step0_iterations(k)]
                if step0:
                    (_, main, main_what), *ahead = step0
                    run_beside([(cmd, what, self.logs / f"step0_iter{j}.log") for j, cmd, what in ahead],
                               main, main_what, cwd=self.workdir, timeout=self.sync.timeout, say=self.say)
                # The held-out answers come from the model step1 uses (the Generator at the iteration's start).
                run_beside([([py, self.script("heldout_generator.py"), *self.stage_args(k, "heldout")],
                             f"iteration {k}: the Generator on held-out instructions",
                             self.logs / f"heldout_iter{k}.log")],
                           [py, self.script("step1_gen_initial_responses.py"), *self.stage_args(k, "generate")],
                           f"iteration {k}: step1 Generator", cwd=self.workdir, timeout=self.sync.timeout,
                           say=self.say)
                self.say(f"iteration {k}: {heldout_line(self.iter_dir(k))}")
                self.run([py, self.script("step2_ext_responses.py"), *self.stage_args(k, "extend")],
                         f"iteration {k}: step2 Extender")
            self.sync.barrier(f"iter_{k}/synthesis")
        finally:
            subprocess.run(self.serve_cmd("stop"), cwd=self.workdir, capture_output=True, timeout=300)

    def prepare_training(self, k: int) -> None:
        """rank 0: the training data and configs, then the datasets of the adapters still to train, tokenized."""
        d = self.iter_dir(k)
        if self.dist.is_master and not all((d / "data" / f"train_{m}.yaml").exists() for m in MODELS):
            from .chat_template import load_tokenizer
            from .flavour import PromptBuilder

            prompts = PromptBuilder(self.flavour, load_tokenizer(self.model_dir))
            if self.lf_template is None:  # the same model and flavour every iteration: checked once per run
                self.lf_template = pick_template(self.model_dir, self.flavour)
            template, system = self.lf_template
            data_dir = mk_data(d, prompts, system, seed=self.args.seed)
            for name in MODELS:
                mk_config(d, k, name, self.model_dir, self.flavour, self.profile, template, self.gpus)
            self.say(f"iteration {k}: training data in {data_dir} (LLaMA-Factory template {template})")
        todo = [name for name in MODELS if not adapter_done(d, name)] if self.dist.is_master else []
        if todo:
            self.say(f"iteration {k}: tokenizing {', '.join(todo)}")
            configs = [d / "data" / f"train_{name}.yaml" for name in todo]
            for name, stats in zip(todo, tokenize(configs, self.logs / f"tokenize_iter{k}.log",
                                                  timeout=self.sync.timeout)):
                if stats and stats["cut"]:
                    self.say(f"iteration {k}: warning: {stats['cut']} of {stats['rows']} {name} rows are longer than "
                             f"cutoff_len {stats['cutoff_len']}; LLaMA-Factory cuts them, and a cut answer loses "
                             f"its end (raise training.cutoff_len in the profile)")
        self.sync.barrier(f"iter_{k}/data")

    def train(self, k: int) -> None:
        d = self.iter_dir(k)
        for name in MODELS:
            if adapter_done(d, name):
                continue
            config = d / "data" / f"train_{name}.yaml"
            self.say(f"iteration {k}: training {name} on {self.dist.world_size} node(s)")
            train_adapter(config, self.dist, self.gpus,
                          self.logs / f"train_iter{k}_{name}.rank{self.dist.rank}.log", timeout=self.sync.timeout)
            self.sync.barrier(f"iter_{k}/trained_{name}")
            if self.dist.is_master:
                publish_adapter(d, name)
            self.sync.barrier(f"iter_{k}/published_{name}")

    def iteration(self, k: int) -> None:
        done = self.iter_dir(k) / "_ITERATION_COMPLETE"
        if done.exists():
            self.say(f"iteration {k}: already complete")
            return
        self.synthesize(k)
        self.prepare_training(k)
        self.train(k)
        if self.dist.is_master:
            from .report import iteration_report

            iteration_report(self.iter_dir(k))
            done.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        self.sync.barrier(f"iter_{k}/complete")
        self.say(f"iteration {k}: complete")

    def collect(self) -> None:
        total = int((self.profile.get("collect") or {}).get("total_count") or 0)
        if not self.args.collect or total <= 0:
            return
        extra = [f"--{name}={Path(value).resolve()}" for name in ("prompt_templates", "seeds")
                 if (value := getattr(self.args, name))]
        self.run(["bash", self.script("run_collect_data.sh"), f"--base_model={self.model_dir}",
                  f"--max_iter={self.args.max_iter}", f"--instruct_count={self.args.instruct_count}",
                  f"--total_count={total}", f"--workdir={self.workdir}", f"--profile={self.profile_name}", *extra],
                 "collecting more data with the final adapters")

    def main(self) -> None:
        try:
            with self.sync.heartbeat():
                for k in range(1, self.args.max_iter + 1):
                    self.iteration(k)
                self.collect()
            if self.dist.is_master:
                from .report import run_report

                report = run_report(self.results)
                self.say(f"done: report at {report}")
        except BaseException as exc:
            self.sync.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise


@cli_main
def main(flavour_dir: Path, argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    output_dir(args.workdir, "--workdir")
    check_environment()
    Pipeline(args, Path(flavour_dir)).main()


if __name__ == "__main__":
    main(pop_flavour_dir(sys.argv))
