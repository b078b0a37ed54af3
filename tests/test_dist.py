"""Barriers between ranks: a rank killed with -9 (no failure marker) is noticed by its stopped heartbeat."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT

from self_lengthen.dist import DistEnv, Sync
from self_lengthen.errors import UsageError

# Rank 0 in a process of its own: it beats every `every` s and waits at a barrier rank 1 never reaches.
RANK0 = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from self_lengthen.dist import DistEnv, Sync
    sync = Sync({sync_dir!r}, DistEnv(world_size=2, rank=0), timeout=600)
    with sync.heartbeat(every={every}):
        sync.barrier("never")
""")


def start_rank0(sync_dir, every=0.2):
    code = RANK0.format(root=str(ROOT), sync_dir=str(sync_dir), every=every)
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_rank_killed_with_9_is_named_within_the_heartbeat_timeout(tmp_path):
    rank0 = start_rank0(tmp_path)
    try:
        one = Sync(tmp_path, DistEnv(world_size=2, rank=1), timeout=60, poll=0.1, stale_after=3)
        # While rank 0 lives, rank 1 waits and only its own (short) timeout ends the wait.
        with pytest.raises(UsageError, match="rank.s. 0 never arrived"):
            one.barrier("step_a", timeout=6)
        os.kill(rank0.pid, signal.SIGKILL)
        rank0.wait(timeout=10)
        start = time.monotonic()
        with pytest.raises(UsageError) as err:
            one.barrier("step_b")
        assert time.monotonic() - start < 30  # the barrier's own timeout is 60 s
        message = str(err.value)
        assert "no heartbeat from rank 0" in message and "step_b" in message and "\n" not in message
    finally:
        if rank0.poll() is None:
            rank0.kill()


def test_a_rank_killed_before_its_second_beat_is_named_within_the_heartbeat_timeout(tmp_path):
    """Rank 0 writes one beat (the next would come in 10 min) and is killed before rank 1 ever saw its heartbeat
    change: the beat's fresh mtime is enough to trust it, so rank 1 stops at the heartbeat timeout, not the barrier's."""
    rank0 = start_rank0(tmp_path, every=600)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "alive-rank0").exists():
            assert time.monotonic() < deadline and rank0.poll() is None
            time.sleep(0.05)
        os.kill(rank0.pid, signal.SIGKILL)
        rank0.wait(timeout=10)
        one = Sync(tmp_path, DistEnv(world_size=2, rank=1), timeout=60, poll=0.1, stale_after=3)
        start = time.monotonic()
        with pytest.raises(UsageError, match="no heartbeat from rank 0"):
            one.barrier("step")
        assert time.monotonic() - start < 30  # the barrier's own timeout is 60 s
    finally:
        if rank0.poll() is None:
            rank0.kill()


def test_a_heartbeat_left_by_an_earlier_run_is_neither_alive_nor_dead(tmp_path):
    """A file written an hour ago that never changes while we watch (its writer died before this run) is not
    trusted: the rank may still come, so only the barrier's timeout ends the wait."""
    (tmp_path / "alive-rank0").write_text("old-host pid 1 beat 7")
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / "alive-rank0", (an_hour_ago, an_hour_ago))
    one = Sync(tmp_path, DistEnv(world_size=2, rank=1), timeout=600, poll=0.1, stale_after=0.5)
    with pytest.raises(UsageError, match="never arrived"):
        one.barrier("step", timeout=3)


def test_a_clean_exit_removes_the_heartbeat(tmp_path):
    sync = Sync(tmp_path, DistEnv(world_size=1, rank=0), timeout=10)
    with sync.heartbeat(every=0.1):
        time.sleep(0.3)
        assert (tmp_path / "alive-rank0").read_text().startswith(os.uname().nodename)
    assert not (tmp_path / "alive-rank0").exists()
