"""The bounded wait for a host that dropped out mid-hop (the loop only; the bed tests
drop a real session: test_upgrade_kill_steps.py, and test_upgrade_unreachable.py, where the
host then stays away)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from harbor_ops.core.errors import RemoteError, UsageError
from harbor_ops.site.model import HostEntry
from harbor_ops.upgrade.reconnect import (
    BOUNDS_ENV,
    Bounds,
    StillUnreachable,
    bounds_from_env,
    until_back,
)


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


def test_a_host_that_stays_away_ends_the_run_with_exit_15_naming_state_and_next_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HostRun's recovery against a real refused connection (a closed port on this machine):
    the tries are printed, then the outcome ``unreachable`` (no rollback ran: not
    ``rollback_failed``) with the hop, the journal and the command."""
    from harbor_ops.upgrade.apply import HostOutcome, HostRun, Options, rollout_error
    from harbor_ops.upgrade.plan import HostPlan
    from harbor_ops.upgrade.reconnect import HostDropped
    from tests.unit.test_preflight import make_site

    monkeypatch.setenv("X", "db-secret")
    monkeypatch.setenv("Y", "admin-secret")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "ssh_config"
    config.write_text("")
    entry = HostEntry(name="h1", address="127.0.0.1", port=port)
    opts = Options(None, config, tmp_path / "logs", tmp_path / "backups",
                   reconnect=Bounds(tries=2, seconds=30, pause=0.01))
    outcome, lines = HostOutcome(HostPlan(host="h1")), list[str]()
    run = HostRun(make_site("2.15.2"), entry, outcome, opts, lines.append)
    drop = HostDropped("0123456789abcdef", 1, "2.14.4", "2.15.2", "h1: window: unreachable")
    assert run._recover(drop, 1) is None
    assert any(line.startswith("h1: not reachable yet (try 1 of at most 2") for line in lines)
    assert (outcome.outcome, outcome.on_release) == ("unreachable", None)
    assert "hop 1 (2.14.4 -> 2.15.2): the connection to h1 dropped" in outcome.message
    assert "no answer in 2 tries" in outcome.message
    assert "/var/lib/harborctl/upgrade.journal" in outcome.message
    assert "run `harborctl upgrade apply` again" in outcome.message
    error = rollout_error([outcome])
    assert error is not None and error.exit_code == 15
    assert "no rollback ran" in (error.hint or "")
    # Beside a host whose rollback failed the graver code wins; beside a rolled-back one, 15.
    failed = HostOutcome(HostPlan(host="h2"), outcome="rollback_failed")
    rolled = HostOutcome(HostPlan(host="h3"), outcome="rolled_back", on_release="2.14.4")
    graver = [rollout_error(hs) for hs in ([outcome, failed], [rolled, outcome])]
    assert [e.exit_code if e else None for e in graver] == [12, 15]
    assert outcome.reconnects[0]["hop"] == 1 and "seconds" in outcome.reconnects[0]
    # A host that keeps dropping: no further try after the third drop.
    again = HostRun(make_site("2.15.2"), entry, HostOutcome(HostPlan(host="h1")), opts,
                    lines.append)
    assert again._recover(drop, 4) is None
    assert "dropped 4 times in this run" in again.o.message


@pytest.mark.parametrize(("raw", "bounds"), [
    ("", Bounds()),
    ("  ", Bounds()),
    ("1,20", Bounds(tries=30, seconds=20, pause=1)),
    ("0, 0.5", Bounds(tries=30, seconds=0.5, pause=0)),
])
def test_the_env_var_sets_pause_and_window_and_keeps_the_tries_bound(raw: str,
                                                                      bounds: Bounds) -> None:
    assert bounds_from_env({BOUNDS_ENV: raw}) == bounds
    assert bounds_from_env({}) == Bounds()


@pytest.mark.parametrize("raw", ["20", "1,2,3", "a,b", "-1,20", "1,0", "1,-5", "nan,20",
                                 "1,inf", "5000,20", "1,100000"])
def test_a_bad_env_value_is_refused_naming_the_variable_and_the_form(raw: str) -> None:
    with pytest.raises(UsageError) as got:
        bounds_from_env({BOUNDS_ENV: raw})
    assert got.value.exit_code == 2
    assert f"{BOUNDS_ENV}={raw!r}: must be 'pause,window' in seconds" in got.value.message
    assert "(default '5,300')" in got.value.message
