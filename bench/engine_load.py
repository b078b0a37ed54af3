"""What each step of a run got of the engines: the workers' stats lines (each busy engine's generated tokens/s and
requests running, every `--stats-interval` seconds, default 10), split at the run's own progress lines.

Each progress line of run.sh (`[rank 0 HH:MM:SS] iteration 1: step2 Extender`) opens a segment that the next one
closes. Per segment with engine work: its wall time, the prompt tokens the engines read and the tokens they generated
in it, the generated tokens' mean rate, the requests running on average, and the share of its stats lines whose
busiest engine ran fewer than `--full` requests. With `--saturated` (the engine's rate with its batch full,
bench/synthesis.py step2 prints it), also how long the same tokens would take at that rate, and the time left over.

Usage: .venv/bin/python bench/engine_load.py RUN_LOG WORKER_LOG... [--saturated 205] [--full 32] [--interval 10]
(`make demo > demo.log` keeps the run log; the worker logs are llama/logs/worker*.log.)
"""
import argparse
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path

SAY = re.compile(r"^\[rank \d+ (\d\d):(\d\d):(\d\d)\] (.*)$")
STATS = re.compile(r"(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d).*?\[([^\]]+)\] Engine \d+: Avg prompt throughput: ([\d.]+) "
                   r"tokens/s, Avg generation throughput: ([\d.]+) tokens/s, Running: (\d+) reqs")


def read_stats(paths: list[Path], year: int) -> list[dict]:
    """Every stats line of the worker logs: time (end of its interval), engine names, generation tok/s, running."""
    rows = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            m = STATS.search(line)
            if m:
                month, day, hh, mm, ss = map(int, m.group(1, 2, 3, 4, 5))
                rows.append({"t": datetime(year, month, day, hh, mm, ss), "names": m.group(6),
                             "prompt": float(m.group(7)), "gen": float(m.group(8)), "running": int(m.group(9))})
    return sorted(rows, key=lambda r: r["t"])


def read_segments(path: Path, day: datetime) -> list[dict]:
    """The run log's progress lines as segments [start, next line's start), dated from `day` on (a clock that goes
    back means midnight passed)."""
    says = []
    for line in path.read_text(errors="replace").splitlines():
        m = SAY.match(line.strip())
        if m:
            t = day.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=int(m.group(3)))
            while says and t < says[-1]["start"]:
                t += timedelta(days=1)
            says.append({"start": t, "what": m.group(4)})
    for this, following in zip(says, says[1:]):
        this["end"] = following["start"]
    return says[:-1]


def summarize(segments: list[dict], stats: list[dict], interval: float, full: int) -> list[dict]:
    out = []
    for seg in segments:
        inside = [r for r in stats if seg["start"] < r["t"] - timedelta(seconds=interval / 2) <= seg["end"]]
        if not inside:
            continue
        wall = (seg["end"] - seg["start"]).total_seconds()
        per_tick = []  # the engines' lines of one stats round: logged within a couple of seconds of each other
        for r in inside:
            if per_tick and (r["t"] - per_tick[-1][0]["t"]).total_seconds() <= 2:
                per_tick[-1].append(r)
            else:
                per_tick.append([r])
        tokens = sum(r["gen"] for r in inside) * interval
        prompt = sum(r["prompt"] for r in inside) * interval
        running = [sum(r["running"] for r in tick) for tick in per_tick]
        under = sum(1 for tick in per_tick if max(r["running"] for r in tick) < full)
        out.append({"what": seg["what"], "wall": wall, "prompt": prompt, "tokens": tokens,
                    "rate": tokens / wall if wall else 0.0, "running": sum(running) / len(running),
                    "under_full": under / len(per_tick),
                    "engines": ", ".join(sorted({r["names"] for r in inside}))})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_log", type=Path)
    p.add_argument("worker_logs", type=Path, nargs="+")
    p.add_argument("--saturated", type=float, default=None, help="the engine's tok/s with its batch full")
    p.add_argument("--full", type=int, default=32, help="requests running that fill the engine's batch")
    p.add_argument("--interval", type=float, default=10.0, help="the workers' --stats-interval")
    args = p.parse_args(argv)
    for path in [args.run_log, *args.worker_logs]:
        if not path.is_file():
            sys.exit(f"error: {path} is not a file; give the run's log (make demo > FILE) and its logs/worker*.log")
    stats = read_stats(args.worker_logs, datetime.now().year)
    if not stats:
        sys.exit("error: no stats line in the worker logs: they come from workers started with --stats-interval > 0 "
                 "(the default, 10 s)")
    segments = read_segments(args.run_log, stats[0]["t"].replace(hour=0, minute=0, second=0))
    if not segments:
        sys.exit(f"error: {args.run_log} has no progress line ([rank R HH:MM:SS] ...); is it run.sh's output?")
    rows = summarize(segments, stats, args.interval, args.full)
    head = ("| step (the run's line that opened it) | wall s | prompt tokens | generated tokens | generated tok/s | "
            "running (mean) | under-full share |")
    sep = "|---|---|---|---|---|---|---|"
    if args.saturated:
        head += " s at saturation | s left |"
        sep += "---|---|"
    print(head)
    print(sep)
    for r in rows:
        line = (f"| {r['what'][:70]} ({r['engines']}) | {r['wall']:.0f} | {r['prompt']:.0f} | {r['tokens']:.0f} | "
                f"{r['rate']:.1f} | {r['running']:.1f} | {r['under_full']:.2f} |")
        if args.saturated:
            at_full = r["tokens"] / args.saturated
            line += f" {at_full:.0f} | {r['wall'] - at_full:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
