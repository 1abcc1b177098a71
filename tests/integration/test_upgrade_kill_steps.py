"""`kill -9` of harborctl at a named step of a hop, then `apply` again: a healthy release.

Harbor 2.14.4 is installed once with rows and kept as a bed snapshot; each case restores it
(seconds), runs `harborctl upgrade apply` to 2.15.2 as a user runs it, and SIGKILLs it when
the host's journal says the step began. The next `apply` either continues (exit 0, on
2.15.2) or rolls back (exit 11, on 2.14.4, and then a third `apply` reaches 2.15.2); either
way Harbor is healthy with every row, schema_migrations clean, exactly one database dir
owned by uid 999, no partial snapshot or pg_upgrade folder, no window helper left.

Covered here: ``unpack`` (before the window: a half-unpacked release folder; ``backup``,
``load_images``, ``configure`` and ``count_rows`` leave the host's data the same way and
resume the same way, so one stands for all), and every window step not covered elsewhere:
``stop``, ``switch``, ``gate``, ``finish`` (``snapshot`` and ``start`` are killed in
test_upgrade_switch_faults.py and test_upgrade_apply.py).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up
from tests.integration.harborwait import health_url, wait_healthy

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"
LABEL = "kill-steps-2.14.4-with-rows"
ROLLED_BACK = 11  # UpgradeRolledBack's exit code
LEFTOVERS = ("find /data /opt/harbor -maxdepth 3 \\( -name '*.partial' -o -name 'pgNEW*' "
             "-o -name '*.tmp-*' \\) -print")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return up.bundles(tmp_path_factory, OLD, NEW)


@pytest.fixture(scope="module")
def snapshot(testbed: TestBed, bundles: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """h1 on 2.14.4 with rows, kept as a bed snapshot; returns (site dir, row counts)."""
    return up.snapshot_with_rows(testbed, tmp_path_factory, bundles, OLD, LABEL)


def _began(name: str) -> Callable[[list[up.Entry]], bool]:
    return lambda j: any(e["step"] == name and e["event"] == "begin" for e in j)


def _apply(argv: list[str], err: Path) -> int:
    with open(err, "ab") as out:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=out,
                              timeout=1800, check=False).returncode


def _healthy_with_every_row(host: Host, release: str, counts: str) -> None:
    up.on_release_with_every_row(host, release, counts)
    wait_healthy(health_url(host))
    assert host.exec(LEFTOVERS).stdout.strip() == ""
    assert host.exec("pgrep -f '[u]pgrade-window'", check=False).returncode != 0


@pytest.mark.parametrize("step", ["unpack", "stop", "switch", "gate", "finish"])
def test_kill_at_a_step_then_apply_again_ends_healthy(
        testbed: TestBed, snapshot: tuple[Path, str], bundles: Path, step: str) -> None:
    site_dir, counts = snapshot
    host = up.restored(testbed, "h1", LABEL)
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    argv = up.apply_argv(site, testbed, site_dir, bundles, "--health-retries", "12")
    err = site_dir / f"kill-{step}.err"
    code = up.kill_when(argv, host, _began(step), err)
    assert code == -signal.SIGKILL, err.read_text()[-2000:]
    again = _apply(argv, err)
    assert again in (0, ROLLED_BACK), err.read_text()[-3000:]
    print(f"kill at {step}: the next apply exited {again}")  # shown with -s
    if again == ROLLED_BACK:
        _healthy_with_every_row(host, OLD, counts)
        again = _apply(argv, err)
    assert again == 0, err.read_text()[-3000:]
    _healthy_with_every_row(host, NEW, counts)
    assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""  # dropped
