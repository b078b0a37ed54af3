"""run_collect_data.sh: serve the final adapters and repeat step0 + step1 in batches of --instruct_count until
--total_count initial responses exist. Batches live in results/iter_10000, iter_10001, ... (as upstream numbers
them) and each is resumable like any stage; a rerun continues with the first unfinished batch.
"""
import subprocess
import sys
from pathlib import Path

from .default_model import resolve_base_model
from .dist import DistEnv
from .errors import ArgParser, UsageError, cli_main
from .flavour import pop_flavour_dir
from .pipeline import stage_args
from .train import adapter_done, load_profile

FIRST_BATCH = 10000


def rows_in(dataset_dir: Path) -> int:
    marker = dataset_dir / "_COMPLETE"
    if not marker.exists():
        return 0
    import json

    return int(json.loads(marker.read_text())["rows"])


@cli_main
def main(flavour_dir: Path, argv=None):
    p = ArgParser(prog="run_collect_data.sh", description=__doc__.splitlines()[0])
    p.add_argument("--base_model", default="default")
    p.add_argument("--max_iter", type=int, required=True, help="the iteration whose adapters generate")
    p.add_argument("--instruct_count", type=int, required=True, help="instructions per batch")
    p.add_argument("--total_count", type=int, required=True, help="stop once this many initial responses exist")
    p.add_argument("--workdir", default=".")
    p.add_argument("--profile", default="cpu-demo")
    p.add_argument("--max_batches", type=int, default=1000, help="give up after this many batches")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("max_iter", "instruct_count", "total_count", "max_batches"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}={getattr(args, name)} must be at least 1")
    workdir = Path(args.workdir).resolve()
    final = workdir / "results" / f"iter_{args.max_iter}"
    if not all(adapter_done(final, m) for m in ("gen_sft", "ext_sft")):
        raise UsageError(f"no trained adapters in {final}/lora; run run.sh --max_iter={args.max_iter} first")
    profile = load_profile(args.profile)
    model = resolve_base_model(args.base_model)
    dist = DistEnv.from_env()
    serve = [sys.executable, "-m", "self_lengthen.serve.cluster"]
    subprocess.run([*serve, "start", f"--workdir={workdir}", f"--base_model={model}", f"--iter={args.max_iter}"],
                   check=True)
    try:
        if dist.is_master:
            have = 0
            for batch in range(FIRST_BATCH, FIRST_BATCH + args.max_batches):
                batch_out = workdir / "results" / f"iter_{batch}" / "initial_responses"
                if not (batch_out / "_COMPLETE").exists():  # finished batches are kept, not redone
                    for script, stage, extra in (
                            ("step0_self_instruct.py", "self_instruct", ["--count", str(args.instruct_count)]),
                            ("step1_gen_initial_responses.py", "generate", [])):
                        options = stage_args(profile, stage, batch, workdir, model, seed=0)
                        subprocess.run([sys.executable, str(flavour_dir / script), *options, *extra], check=True)
                have += rows_in(batch_out)
                print(f"collect: batch {batch} done, {have}/{args.total_count} initial responses")
                if have >= args.total_count:
                    break
    except subprocess.CalledProcessError as exc:
        raise UsageError(f"collect: {Path(exc.cmd[1]).name} failed (exit {exc.returncode})") from None
    finally:
        subprocess.run([*serve, "stop", f"--workdir={workdir}"], capture_output=True, timeout=300)


if __name__ == "__main__":
    main(pop_flavour_dir(sys.argv))
