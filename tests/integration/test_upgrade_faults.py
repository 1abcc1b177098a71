"""A hop that fails in its downtime window ends on the old release with every row (exit 11).

The fault here is real: the data disk fills up during the hop. The host's /data is a small
filesystem made for the test (tmpfs); Harbor 2.14.4 is installed on it with rows; `upgrade
apply` to 2.15.2 passes its refusals (the space is there), and when the host's journal says
the last step before the window began (`count_rows`), the test fills /data up to half the
database, so the snapshot's copy fails with ENOSPC: the window helper pre-copies the
snapshot as soon as it starts, before the stop, so a disk that fills only at `stop` would no
longer fail the snapshot (its rest is small); filled before, the pre-copy fails, its copy
goes, and the snapshot step copies the whole database, which does not fit.
The playbook must then start 2.14.4 again on its untouched data and gate it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harbor_ops.core.errors import UpgradeRolledBack
from harbor_ops.upgrade.apply import ApplyResult, apply
from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return up.bundles(tmp_path_factory, OLD, NEW)


@pytest.fixture(scope="module")
def small_disk_host(testbed: TestBed, bundles: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Path, str]:
    host = testbed.reset("h1")
    host.exec("mkdir -p /data && mount -t tmpfs -o size=1g,mode=0755 harborctl-test-data /data")
    site_dir = tmp_path_factory.mktemp("site")
    return host, site_dir, up.install_with_rows(testbed, host, site_dir, bundles, OLD)


# What the fill leaves free: half the database. The snapshot's copy of it cannot fit, and
# whatever the copy wrote before ENOSPC comes back when the rollback drops the partial
# snapshot, so the old release starts with room to write (as on a real disk that filled
# up: nothing keeps writing there once Harbor is stopped). The fill is one fallocate, done
# at once: a fill still writing when the rollback frees that room (a slow `head -c` on a
# busy machine, while the window's stop now takes about a second) took it away again, and
# the old database could not start.
_FILL = ('db=$(du -sb /data/database | cut -f1); '
         'avail=$(df --output=avail -B1 /data | tail -1); '
         'fallocate -l $(( avail - db / 2 - 4096 )) /data/filler')


def _fill_before_the_window_opens(host: Host, done: threading.Event) -> None:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not done.is_set():
        if any(e["step"] == "count_rows" and e["event"] == "begin" for e in up.journal(host)):
            host.exec(_FILL)
            return
        time.sleep(0.05)  # the window's pre-copy must not have begun when the disk fills


@pytest.fixture(scope="module")
def failed(testbed: TestBed, small_disk_host: tuple[Host, Path, str],
           bundles: Path) -> ApplyResult:
    host, site_dir, _ = small_disk_host
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    done = threading.Event()
    filler = threading.Thread(target=_fill_before_the_window_opens, args=(host, done))
    filler.start()
    try:
        return apply(site, to=NEW, host=None, opts=up.opts(testbed, site_dir, bundles))
    finally:
        done.set()
        filler.join()


def test_a_full_disk_during_the_snapshot_is_rolled_back(
        failed: ApplyResult, small_disk_host: tuple[Host, Path, str]) -> None:
    host, _, before = small_disk_host
    assert isinstance(failed.error, UpgradeRolledBack), failed.error
    assert failed.error.exit_code == 11
    out = failed.hosts[0]
    assert (out.outcome, out.on_release) == ("rolled_back", OLD)
    assert "failed at snapshot" in out.message and "No space left" in out.message
    steps = [s["step"] for s in out.hops[0]["steps"]]
    assert steps[-2:] == ["rb_start", "rb_gate"] and "switch" not in steps


def test_the_old_release_serves_with_every_row(failed: ApplyResult,
                                               small_disk_host: tuple[Host, Path, str]) -> None:
    host, _, before = small_disk_host
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{OLD}"
    assert f"harbor-core:v{OLD}" in host.exec("docker ps --format '{{.Image}}'").stdout
    assert up.psql(host, up.COUNT_SQL) == before
    assert up.psql(host, "SELECT version, dirty FROM schema_migrations") == "171|f"
    assert host.exec("ls /data/database").stdout.split() == ["pg15"]
    assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""  # no partial left
    assert host.exec("test -e /var/lib/harborctl/upgrade.window", check=False).returncode != 0
