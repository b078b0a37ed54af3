"""What each step of a run got of the engines: the workers' stats lines (each busy engine's generated tokens/s and
requests running, every `--stats-interval` seconds, default 10), split at the run's own progress lines.

Each progress line of run.sh (`[rank 0 HH:MM:SS] iteration 1: step2 Extender`) opens a segment that the next one
closes. Per segment with engine work: its wall time, the prompt tokens the engines read and the tokens they generated
in it, the generated tokens' mean rate, the requests running on average, and the share of its stats lines whose
busiest engine ran fewer than `--full` requests. With `--saturated` (the engine's rate with its batch full,
bench/synthesis.py step2 prints it), also how long the same tokens would take at that rate, and the time left over.
With `--by-running`, a second table: the stats lines of a lone busy engine that only decoded (prompt tokens under
20/s), grouped by requests running: median generated tok/s, the time of one decode step (running / tok/s) and each
request's own rate, and a least-squares line through the steps' times, a + b x running. A stage whose requests
wait on each other (a chain, retries) finishes no sooner for requests added beside it: each one costs every step b.

Usage: .venv/bin/python bench/engine_load.py RUN_LOG WORKER_LOG... [--saturated 205] [--full 32] [--interval 10]
       [--by-running]
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


BANDS = [(1, 4), (5, 8), (9, 16), (17, 24), (25, 32), (33, 40), (41, 48), (49, 10**6)]


def by_running(stats: list[dict], max_prompt: float = 20.0) -> tuple[list[dict], tuple[float, float] | None]:
    """Decode-only lines of a lone busy engine, by running band: (rows, (a, b) of step ms = a + b x running)."""
    ticks = []
    for r in stats:
        if ticks and (r["t"] - ticks[-1][0]["t"]).total_seconds() <= 2:
            ticks[-1].append(r)
        else:
            ticks.append([r])
    lone = [t[0] for t in ticks if len(t) == 1]
    points = [(r["running"], r["gen"]) for r in lone if r["prompt"] < max_prompt and r["gen"] > 0 and r["running"]]
    rows = []
    for lo, hi in BANDS:
        rates = sorted(g for n, g in points if lo <= n <= hi)
        if rates:
            running = sorted(n for n, g in points if lo <= n <= hi)
            median, n_med = rates[len(rates) // 2], running[len(running) // 2]
            rows.append({"band": f"{lo}-{hi}" if hi < 10**6 else f"{lo}+", "lines": len(rates), "rate": median,
                         "running": n_med, "step_ms": 1000 * n_med / median, "per_request": median / n_med})
    fit = None
    if len({n for n, _ in points}) > 1:
        xs, ys = [n for n, _ in points], [1000 * n / g for n, g in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fit = (my - b * mx, b)
    return rows, fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_log", type=Path)
    p.add_argument("worker_logs", type=Path, nargs="+")
    p.add_argument("--saturated", type=float, default=None, help="the engine's tok/s with its batch full")
    p.add_argument("--full", type=int, default=32, help="requests running that fill the engine's batch")
    p.add_argument("--interval", type=float, default=10.0, help="the workers' --stats-interval")
    p.add_argument("--by-running", action="store_true", help="also the decode step's time by requests running")
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
    if args.by_running:
        bands, fit = by_running(stats)
        print("\n| requests running | stats lines | running (median) | generated tok/s (median) | ms per decode step | "
              "tok/s per request |")
        print("|---|---|---|---|---|---|")
        for b in bands:
            print(f"| {b['band']} | {b['lines']} | {b['running']} | {b['rate']:.1f} | {b['step_ms']:.1f} | "
                  f"{b['per_request']:.1f} |")
        if fit:
            print(f"\nms per decode step = {fit[0]:.1f} + {fit[1]:.2f} x running (least squares)")


if __name__ == "__main__":
    main()
