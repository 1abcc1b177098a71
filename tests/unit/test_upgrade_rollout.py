"""The rollout of several hosts: N at a time, a failure stops it."""

from __future__ import annotations

import threading
import time

import pytest

from harbor_ops.upgrade.rollout import run_all


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
