"""Harbor comes back after a reboot on a host that has Compose v2 only (`docker compose`).

The host is a test-bed host whose Debian docker-compose v1 is removed and which gets the
`docker compose` CLI plugin Debian trixie ships (.ci/provision fetches it, pinned). It has
no systemd, so the boot path is the role's `@reboot` cron line: the test installs Harbor
with `harborctl install`, takes the compose project down as a reboot would leave it, runs
the cron line exactly as cron would at boot, and waits until Harbor is healthy again.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path

import pytest

from harbor_ops.core.errors import HarborctlError, LockHeld
from harbor_ops.core.lock import LOCK_ENV
from harbor_ops.install.run import install
from tests.bed._run import wait_for
from tests.bed.bundle.builder import build_bundle
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration.test_install import VERSION, write_site

pytestmark = pytest.mark.integration

PLUGIN = Path(os.environ.get("HARBORCTL_TESTBED_CACHE", "/var/cache/harborctl-testbed")) \
    / "compose-v2" / "docker-compose"
PLUGIN_DIR = "usr/libexec/docker/cli-plugins"


@pytest.fixture(scope="module")
def v2_only(testbed: TestBed) -> Host:
    """h4 with Compose v2 as its only Compose."""
    if not PLUGIN.is_file():
        unavailable(f"{PLUGIN} is missing (run .ci/provision)")
    host = testbed.reset("h4")
    (host.root_path / PLUGIN_DIR).mkdir(parents=True, exist_ok=True)
    (host.root_path / PLUGIN_DIR / "docker-compose").write_bytes(PLUGIN.read_bytes())
    (host.root_path / PLUGIN_DIR / "docker-compose").chmod(0o755)
    host.exec("rm -f /usr/bin/docker-compose")
    assert host.exec("docker compose version --short").stdout.strip() == "2.26.1-4"
    assert host.exec("command -v docker-compose", check=False).returncode != 0
    return host


def test_harbor_comes_back_after_a_reboot_with_compose_v2_only(
        v2_only: Host, testbed: TestBed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "controller.lock"))  # not this machine's jobs
    site = write_site(tmp_path, v2_only, testbed.client_key)
    bundle = build_bundle(VERSION, tmp_path / "bundle")

    # A harborctl job (a nightly backup) holds the host's job lock: install.sh must not run.
    v2_only.exec("flock -o /run/harborctl.lock sleep 600 >/dev/null 2>&1 & echo $! >/run/holder")
    try:
        # the holder runs in the background: install only once it really holds the lock
        wait_for(lambda: v2_only.exec("flock -n /run/harborctl.lock true",
                                      check=False).returncode != 0,
                 what="the background job to take h4's lock", timeout=120, interval=0.1)
        with pytest.raises(LockHeld, match="a harborctl job runs on a target host") as busy:
            install(site, bundle=bundle, log_dir=tmp_path / "logs",
                    ssh_config=testbed.ssh_config_path, timeout=900)
        assert "holds /run/harborctl.lock on h4" in str(busy.value)
        assert v2_only.exec("docker ps -aq").stdout.strip() == ""  # install.sh never ran
    finally:
        v2_only.exec("kill $(cat /run/holder)", check=False)

    try:
        install(site, bundle=bundle, log_dir=tmp_path / "logs",
                ssh_config=testbed.ssh_config_path, timeout=900)
    except HarborctlError as exc:  # say what the host shows
        raise AssertionError(f"{exc}\n{_why(v2_only)}") from exc
    cron = (v2_only.root_path / "etc/cron.d/harbor").read_text()
    line = re.search(r"^@reboot root (.+)$", cron, re.M)
    assert line is not None, cron
    assert "/usr/bin/docker compose -p harbor up -d" in line.group(1), line.group(1)
    # Starting cron during the install is no boot: its @reboot line did not run beside
    # install.sh's start (it used to, and recreated a harbor-core that was migrating).
    assert not (v2_only.root_path / "var/log/harbor-boot.log").exists()
    started = _containers(v2_only)

    # A boot where dockerd has already restarted the containers (restart: always): the line
    # finds the project as install.sh started it and recreates nothing.
    v2_only.exec(f"env -i PATH=/usr/bin:/bin /bin/sh -c {shlex.quote(line.group(1))}", timeout=300)
    assert _containers(v2_only) == started, (v2_only.root_path / "var/log/harbor-boot.log"
                                             ).read_text()

    # What a reboot leaves: no Harbor container running.
    v2_only.exec("cd /opt/harbor/harbor && docker compose -p harbor down", timeout=300)
    assert v2_only.exec("docker ps -q").stdout.strip() == ""
    assert not _healthy(v2_only)
    # Cron at boot: /bin/sh, cron's own PATH, the line as installed.
    v2_only.exec(f"env -i PATH=/usr/bin:/bin /bin/sh -c {shlex.quote(line.group(1))}", timeout=300)
    assert _wait_healthy(v2_only), _why(v2_only)
    boot_log = (v2_only.root_path / "var/log/harbor-boot.log").read_text()
    assert "docker-compose: not found" not in boot_log, boot_log


def _containers(host: Host) -> dict[str, str]:
    """Each container's name -> its id (a recreated container has a new id)."""
    out = host.exec("docker ps -a --format '{{.Names}} {{.ID}}'").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _healthy(host: Host) -> bool:
    """Harbor's health API as the host itself sees it (its loopback, its http port)."""
    probe = host.exec("python3 -c 'import json, urllib.request; "
                      "d = json.load(urllib.request.urlopen("
                      "\"http://127.0.0.1:8080/api/v2.0/health\", timeout=5)); "
                      "print(d[\"status\"])'", check=False, timeout=30)
    return probe.returncode == 0 and probe.stdout.strip() == "healthy"


def _why(host: Host) -> str:
    return host.exec("docker ps -a --format '{{.Names}} {{.Status}}'; "
                     "docker logs --tail 20 registry 2>&1; docker logs --tail 20 nginx 2>&1; "
                     "docker logs --tail 20 harbor-core 2>&1; cat /var/log/harbor-boot.log; "
                     "ls -la /var/run/crond.reboot /run/crond.reboot; ps -ef", check=False).stdout


def _wait_healthy(host: Host, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while not _healthy(host):
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return True
