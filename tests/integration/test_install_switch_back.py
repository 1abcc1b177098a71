"""A failed `harborctl install` of a new release leaves the host on the release before it.

Harbor 2.14.3 is installed on a fresh h1 with rows; then the operator installs the patch
release 2.14.4 over it with `harborctl install`, and 2.14.4's harbor-core never becomes
healthy (the double's ``core-unhealthy`` switch in ``/data/bed-faults``, mounted into the
new release's containers by its prepare). The health gate fails, the role's rescue
(playbooks/roles/harbor/tasks/release_back.yml) points ``/opt/harbor/harbor`` back at
``harbor-2.14.3``, and harborctl exits 9 saying where the link points. The boot path (cron's
``@reboot`` line on this host without systemd) then starts 2.14.3 again, healthy, with every
row: that is what the symlink is switched back for.

The gate's patience is the role's ``harbor_health_retries`` from the operator's inventory
(``install -i``): 1200 tries a quarter second apart by default, 80 here (20 s).
"""

from __future__ import annotations

import pytest

from harbor_ops.core.errors import HealthError
from harbor_ops.install.run import install
from tests.bed.hosts import Host, TestBed
from tests.bed.inventory import ansible_vars, inventory_ini_text, write_file
from tests.integration import upgradefixture as up
from tests.integration.harborwait import health_url, wait_healthy

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.3", "2.14.4"
GATE_TRIES, GATE_DELAY = 80, 0.25


def _release(host: Host) -> str:
    return host.exec("readlink /opt/harbor/harbor").stdout.strip()


def test_a_failed_health_gate_switches_the_release_back(
        testbed: TestBed, tmp_path_factory: pytest.TempPathFactory) -> None:
    bundles = up.bundles(tmp_path_factory, OLD, NEW)
    site_dir = tmp_path_factory.mktemp("site")
    host = testbed.reset("h1")
    counts = up.install_with_rows(testbed, host, site_dir, bundles, OLD)
    assert _release(host) == f"harbor-{OLD}"

    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    inventory = site_dir / "inventory.ini"
    write_file(inventory, inventory_ini_text([host], {
        **ansible_vars(ssh_config=testbed.ssh_config_path, client_key=testbed.client_key),
        "harbor_health_retries": GATE_TRIES, "harbor_health_delay": GATE_DELAY}))
    host.exec(f"mkdir -p /data/bed-faults && echo v{NEW} > /data/bed-faults/core-unhealthy")
    lines: list[str] = []
    # In-process, as the CLI calls it but without a controller schedule: whatever this run
    # does, it never writes into this machine's /etc.
    with pytest.raises(HealthError) as failed:
        install(site, bundle=bundles / f"harbor-offline-installer-v{NEW}.tgz",
                inventory=inventory, log_dir=site_dir / "logs", progress=lines.append,
                ssh_config=testbed.ssh_config_path, timeout=900)
    assert failed.value.exit_code == 9  # README's table: not healthy after an install
    message = str(failed.value)
    assert "Harbor did not become healthy" in message, message
    assert f"Harbor is not healthy after {GATE_TRIES * GATE_DELAY} s" in message, message
    assert f"the harbor symlink points at harbor-{OLD}" in message, message
    # 2.14.4 ran (install.sh loaded and started it) and the link is back on 2.14.3.
    assert host.exec(f"test -d /opt/harbor/harbor-{NEW}", check=False).returncode == 0
    assert _release(host) == f"harbor-{OLD}"
    assert any("h1: Point the harbor symlink back at the previous release ... changed" in line
               for line in lines), "\n".join(lines)

    # What the boot path runs, as root: it starts the release the link names.
    boot = host.exec("grep '^@reboot' /etc/cron.d/harbor").stdout.split(None, 2)[2]
    host.exec(boot, timeout=600)
    wait_healthy(health_url(host))
    images = host.exec("docker ps --format '{{.Names}} {{.Image}}'").stdout
    assert f"harbor-core goharbor/harbor-core:v{OLD}" in images, images
    assert f":v{NEW}" not in images, images
    assert up.psql(host, up.COUNT_SQL) == counts
