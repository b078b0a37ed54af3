"""Start servers in their own session and stop exactly those, by process group, from pid files."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from ..io import write_text_atomic


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def spawn(name: str, cmd: list[str], *, run_dir: Path, log_dir: Path, env: dict, host: str,
          ports: list[int]) -> subprocess.Popen:
    """Start `cmd` as the leader of a new session (so its engine children share its group); record a pid file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    record = {"name": name, "pid": proc.pid, "pgid": proc.pid, "start_time": _start_time(proc.pid),
              "cmd": cmd, "log": str(log_path), "host": host, "ports": ports}
    write_text_atomic(run_dir / f"{name}.pid", json.dumps(record))
    return proc


def pid_records(run_dir: Path) -> list[dict]:
    records = []
    for path in sorted(run_dir.glob("*.pid")):
        try:
            records.append(dict(json.loads(path.read_text()), pid_file=str(path)))
        except (OSError, ValueError):
            continue
    return records


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def leader_alive(record: dict) -> bool:
    """The recorded process itself is running (not a zombie, not a new process that reused its pid)."""
    try:
        state = Path(f"/proc/{record['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and _start_time(record["pid"]) == record.get("start_time")


def _is_ours(record: dict) -> bool:
    """The group is ours if its leader is gone (its children keep the group id) or is the process we started."""
    now = _start_time(record["pid"])
    return now is None or now == record.get("start_time")


def stop_groups(records: list[dict], grace: float = 20.0) -> list[str]:
    """SIGTERM each recorded group, then SIGKILL what is left after `grace` seconds. Returns what was signalled."""
    signalled = []
    for rec in records:
        if group_alive(rec["pgid"]) and _is_ours(rec):
            os.killpg(rec["pgid"], signal.SIGTERM)
            signalled.append(rec["name"])
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(group_alive(r["pgid"]) for r in records):
        time.sleep(0.2)
    for rec in records:
        if group_alive(rec["pgid"]) and _is_ours(rec):
            os.killpg(rec["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(group_alive(r["pgid"]) for r in records):
        time.sleep(0.1)
    return signalled


def log_tail(path: str | Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
