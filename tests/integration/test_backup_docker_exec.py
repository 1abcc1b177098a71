"""An SSH host's backup, drill and restore when the tools cannot enter harbor-db directly.

harborctl runs pg_dump, psql and pg_restore in the host's ``harbor-db`` through ``nsenter``
(the container's namespaces, its own user), and through ``docker exec`` when that is not
possible. Here the fallback is forced the way a host really lacks it: ``nsenter`` is moved
off h1's PATH (its util-linux binary, put back afterwards). `backup create`, `verify` and
`restore --host` then run as a user runs them and must still succeed and say which way each
tool ran; the same backup with ``nsenter`` in place says ``nsenter``, so the report tells
the two apart. Last, a restore over SSH stopped by SIGTERM after it swapped the files in
must undo itself on the host as on this machine: a folder that was not there before (here
``/data/redis``) goes again. Harbor 2.15.2 with rows is installed once for the module.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
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
    config.write_text(config.read_text()
                      + f"backup:\n  dir: {site_dir / 'backups'}\n  include_redis: true\n")
    return host, config, counts


def _argv(testbed: TestBed, config: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("harborctl")), *args, "-c", str(config),
            "--ssh-config", str(testbed.ssh_config_path)]


def _harborctl(testbed: TestBed, config: Path, *args: str) -> dict[str, Any]:
    """harborctl as a user runs it, with -o json; its JSON (exit 0 asserted)."""
    proc = subprocess.run([*_argv(testbed, config, *args), "-o", "json"], capture_output=True,
                          text=True, timeout=900, check=False)
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


# Harbor's port, dropped where the controller's packets enter h1 (before Docker's DNAT), so
# the restore's health wait cannot end while the test holds it.
HOLD_HEALTH = "PREROUTING -i eth0 -p tcp --dport 8080 -j DROP"


def _raw(host: Host, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", host.netns, "iptables", "-t", "raw", action,
                           *HOLD_HEALTH.split()], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("at", ["starting Harbor", "to report healthy"])
def test_a_restore_stopped_after_the_swap_removes_on_the_host_what_was_not_there(
        testbed: TestBed, installed: tuple[Host, Path, str], tmp_path: Path, at: str) -> None:
    """SIGTERM after the files were swapped in: while `compose up` runs on the host (its
    way back must wait for it: a `compose down` beside it failed, "a person is needed"),
    or while harborctl waits for Harbor (held by dropping the controller's packets to
    Harbor's port, released right after the signal). Exit 8, the database back from the
    safety backup, Harbor healthy, and /data/redis, absent before the restore and swapped
    in by it, removed again (the undo over SFTP used to leave it; Harbor's start then
    makes an empty one)."""
    host, config, _counts = installed
    created = _harborctl(testbed, config, "backup", "create")
    assert "data_volume/redis" in {f["arcname"] for f in created["manifest"]["files"]}
    host.exec("rm -rf /data/redis")
    up.psql(host, "DELETE FROM artifact WHERE id % 3 = 0")
    before = up.psql(host, up.COUNT_SQL)
    err = tmp_path / "restore.err"
    held = _raw(host, "-I")
    assert held.returncode == 0, held.stderr
    try:
        with open(err, "wb") as out:
            proc = subprocess.Popen(_argv(testbed, config, "backup", "restore",
                                          created["name"], "--yes"),
                                    stdout=subprocess.DEVNULL, stderr=out)
            try:
                deadline = time.monotonic() + 600
                while proc.poll() is None and time.monotonic() < deadline:
                    if at in err.read_text():
                        proc.send_signal(signal.SIGTERM)
                        break
                    time.sleep(0.05)
            finally:
                _raw(host, "-D")
                held = None
            code = proc.wait(timeout=600)
    finally:
        if held is not None:
            _raw(host, "-D")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert code == 8, text[-3000:]
    assert "restoring host files" in text and "put back from the safety backup" in text, text
    # The restored folder (harbor-db's uid 999, as saved) is gone: what is there now is the
    # empty one Docker makes (root's) for a bind mount whose source is missing.
    assert host.exec("stat -c '%u' /data/redis; ls -A /data/redis").stdout.split() == ["0"], (
        text[-2000:])
    assert up.psql(host, up.COUNT_SQL) == before
    assert host.exec("ls -a /data | grep harborctl", check=False).stdout == ""  # no twins
    wait_healthy(health_url(host))
