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
