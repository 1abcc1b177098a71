"""The rollout of several hosts (N at a time, a failure stops it) and the host's job lock.

The lock tests run the real command harborctl sends over ssh, here through ``sh -c`` on this
machine, against a real flock (util-linux) on a private lock file.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from harbor_ops.core.errors import LockHeld, RemoteError
from harbor_ops.core.lock import job_lock
from harbor_ops.upgrade.rollout import RemoteLock, remote_lock_command, run_all


def test_hosts_run_n_at_a_time_in_order() -> None:
    running, peak, seen = [0], [0], []
    guard = threading.Lock()

    def run(item: str, stopped: object) -> bool:
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            seen.append(item)
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        return True

    assert run_all(["a", "b", "c", "d", "e"], 2, run) == []
    assert peak[0] == 2 and seen[:2] == ["a", "b"] and sorted(seen) == list("abcde")
    peak[0] = 0
    run_all(["a", "b", "c"], 1, run)
    assert peak[0] == 1


def test_a_failure_starts_no_new_host_and_tells_the_running_ones() -> None:
    b_started, a_failed = threading.Event(), threading.Event()
    saw_stop: dict[str, bool] = {}

    def run(item: str, stopped: object) -> bool:
        assert callable(stopped)
        if item == "a":
            assert b_started.wait(10)
            a_failed.set()
            return False
        if item == "b":
            b_started.set()
            assert a_failed.wait(10)
            deadline = time.monotonic() + 10
            while not stopped() and time.monotonic() < deadline:
                time.sleep(0.01)
            saw_stop[item] = bool(stopped())
            return True
        saw_stop[item] = False
        return True

    left = run_all(["a", "b", "c", "d"], 2, run)
    assert left == ["c", "d"] and saw_stop == {"b": True}


def test_an_exception_stops_the_rollout_and_is_raised() -> None:
    def run(item: str, stopped: object) -> bool:
        if item == "a":
            raise RuntimeError("boom")
        return True

    with pytest.raises(RuntimeError, match="boom"):
        run_all(["a", "b"], 1, run)


def _lock(path: Path, job: str = "upgrade h1") -> RemoteLock:
    return RemoteLock(["sh", "-c", remote_lock_command(job, path, wait=1)], "h1", timeout=30)


def test_the_host_lock_is_held_until_released_and_names_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "harborctl.lock"
    lock = _lock(path)
    lock.acquire()
    try:
        assert "job=upgrade h1 controller=" in path.read_text()
        # what `harborctl backup create` on the host meets: the documented busy error
        with pytest.raises(LockHeld, match=r"another harborctl job holds the lock \(pid="
                           r"\d+ job=upgrade h1"), job_lock(path, job="backup create"):
            pass
    finally:
        lock.release()
    assert path.read_text() == ""
    with job_lock(path, job="backup create"):
        pass


def test_a_busy_host_lock_is_refused_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "harborctl.lock"
    with job_lock(path, job="backup create"), pytest.raises(
            LockHeld, match="on h1 .*job=backup create"):
        _lock(path).acquire()


def test_the_lock_goes_when_its_holder_dies(tmp_path: Path) -> None:
    """kill -9 of harborctl closes the session's stdin: the host's lock is freed."""
    path = tmp_path / "harborctl.lock"
    holder = subprocess.Popen(
        ["python3", "-c", "import subprocess, sys, time; p = subprocess.Popen(['sh', '-c', "
         "sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE); "
         "print(p.stdout.readline().decode().strip(), flush=True); time.sleep(600)",
         remote_lock_command("upgrade h1", path)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(LockHeld):
            job_lock(path, job="backup create").__enter__()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 20
    while True:
        try:
            with job_lock(path, job="backup create"):
                break
        except LockHeld:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.1)


def test_a_lock_that_cannot_be_taken_says_why(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="could not take the job lock"):
        RemoteLock(["sh", "-c", "echo nope >&2; exit 3"], "h1", timeout=10).acquire()
