"""run_collect_data.sh: serve the final adapters and repeat step0 + step1 in batches of --instruct_count until
--total_count instructions have been requested. Batches live in results/iter_10000, iter_10001, ... (as upstream
numbers them) and each is resumable like any stage; a rerun continues with the first unfinished batch.
Every rank serves; rank 0 drives the stages against all workers; the others serve until rank 0 is done.
"""
import subprocess
import sys
from pathlib import Path

from .default_model import resolve_base_model
from .dist import DistEnv, Sync, barrier_timeout
from .env import check_environment
from .errors import ArgParser, UsageError, cli_main, positive_int
from .flavour import pop_flavour_dir
from .pipeline import run_stage, stage_args
from .serve.cluster import add_adapter_mode, gpu_count, server_command
from .profile import load_profile, profile_name
from .train import adapter_done

FIRST_BATCH = 10000


def rows_in(dataset_dir: Path) -> int:
    marker = dataset_dir / "_COMPLETE"
    if not marker.exists():
        return 0
    import json

    return int(json.loads(marker.read_text())["rows"])


@cli_main
def main(flavour_dir: Path, argv=None):
    check_environment()
    p = ArgParser(prog="run_collect_data.sh", description=__doc__.splitlines()[0])
    p.add_argument("--base_model", default="default")
    p.add_argument("--max_iter", type=positive_int, required=True, help="the iteration whose adapters generate")
    p.add_argument("--instruct_count", type=positive_int, required=True, help="instructions per batch")
    p.add_argument("--total_count", type=positive_int, required=True,
                   help="instructions to request in all: ceil(total_count / instruct_count) batches")
    p.add_argument("--workdir", default=".")
    p.add_argument("--profile", default=None, help="gpu, cpu-demo, study, tiny or a YAML file (default, as run.sh: gpu "
                                                     "with GPUs, else cpu-demo)")
    add_adapter_mode(p)
    p.add_argument("--prompt_templates", default=None, help="prompt-template dir (default: the flavour's)")
    p.add_argument("--seeds", default=None, help="seed instructions (default: the flavour's seeds.jsonl)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    workdir = Path(args.workdir).resolve()
    final = workdir / "results" / f"iter_{args.max_iter}"
    if not all(adapter_done(final, m) for m in ("gen_sft", "ext_sft")):
        raise UsageError(f"no trained adapters in {final}/lora; run run.sh --max_iter={args.max_iter} first")
    args.profile = profile_name(args.profile, gpu_count())
    profile = load_profile(args.profile)
    model = resolve_base_model(args.base_model)
    dist = DistEnv.from_env()
    sync = Sync(workdir / "results" / ".sync", dist, timeout=barrier_timeout(profile, args.profile))
    sync.clear_own_failure()
    # Every rank serves; rank 0 generates; the others keep serving until rank 0 says it is done (or failed).
    done_step = f"collect_iter{args.max_iter}/total_{args.total_count}"
    stop = server_command("stop", workdir)
    try:
        # Servers left by a run of ours that was killed (their pid files are in workdir/run) go first.
        subprocess.run(stop, capture_output=True, timeout=300)
        with sync.heartbeat():
            # step0 asks the base model, step1 and the held-out answers the final Generator; no stage here extends
            run_stage(server_command("start", workdir, base_model=model, iter=args.max_iter, adapters="gen_sft",
                                     adapter_mode=args.adapter_mode), "collect: starting the servers", workdir,
                      timeout=sync.timeout)
            if dist.is_master:
                final_generator_heldout(flavour_dir, args, workdir, model, profile, sync.timeout)
                collect_batches(flavour_dir, args, workdir, model, profile, sync.timeout)
            sync.barrier(done_step)
    except BaseException as exc:
        sync.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        subprocess.run(stop, capture_output=True, timeout=300)


def final_generator_heldout(flavour_dir: Path, args, workdir: Path, model: Path, profile: dict,
                            timeout: float) -> None:
    """While the final adapters are served: the final Generator on the held-out instructions, recorded as the
    Generator of iteration max_iter + 1 (the one that would start it), then the run's report again."""
    options = stage_args(profile, "heldout", args.max_iter + 1, workdir, model, seed=0,
                         prompt_templates=args.prompt_templates)
    run_stage([sys.executable, str(flavour_dir / "heldout_generator.py"), *options],
              "collect: heldout_generator.py", workdir, timeout=timeout)
    from .report import run_report

    run_report(workdir / "results")


def collect_batches(flavour_dir: Path, args, workdir: Path, model: Path, profile: dict, timeout: float) -> None:
    batches = -(-args.total_count // args.instruct_count)
    rows = 0
    for batch in range(FIRST_BATCH, FIRST_BATCH + batches):
        batch_out = workdir / "results" / f"iter_{batch}" / "initial_responses"
        if not (batch_out / "_COMPLETE").exists():  # finished batches are kept, not redone
            for script, stage, extra in (
                    ("step0_self_instruct.py", "self_instruct", ["--count", str(args.instruct_count)]),
                    ("step1_gen_initial_responses.py", "generate", [])):
                options = stage_args(profile, stage, batch, workdir, model, seed=0,
                                     prompt_templates=args.prompt_templates, seeds=args.seeds)
                run_stage([sys.executable, str(flavour_dir / script), *options, *extra], f"collect: {script}",
                          workdir, timeout=timeout)
        rows += rows_in(batch_out)
        print(f"collect: batch {batch - FIRST_BATCH + 1}/{batches} (iter_{batch}) done; {rows} initial responses "
              f"so far", flush=True)

if __name__ == "__main__":
    main(pop_flavour_dir(sys.argv))
