"""A hop that fails in its downtime window ends on the old release with every row (exit 11).

The fault here is real: the data disk fills up during the hop. The host's /data is a small
filesystem made for the test (tmpfs); Harbor 2.14.4 is installed on it with rows; `upgrade
apply` to 2.15.2 passes its refusals (the space is there), and when the host's journal says
the window began (`stop`), the test fills /data, so the snapshot's copy fails with ENOSPC.
The playbook must then start 2.14.4 again on its untouched data and gate it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.core.errors import UpgradeRolledBack
from harbor_ops.install.run import install
from harbor_ops.upgrade.apply import ApplyResult, apply
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed
from tests.integration.test_upgrade_apply import (
    COUNT_SQL,
    ROWS_SQL,
    _journal,
    _opts,
    _site_at,
    psql,
)

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"


@pytest.fixture(scope="module", autouse=True)
def private_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARBORCTL_LOCK_FILE", str(tmp_path_factory.mktemp("lock") / "harborctl.lock"))
        yield


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bundles")
    for v in (OLD, NEW):
        build_bundle(v, d)
    return d


@pytest.fixture(scope="module")
def small_disk_host(testbed: TestBed, bundles: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Path, str]:
    host = testbed.reset("h1")
    host.exec("mkdir -p /data && mount -t tmpfs -o size=1g,mode=0755 harborctl-test-data /data")
    site_dir = tmp_path_factory.mktemp("site")
    site = _site_at(site_dir, host, testbed.client_key, OLD)
    install(site, bundle=bundles / f"harbor-offline-installer-v{OLD}.tgz",
            log_dir=site_dir / "logs", ssh_config=testbed.ssh_config_path, timeout=900)
    host.exec("docker exec -i harbor-db psql -v ON_ERROR_STOP=1 -U postgres -d registry",
              input=ROWS_SQL.encode())
    return host, site_dir, psql(host, COUNT_SQL)


def _fill_when_the_window_opens(host: Host, done: threading.Event) -> None:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not done.is_set():
        if any(e["step"] == "stop" and e["event"] == "begin" for e in _journal(host)):
            host.exec("head -c $(( $(df --output=avail -B1 /data | tail -1) - 4096 )) "
                      "/dev/zero > /data/filler || true")
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def failed(testbed: TestBed, small_disk_host: tuple[Host, Path, str],
           bundles: Path) -> ApplyResult:
    host, site_dir, _ = small_disk_host
    site = _site_at(site_dir, host, testbed.client_key, NEW)
    done = threading.Event()
    filler = threading.Thread(target=_fill_when_the_window_opens, args=(host, done))
    filler.start()
    try:
        return apply(site, to=NEW, host=None, opts=_opts(testbed, site_dir, bundles))
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
    assert psql(host, COUNT_SQL) == before
    assert psql(host, "SELECT version, dirty FROM schema_migrations") == "171|f"
    assert host.exec("ls /data/database").stdout.split() == ["pg15"]
    assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""  # no partial left
    assert host.exec("test -e /var/lib/harborctl/upgrade.window", check=False).returncode != 0
