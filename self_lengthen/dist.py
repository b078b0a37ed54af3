"""Rank, world size and master address from the environment (torchrun-style), validated once; barriers,
failure markers and heartbeats between ranks."""
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .env import env_int, env_port, env_seconds
from .errors import UsageError

BEAT_EVERY = 10.0  # seconds between heartbeats


def barrier_timeout(profile: dict, profile_name: str) -> float:
    """Seconds a rank waits at a barrier: $SELF_LENGTHEN_BARRIER_TIMEOUT, else the profile's `barrier_timeout`."""
    value = profile.get("barrier_timeout", 3600)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UsageError(f"profile {profile_name}: barrier_timeout={value!r} must be a positive number of seconds")
    return env_seconds("SELF_LENGTHEN_BARRIER_TIMEOUT", value)


@dataclass(frozen=True)
class DistEnv:
    world_size: int = 1
    rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def multi_node(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistEnv":
        world = env_int("WORLD_SIZE", 1)
        rank = env_int("RANK", 0)
        if world < 1:
            raise UsageError(f"WORLD_SIZE={world} must be at least 1")
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} must be in [0, WORLD_SIZE={world}); number the nodes 0..{world - 1}")
        return cls(world, rank, os.environ.get("MASTER_ADDR") or "127.0.0.1", env_port("MASTER_PORT", 29500))


class Sync:
    """Barriers, failure markers and heartbeats between ranks, as files in the shared results directory.

    Multi-node runs need a filesystem shared by all nodes (as the method's original scripts assume).
    `arrive(step)` marks this rank as past `step`; `wait(step)` returns once every rank has. It raises at the first
    failure marker of another rank, when a rank it has seen alive stops its heartbeat for `stale_after` seconds
    (killed with -9, or its node died: no failure marker is written then), and at the timeout, naming the ranks still
    missing. A heartbeat is trusted once it is seen changing, or at first sight when the shared filesystem's clock says
    it was written in the last two beat intervals; so a rank killed right after its first beat is caught, and a file
    left by a run that ended earlier is taken for neither a live rank nor a dead one (the rank may still come).
    """

    def __init__(self, root, dist: DistEnv, timeout: float, poll: float = 1.0, stale_after: float | None = None):
        self.root, self.dist, self.timeout, self.poll = Path(root), dist, timeout, poll
        self.stale_after = stale_after or env_seconds("SELF_LENGTHEN_HEARTBEAT_TIMEOUT", 300)
        self.root.mkdir(parents=True, exist_ok=True)
        self._seen: dict[int, tuple[str | None, float, bool]] = {}  # rank -> (content, last change, seen alive)

    def _marker(self, step: str, rank: int):
        return self.root / step.replace("/", "__") / f"rank{rank}"

    def _heartbeat_file(self, rank: int) -> Path:
        return self.root / f"alive-rank{rank}"

    def arrive(self, step: str) -> None:
        path = self._marker(step, self.dist.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def failures(self) -> list[str]:
        out = []
        for path in sorted(self.root.glob("FAILED-rank*")):
            if path.name != f"FAILED-rank{self.dist.rank}":
                out.append(f"{path.name[7:]}: {path.read_text().strip()[:300]}")
        return out

    def fail(self, message: str) -> None:
        (self.root / f"FAILED-rank{self.dist.rank}").write_text(message)

    def clear_own_failure(self) -> None:
        (self.root / f"FAILED-rank{self.dist.rank}").unlink(missing_ok=True)

    @contextmanager
    def heartbeat(self, every: float = BEAT_EVERY):
        """While the body runs, rewrite alive-rank<R> every `every` seconds with a rising count; remove it after."""
        path = self._heartbeat_file(self.dist.rank)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        stop = threading.Event()

        def beat():
            count = 0
            while True:
                count += 1
                try:
                    tmp.write_text(f"{socket.gethostname()} pid {os.getpid()} beat {count}")
                    os.replace(tmp, path)
                except OSError:  # a passing filesystem hiccup: the next beat tries again
                    pass
                if stop.wait(every):
                    return

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=every + 5)
            path.unlink(missing_ok=True)

    def _written_ago(self, path: Path) -> float | None:
        """Seconds since `path` was written, by the shared filesystem's clock (other nodes' clocks may differ): the
        mtime of a probe file touched just now is that filesystem's present."""
        try:
            written = path.stat().st_mtime
            probe = self.root / f".clock-rank{self.dist.rank}"
            probe.touch()
            return max(0.0, probe.stat().st_mtime - written)
        except OSError:
            return None

    def dead_ranks(self, ranks) -> list[tuple[int, float]]:
        """(rank, seconds since its heartbeat last changed) for each rank seen alive whose heartbeat went stale."""
        now = time.monotonic()
        dead = []
        for r in ranks:
            path = self._heartbeat_file(r)
            try:
                content = path.read_text()
            except OSError:
                content = None
            last = self._seen.get(r)
            if last is None and content is not None:  # first sight: trusted only if written moments ago
                age = self._written_ago(path)
                fresh = age is not None and age <= min(2 * BEAT_EVERY, self.stale_after)
                self._seen[r] = (content, now - age if fresh else now, fresh)
            elif last is None or content != last[0]:
                alive = last is not None and (last[2] or content is not None)
                self._seen[r] = (content, now, alive)
            elif last[2] and content is not None and now - last[1] > self.stale_after:
                dead.append((r, now - last[1]))
        return dead

    def wait(self, step: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            missing = [r for r in range(self.dist.world_size) if not self._marker(step, r).exists()]
            if not missing:
                return
            failed = self.failures()
            if failed:
                raise UsageError(f"rank {self.dist.rank} stops: another rank failed ({'; '.join(failed)})")
            dead = self.dead_ranks(missing)
            if dead:
                names = ", ".join(f"rank {r} ({age:.0f}s)" for r, age in dead)
                raise UsageError(f"rank {self.dist.rank} stops at step '{step}': no heartbeat from {names}; it was "
                                 f"killed or its node went down. Rerun run.sh on every node to resume")
            if time.monotonic() > deadline:
                raise UsageError(f"rank {self.dist.rank} timed out after {timeout or self.timeout:.0f}s at step "
                                 f"'{step}': rank(s) {', '.join(map(str, missing))} never arrived")
            time.sleep(self.poll)

    def barrier(self, step: str, timeout: float | None = None) -> None:
        self.arrive(step)
        self.wait(step, timeout)
