"""The bounded wait for a host that dropped out mid-hop (the loop only; the bed test
tests/integration/test_upgrade_ssh_drop.py drops a real session)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harbor_ops.core.errors import RemoteError
from harbor_ops.upgrade.reconnect import Bounds, StillUnreachable, until_back


class Clock:
    """A clock that the sleeps (and each read) move on."""

    def __init__(self, read_cost: float = 0.0) -> None:
        self.now, self.read_cost = 0.0, read_cost
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(clock: Clock, times: int, answer: str = "plan") -> tuple[Callable[[], str],
                                                                     list[int]]:
    calls = [0]

    def read() -> str:
        calls[0] += 1
        clock.now += clock.read_cost
        if calls[0] <= times:
            raise RemoteError(f"h1: connect timed out ({calls[0]})")
        return answer
    return read, calls


def test_the_host_back_after_two_failed_tries_gives_the_read_and_says_so() -> None:
    clock, lines = Clock(), list[str]()
    read, calls = failing(clock, 2)
    got = until_back(read, name="h1", bounds=Bounds(tries=5, seconds=60, pause=5),
                     say=lines.append, clock=clock, sleep=clock.sleep)
    assert got == "plan" and calls[0] == 3 and clock.slept == [5, 5]
    assert lines[0] == ("h1: not reachable yet (try 1 of at most 5, 0 s of at most 60 s): "
                        "h1: connect timed out (1)")
    assert lines[-1] == "h1: reachable again (try 3, 10 s after the drop)"


def test_the_tries_bound_the_wait() -> None:
    clock = Clock()
    read, calls = failing(clock, 100)
    with pytest.raises(StillUnreachable) as got:
        until_back(read, name="h1", bounds=Bounds(tries=3, seconds=600, pause=1),
                   say=lambda _: None, clock=clock, sleep=clock.sleep)
    assert calls[0] == 3 and got.value.tries == 3
    assert got.value.last == "h1: connect timed out (3)"


def test_the_time_bounds_the_wait_and_no_sleep_goes_past_it() -> None:
    clock = Clock(read_cost=10)  # each try costs its connect timeout
    read, calls = failing(clock, 100)
    with pytest.raises(StillUnreachable) as got:
        until_back(read, name="h1", bounds=Bounds(tries=100, seconds=42, pause=5),
                   say=lambda _: None, clock=clock, sleep=clock.sleep)
    # try 10, pause 5, try 10, pause 5, try 10 -> 40 s; pause 2 (the rest of the 42 s);
    # one more try -> 52 s, and no further one
    assert calls[0] == 4 and clock.slept == [5, 5, 2]
    assert got.value.seconds == 52
