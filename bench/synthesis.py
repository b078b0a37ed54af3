"""Synthesis client memory: peak RSS of step1 (the real stage process) at 2000 items over 200 items, against a
fast fake endpoint, in one run. Prints the ratio (goal <= 1.2).

Usage: .venv/bin/python bench/synthesis.py [--small 200] [--large 2000]
(Throughput through the stack against vLLM offline is measured by bench/serving.py for the same engine path.)
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fake_endpoint import FakeEndpoint  # noqa: E402

from self_lengthen.stages.runner import save_dataset  # noqa: E402

ANSWER = ("A complete answer of moderate length, written in full sentences so that it passes the checks. " * 20).strip()


def peak_rss_mb(items: int, base_url: str) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="bench-synthesis-"))
    prompts = [f"Write an essay about topic number {i}." for i in range(items // 2)]
    save_dataset([{"prompt": p} for p in prompts], ["prompt"], workdir / "results" / "iter_1" / "instructions")
    code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "exec('try:\\n runpy.run_path(sys.argv[0], run_name=\"__main__\")\\nexcept SystemExit: pass'); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "llama" / "step1_gen_initial_responses.py"), "--iter",
                          "1", "--workdir", str(workdir), "--base_url", base_url, "--workers", "32"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    args = p.parse_args()
    with FakeEndpoint(text=ANSWER) as fake:
        small = peak_rss_mb(args.small, fake.base_url)
        large = peak_rss_mb(args.large, fake.base_url)
    print(f"peak RSS {small:.0f} MB at {args.small} items, {large:.0f} MB at {args.large} items, "
          f"ratio {large / small:.2f}")


if __name__ == "__main__":
    main()
