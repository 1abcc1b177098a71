"""`kill -9` of harborctl at a named step of a hop, then `apply` again: a healthy release.

Harbor 2.14.4 is installed once with rows and kept as a bed snapshot; each case restores it
(seconds), runs `harborctl upgrade apply` to 2.15.2 as a user runs it, and SIGKILLs it when
the host's journal says the step began. The next `apply` either continues (exit 0, on
2.15.2) or rolls back (exit 11, on 2.14.4, and then a third `apply` reaches 2.15.2); either
way Harbor is healthy with every row, schema_migrations clean, exactly one database dir
owned by uid 999, no partial snapshot or pg_upgrade folder, no window helper left.

Covered here: every step before the window (``backup``, ``unpack``, ``load_images``,
``configure``, ``count_rows``: the data is untouched there and the next `apply` picks up at
the step that was cut; one chain, which ends with a kill at ``gate`` and a retry that itself
fails: the double's ``core-unhealthy`` switch set before that `apply`, exit 11, back on
2.14.4), every window step not covered elsewhere: ``stop``, ``switch``, ``gate``, ``finish``
(``snapshot`` and ``start`` are killed in test_upgrade_switch_faults.py and
test_upgrade_apply.py); the window helper itself killed (with harborctl) while it holds
harbor-core paused during harbor-db's conversion: the next `apply` unpauses it first; and
the SSH session of the window dropped while harborctl lives: the same run reconnects and
ends on a healthy release.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"
LABEL = "kill-steps-2.14.4-with-rows"
ROLLED_BACK = 11  # UpgradeRolledBack's exit code

bundles, snapshot = up.one_hop_fixtures(OLD, NEW, LABEL)
run_tmpdir = up.run_tmpdir


def _apply(argv: list[str], err: Path) -> int:
    with open(err, "ab") as out:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=out,
                              timeout=1800, check=False).returncode


def _restored(testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, run_tmpdir: Path,
              retries: str = "12") -> tuple[Path, str, Host, list[str]]:
    """h1 back at the kept 2.14.4-with-rows snapshot, and the `apply` to 2.15.2 a user
    types for it (``retries`` x 5 s: the gate's wait)."""
    site_dir, counts = snapshot
    host = up.restored(testbed, "h1", LABEL)
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    argv = up.apply_argv(site, testbed, site_dir, bundles, "--health-retries", retries,
                         tmpdir=run_tmpdir)
    return site_dir, counts, host, argv


@pytest.mark.parametrize("step", ["stop", "switch", "gate", "finish"])
def test_kill_at_a_step_then_apply_again_ends_healthy(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, step: str,
        run_tmpdir: Path) -> None:
    """... and the killed run's staging folder (0700, the rendered harbor.yml in it) is
    swept by the next run, which leaves none of its own."""
    site_dir, counts, host, argv = _restored(testbed, snapshot, bundles, run_tmpdir)
    err = site_dir / f"kill-{step}.err"
    code = up.kill_when(argv, host, up.began(step), err)
    assert code == -signal.SIGKILL, err.read_text()[-2000:]
    left = up.staging_left(run_tmpdir)
    # (a kill meant for ``finish``, the last step, may land after the playbook ended and
    # its folder went)
    assert len(left) == 1 or (step == "finish" and not left), left
    assert all((run_tmpdir / name / "files" / "harbor.yml").exists() for name in left)
    again = _apply(argv, err)
    assert again in (0, ROLLED_BACK), err.read_text()[-3000:]
    assert up.staging_left(run_tmpdir) == []
    print(f"kill at {step}: the next apply exited {again}")  # shown with -s
    if again == ROLLED_BACK:  # its retry failed: see the next test, which makes it fail
        up.healthy_with_every_row(host, OLD, counts)
        again = _apply(argv, err)
    assert again == 0, err.read_text()[-3000:]
    up.healthy_with_every_row(host, NEW, counts, snapshot_dropped=True)
    assert up.staging_left(run_tmpdir) == []


def test_a_helper_killed_while_core_is_paused_leaves_it_to_the_next_apply(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, run_tmpdir: Path
) -> None:
    """The window pauses harbor-core while harbor-db converts. Here the window helper (by its
    pid, from the window lock's holder line) and then harborctl are SIGKILLed while core is
    paused: nothing thaws it on its own (it is still paused once both are gone). The next
    `apply` unpauses it in its helper's first step, before that step's work (the rollback's
    ``rb_stop``: the hop was cut at ``start``), rolls back, tries the hop again and ends on
    2.15.2 with every row and no container paused."""
    site_dir, counts, host, argv = _restored(testbed, snapshot, bundles, run_tmpdir)
    err = site_dir / "kill-paused.err"
    killed = up.kill_while_paused(argv, host, err)
    assert "step=start" in killed, killed
    time.sleep(2)  # long enough for a pending retry of core, were it running
    assert up.paused(host) == ["harbor-core"]
    assert up.held(up.journal(host))
    again = _apply(argv, err)
    assert again == 0, err.read_text()[-3000:]
    steps = [(e["step"], e["event"]) for e in up.journal(host)]
    first = steps.index(("rb_stop", "begin"))
    assert steps[first + 1] == ("rb_stop", "unpause"), steps
    up.healthy_with_every_row(host, NEW, counts, snapshot_dropped=True)
    assert up.staging_left(run_tmpdir) == []


def test_kills_before_the_window_then_a_retry_that_fails_is_rolled_back(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, run_tmpdir: Path
) -> None:
    """One chain (one restore, one hop's work; one case for the five steps before the window,
    to keep CI short): killed during the controller's backup, then each next `apply` killed
    when ``unpack`` (a half-unpacked release folder), ``load_images``, ``configure`` and
    ``count_rows`` began, each picking up at the step that was cut; the kill lands inside
    its step (the run's last journal line is that step's ``begin``; the backup journals
    nothing until it ended). The next `apply` goes on into the window and is killed at
    ``gate``, which the double's ``health-unhealthy`` switch holds in its wait (a gate that
    passes at its first question could end before the kill lands); then that switch goes and
    ``core-unhealthy`` is set (core reads it only at its start: the retry's), so the `apply`
    after it rolls the hop back, tries it again, and that try fails: exit 11, back on 2.14.4
    with every row."""
    # 6 x 5 s: the failing gate's wait; the old release comes back well inside it
    site_dir, counts, host, argv = _restored(testbed, snapshot, bundles, run_tmpdir, "6")
    err = site_dir / "kill-before-the-window.err"
    err.touch()
    code = up.kill_when(argv, host, lambda _: f"-> {NEW}: backup ...\n" in err.read_text(), err)
    assert code == -signal.SIGKILL and "backup done" not in err.read_text(), err.read_text()
    assert up.journal(host) == []
    cut = None  # the step the last kill cut: where the next run must pick up
    # The new release's prepare (configure) mounts the switches' folder into its core.
    host.exec(f"mkdir -p /data/bed-faults && echo v{NEW} > /data/bed-faults/health-unhealthy")
    try:
        for step in ("unpack", "load_images", "configure", "count_rows", "gate"):
            assert up.kill_when(argv, host, up.began(step), err) == -signal.SIGKILL, (
                err.read_text()[-2000:])  # (kill_when starts err afresh for each run)
            last = up.journal(host)[-1]
            assert (last["step"], last["event"]) == (step, "begin"), last
            assert cut is None or f"stopped at {cut} before the data could change: resume" in (
                err.read_text()), err.read_text()[-2000:]
            cut = step
        host.exec(f"rm /data/bed-faults/health-unhealthy && "
                  f"echo v{NEW} > /data/bed-faults/core-unhealthy")
        again = _apply(argv, err)
    finally:
        host.exec("rm -rf /data/bed-faults")
    text = err.read_text()
    assert again == ROLLED_BACK, text[-3000:]
    assert "was interrupted at gate after the new release could touch the data" in text
    assert "rolled back after the interruption; trying hop 2.15.2 again" in text, text[-3000:]
    ends = {e["run"] for e in up.journal(host) if (e["step"], e["event"]) == ("rb_gate", "end")}
    assert len(ends) == 2, ends  # the kill's rollback, then the failed retry's
    up.healthy_with_every_row(host, OLD, counts)
    assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""
    assert not list((site_dir / "backups" / "h1").glob("*.partial"))
    assert up.staging_left(run_tmpdir) == []  # each killed run's, swept by the next


def test_an_ssh_drop_in_the_window_is_recovered_by_the_same_run(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, run_tmpdir: Path
) -> None:
    """While harborctl lives, the SSH session running the window helper is cut at ``stop``
    (Harbor is down from there on; its sshd processes are killed on the host, the host's
    sshd keeps listening). Ansible ends the play without its rescue; harborctl reconnects,
    waits for the helper (it finishes ``stop`` and begins nothing more), reads the journal
    and continues at ``snapshot`` in the same run: exit 0 on 2.15.2 with every row. Before
    this, the run ended with exit 12 and Harbor down. (A drop after ``switch`` takes the
    rollback-and-retry path a killed run takes; that path is the previous test's; cutting
    at ``gate`` here passed too, at about twice this case's time.)"""
    site_dir, counts, host, argv = _restored(testbed, snapshot, bundles, run_tmpdir)
    err = site_dir / "ssh-drop.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out)
        try:
            dropped = up.at_step(host, "stop", proc, up.drop_window_session)
            code = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = err.read_text()
    assert dropped, text[-3000:]
    assert code == 0, text[-3000:]
    assert "the connection dropped" in text and "reachable again" in text, text[-3000:]
    assert "stopped at snapshot before the data could change: resume" in text, text[-3000:]
    events = [(e["step"], e["event"]) for e in up.journal(host)]
    assert events.count(("stop", "end")) == 1 and events[-1] == ("finish", "end"), events
    assert events.index(("stop", "end")) < events.index(("snapshot", "begin")), events
    up.healthy_with_every_row(host, NEW, counts, snapshot_dropped=True)
    assert up.staging_left(run_tmpdir) == []
