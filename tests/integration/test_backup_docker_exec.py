"""An SSH host's backup, drill and restore when the tools cannot enter harbor-db directly.

harborctl runs pg_dump, psql and pg_restore in the host's ``harbor-db`` through ``nsenter``
(the container's namespaces, its own user), and through ``docker exec`` when that is not
possible. Here the fallback is forced the way a host really lacks it: ``nsenter`` is moved
off h1's PATH (its util-linux binary, put back afterwards). `backup create`, `verify` and
`restore --host` then run as a user runs them and must still succeed and say which way each
tool ran; the same backup with ``nsenter`` in place says ``nsenter``, so the report tells
the two apart. Harbor 2.15.2 with rows is installed once for the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up
from tests.integration.harborwait import health_url, wait_healthy

pytestmark = pytest.mark.integration

VERSION = "2.15.2"
NSENTER = "/usr/bin/nsenter"
AWAY = "/root/nsenter.away"  # off every PATH
FALLBACK = "docker exec (nsenter is not on the PATH)"


@pytest.fixture(scope="module")
def installed(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Host, Path, str]:
    """h1 on 2.15.2 with rows; its site file (backups under the site's folder) and counts."""
    host = testbed.reset("h1")
    site_dir = tmp_path_factory.mktemp("site")
    counts = up.install_with_rows(testbed, host, site_dir, up.bundles(tmp_path_factory,
                                                                      VERSION), VERSION)
    config = site_dir / "harborctl.yml"
    config.write_text(config.read_text() + f"backup:\n  dir: {site_dir / 'backups'}\n")
    return host, config, counts


def _harborctl(testbed: TestBed, config: Path, *args: str) -> dict[str, Any]:
    """harborctl as a user runs it, with -o json; its JSON (exit 0 asserted)."""
    proc = subprocess.run([str(Path(sys.executable).with_name("harborctl")), *args,
                           "-c", str(config), "--ssh-config", str(testbed.ssh_config_path),
                           "-o", "json"], capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@pytest.fixture
def no_nsenter(installed: tuple[Host, Path, str]) -> Iterator[Host]:
    """nsenter moved off h1's PATH for the test, then put back."""
    host = installed[0]
    host.exec(f"mv {NSENTER} {AWAY}")
    try:
        # what a root login over SSH finds (sshd's default PATH): nothing
        assert host.exec("command -v nsenter", check=False).returncode != 0
        yield host
    finally:
        host.exec(f"mv {AWAY} {NSENTER}")


def test_with_nsenter_the_backup_says_it_entered_harbor_db_directly(
        testbed: TestBed, installed: tuple[Host, Path, str]) -> None:
    _host, config, _counts = installed
    created = _harborctl(testbed, config, "backup", "create")
    assert created["db_access"] == {"pg_dump": "nsenter", "psql": "nsenter"}, created


def test_without_nsenter_backup_drill_and_restore_run_through_docker_exec_and_say_so(
        testbed: TestBed, installed: tuple[Host, Path, str], no_nsenter: Host) -> None:
    host, config, counts = installed
    created = _harborctl(testbed, config, "backup", "create")
    assert created["db_access"] == {"pg_dump": FALLBACK, "psql": FALLBACK}, created
    assert created["manifest"]["row_counts"]["artifact"] == int(counts.split("|")[2])
    verified = _harborctl(testbed, config, "backup", "verify", created["name"])
    assert verified["ok"] and verified["restore_ok"], verified
    assert verified["drilled_in"], verified  # where the scratch restore ran, said
    # Rows lost after the backup come back through pg_restore in harbor-db.
    up.psql(host, "DELETE FROM artifact WHERE id % 2 = 0")
    assert up.psql(host, up.COUNT_SQL) != counts
    restored = _harborctl(testbed, config, "backup", "restore", created["name"], "--yes")
    assert up.psql(host, up.COUNT_SQL) == counts
    # pg_restore and psql for the restore, pg_dump for its safety backup: all the fallback
    assert restored["db_access"] and set(restored["db_access"].values()) == {FALLBACK}, (
        restored)
    assert "pg_restore" in restored["db_access"]
    wait_healthy(health_url(host))
