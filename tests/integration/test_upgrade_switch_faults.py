"""Each fault of the new release ends on the old release with every row (exit 11).

Harbor 2.14.4 is installed once with rows and kept as a bed snapshot; each test restores it
(seconds, not a fresh install), drops one of the double's fault switches for 2.15.2 into
``/data/bed-faults`` (mounted into the new release's harbor-db and harbor-core by its
prepare) or writes the rows a migration fails on, and runs `upgrade apply` to 2.15.2:

* ``pg-upgrade``: 2.15.2's real pg_upgrade 15 -> 18 fails;
* a migration fails on duplicate ``schedule`` rows and leaves ``schema_migrations`` dirty
  (Harbor's duplicate-schedule failure, goharbor/harbor#15088);
* ``core-unhealthy``: 2.15.2's core never becomes healthy.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from harbor_ops.core.errors import UpgradeRolledBack
from harbor_ops.upgrade.apply import ApplyResult, apply
from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"
LABEL = "harbor-2.14.4-with-rows"
DUPLICATE_SCHEDULES = """
    DROP INDEX IF EXISTS unique_schedule;
    INSERT INTO schedule (vendor_type, vendor_id, cron)
      VALUES ('RETENTION', 1, '0 0 0 * * *'), ('RETENTION', 1, '0 0 1 * * *');"""

bundles, snapshot = up.one_hop_fixtures(OLD, NEW, LABEL)
run_tmpdir = up.run_tmpdir


def _apply(testbed: TestBed, site_dir: Path, bundles: Path, host: Host) -> ApplyResult:
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    return apply(site, to=NEW, host=None,
                 opts=up.opts(testbed, site_dir, bundles, health_retries=12))


@pytest.mark.parametrize(("fault", "words"), [
    ("pg-upgrade", "failed at gate"),
    ("migration", "failed at gate"),
    ("core-unhealthy", "failed at gate"),
])
def test_a_failing_new_release_is_rolled_back(testbed: TestBed, snapshot: tuple[Path, str],
                                              bundles: Path, fault: str, words: str) -> None:
    site_dir, counts = snapshot
    host = up.restored(testbed, "h1", LABEL)
    if fault == "migration":
        host.exec("docker exec -i harbor-db psql -v ON_ERROR_STOP=1 -U postgres -d registry",
                  input=DUPLICATE_SCHEDULES.encode())
        counts = up.psql(host, up.COUNT_SQL)
    else:
        host.exec(f"mkdir -p /data/bed-faults && echo v{NEW} > /data/bed-faults/{fault}")
    result = _apply(testbed, site_dir, bundles, host)
    assert isinstance(result.error, UpgradeRolledBack), result.error
    out = result.hosts[0]
    assert (out.outcome, out.on_release) == ("rolled_back", OLD)
    assert words in out.message, out.message
    steps = [s["step"] for s in out.hops[-1]["steps"]]
    assert steps[-5:] == ["rb_stop", "rb_restore", "rb_switch", "rb_start", "rb_gate"]
    up.on_release_with_every_row(host, OLD, counts)


def test_a_reboot_while_core_is_paused_then_apply_again_reaches_the_target(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, run_tmpdir: Path
) -> None:
    """The window pauses harbor-core while harbor-db converts; here the helper and harborctl
    are SIGKILLed then (nothing left to unpause it) and the host reboots: no container comes
    back paused (a pause does not outlive the container's processes), and the next `apply`
    (whose first step finds the journal's pause and sees core is not paused) rolls the hop
    back, tries it again and reaches 2.15.2 with every row, nothing paused."""
    site_dir, counts = snapshot
    host = up.restored(testbed, "h1", LABEL)
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    argv = up.apply_argv(site, testbed, site_dir, bundles, tmpdir=run_tmpdir)
    up.kill_while_paused(argv, host, site_dir / "killed-paused.err")
    assert up.paused(host) == ["harbor-core"]
    testbed.snapshot("h1", "rebooted-while-paused")  # halt (dockerd stopped), then boot
    boot = host.exec("grep '^@reboot' /etc/cron.d/harbor").stdout.split(None, 2)[2]
    host.exec(boot, check=False)
    states = host.exec("docker ps -a --format '{{.Names}} {{.State}}'").stdout
    print("after the reboot:", states.replace("\n", "; "))  # shown with -s
    assert up.paused(host) == [], states
    result = _apply(testbed, site_dir, bundles, host)
    assert result.error is None, _whole_error(result, host)
    assert (result.hosts[0].outcome, result.hosts[0].on_release) == ("done", NEW)
    steps = [(e["step"], e["event"]) for e in up.journal(host)]
    assert steps[steps.index(("rb_stop", "begin")) + 1] == ("rb_stop", "unpause"), steps
    up.healthy_with_every_row(host, NEW, counts, snapshot_dropped=True)


def _whole_error(result: ApplyResult, host: Host) -> str:
    """All a failed run says: its error, each host's message, and the window's ``fail``
    lines in the host's journal (the step's whole error and the containers' last lines)."""
    fails = [f"journal: {e['step']} failed: {e.get('msg')}" for e in up.journal(host)
             if e["event"] == "fail"]
    return "\n".join([str(result.error), *(o.message for o in result.hosts), *fails])


def test_a_reboot_in_the_window_then_apply_again_reaches_the_target(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, run_tmpdir: Path
) -> None:
    """harborctl dies with the host: SIGKILL when the window's snapshot begins, then the host
    reboots (dockerd stopped and started, containers back by their restart policy, the
    @reboot line run). The boot path must start nothing while the window is open; the
    next `apply` continues at the snapshot and reaches 2.15.2 with every row."""
    site_dir, counts = snapshot
    host = up.restored(testbed, "h1", LABEL)
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    argv = up.apply_argv(site, testbed, site_dir, bundles, tmpdir=run_tmpdir)
    code = up.kill_when(argv, host, lambda j: any(
        e["step"] == "snapshot" and e["event"] == "begin" for e in j), site_dir / "killed.err")
    assert code == -signal.SIGKILL, (site_dir / "killed.err").read_text()[-2000:]
    testbed.snapshot("h1", "rebooted-in-the-window")  # halt (dockerd stopped), then boot
    boot = host.exec("grep '^@reboot' /etc/cron.d/harbor").stdout.split(None, 2)[2]
    host.exec(boot, check=False)  # what cron runs at boot, as root (it returns when done)
    # No Harbor container runs but the new release's harbor-log (it receives logs and
    # touches no Harbor data; the snapshot step started it once the containers were created,
    # and dockerd started it again at boot): none other ever ran since the old release's
    # were removed. dockerd's restart policy never starts a container that was never
    # started, so nothing can start one later: no wait is needed.
    states = host.exec("docker ps -a --format '{{.Names}} {{.State}} {{.Image}}'").stdout
    rows = [line.split() for line in states.splitlines() if line.strip()]
    assert all(state == "created" or (name, image) == (
        "harbor-log", f"goharbor/harbor-log:v{NEW}") for name, state, image in rows), states
    result = _apply(testbed, site_dir, bundles, host)
    assert result.error is None, _whole_error(result, host)
    assert (result.hosts[0].outcome, result.hosts[0].on_release) == ("done", NEW)
    assert up.psql(host, up.COUNT_SQL) == counts
    assert host.exec("ls /data/database").stdout.split() == ["pg18"]
