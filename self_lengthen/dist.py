"""Rank, world size and master address from the environment (torchrun-style), validated once."""
import os
from dataclasses import dataclass

from .errors import UsageError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a whole number; set it to an integer") from None


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
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        if world < 1:
            raise UsageError(f"WORLD_SIZE={world} must be at least 1")
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} must be in [0, WORLD_SIZE={world}); number the nodes 0..{world - 1}")
        return cls(world, rank, os.environ.get("MASTER_ADDR") or "127.0.0.1", _env_int("MASTER_PORT", 29500))


class Sync:
    """Barriers and failure markers between ranks, as files in the shared results directory.

    Multi-node runs need a filesystem shared by all nodes (as the method's original scripts assume).
    `arrive(step)` marks this rank as past `step`; `wait(step)` returns once every rank has, raises at the first
    failure marker of another rank, and raises at the timeout naming the ranks still missing.
    """

    def __init__(self, root, dist: DistEnv, timeout: float, poll: float = 1.0):
        from pathlib import Path

        self.root, self.dist, self.timeout, self.poll = Path(root), dist, timeout, poll
        self.root.mkdir(parents=True, exist_ok=True)

    def _marker(self, step: str, rank: int):
        return self.root / step.replace("/", "__") / f"rank{rank}"

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

    def wait(self, step: str, timeout: float | None = None) -> None:
        import time

        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            missing = [r for r in range(self.dist.world_size) if not self._marker(step, r).exists()]
            if not missing:
                return
            failed = self.failures()
            if failed:
                raise UsageError(f"rank {self.dist.rank} stops: another rank failed ({'; '.join(failed)})")
            if time.monotonic() > deadline:
                raise UsageError(f"rank {self.dist.rank} timed out after {timeout or self.timeout:.0f}s at step "
                                 f"'{step}': rank(s) {', '.join(map(str, missing))} never arrived")
            time.sleep(self.poll)

    def barrier(self, step: str, timeout: float | None = None) -> None:
        self.arrive(step)
        self.wait(step, timeout)
