"""`backup verify` without postgresql-NN on the controller: the drill runs in Harbor's own
``harbor-db`` image on the Docker engine, which carries exactly the backup's major.

A real backup of the test module's PostgreSQL 15 is verified by ``harborctl backup verify``
as a user runs it, with ``HARBORCTL_PG_ROOT`` pointing at an empty folder (so no local server
binaries are found) and ``DOCKER_HOST`` at a private engine holding the bed bundle's images
(the 2.14.4 harbor-db runs real PostgreSQL 15). Without either: exit 14, nothing recorded.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from harbor_ops.backup.catalog import list_backups
from tests.bed.bundle import build_bundles
from tests.bed.dockerd import DockerEngine
from tests.integration.pgfixture import Cluster, HarborHost, backed_up_host

pytestmark = pytest.mark.integration

VERSION = "2.14.4"


@pytest.fixture(scope="module")
def engine(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
           ) -> DockerEngine:
    """The session's engine with Harbor's images loaded, as install.sh loads them."""
    out = tmp_path_factory.mktemp("drill-bundle")
    bundle = build_bundles((VERSION,), out)[VERSION]
    with tarfile.open(bundle) as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith(f"v{VERSION}.tar.gz"))
        images = out / "images.tar.gz"
        src = tgz.extractfile(member)
        assert src is not None
        images.write_bytes(src.read())
    docker_engine.run("load", "-i", str(images))
    return docker_engine


@pytest.fixture
def backup_site(cluster: Cluster, tmp_path: Path) -> tuple[HarborHost, Path]:
    site, _ = backed_up_host(cluster, tmp_path, "registry_img", artifacts=700,
                             parts=("data",), version=VERSION)
    (tmp_path / "no-postgresql").mkdir()
    return site, site.site_file(cluster, "registry_img")


def _leftovers(engine: DockerEngine) -> tuple[list[str], list[str]]:
    return (engine.run("ps", "-a", "--format", "{{.Names}}").stdout.split(),
            engine.run("volume", "ls", "-q").stdout.split())


def test_verify_drills_in_the_harbor_db_image(engine: DockerEngine,
                                              backup_site: tuple[HarborHost, Path]) -> None:
    site, config = backup_site
    before = _leftovers(engine)
    p = site.harborctl(config, "backup", "verify", "-o", "json",
                       HARBORCTL_PG_ROOT=str(site.root / "no-postgresql"), **engine.env)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["ok"] and result["restore_ok"]
    assert result["row_counts"] == {"project": 5, "repository": 20, "artifact": 700,
                                    "audit_log": 7}
    assert _leftovers(engine) == before  # container and its data volume are gone
    assert list_backups(site.backups)[0].verified is True


def test_no_postgresql_anywhere_is_exit_14_and_not_a_bad_backup(
        engine: DockerEngine, backup_site: tuple[HarborHost, Path], tmp_path: Path) -> None:
    site, config = backup_site
    empty = tmp_path / "empty-engine-socket"
    p = site.harborctl(config, "backup", "verify",
                       HARBORCTL_PG_ROOT=str(site.root / "no-postgresql"),
                       DOCKER_HOST=f"unix://{empty}")
    assert p.returncode == 14, p.stderr
    assert "harborctl: environment: no PostgreSQL 15 for the restore drill" in p.stderr
    assert "install postgresql-15" in p.stderr and "Traceback" not in p.stderr
    assert list_backups(site.backups)[0].verified is None  # nothing recorded


@pytest.mark.parametrize("step", ["starting a scratch PostgreSQL",
                                  "restoring the dump into the scratch cluster",
                                  "comparing row counts"])
def test_a_killed_drill_leaves_no_container_or_volume(
        step: str, engine: DockerEngine, backup_site: tuple[HarborHost, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import time

    from harbor_ops.backup.drill import verify_backup
    from harbor_ops.core.signals import Interrupted

    site, _config = backup_site
    monkeypatch.setenv("HARBORCTL_PG_ROOT", str(site.root / "no-postgresql"))
    monkeypatch.setenv("DOCKER_HOST", engine.env["DOCKER_HOST"])
    before = _leftovers(engine)

    def kill(message: str) -> None:
        if message.startswith(step):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises long before this ends

    with pytest.raises(Interrupted):
        verify_backup(path=list_backups(site.backups)[0].path, lock_path=site.lock,
                      progress=kill)
    assert _leftovers(engine) == before
    assert list_backups(site.backups)[0].verified is None


# A drill's container, as the drill opens it; says its name and waits to be killed.
CHILD = f"""
import time
from harbor_ops.backup.scratch import scratch_cluster
with scratch_cluster("15", harbor_version="{VERSION}") as scratch:
    print(scratch.admin.container, flush=True)
    time.sleep(300)
"""


def test_a_drill_container_a_kill_9_left_is_removed_by_the_next_drill(
        engine: DockerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess
    import sys

    from harbor_ops.backup import scratch

    (tmp_path / "no-postgresql").mkdir()
    monkeypatch.setenv("HARBORCTL_PG_ROOT", str(tmp_path / "no-postgresql"))
    monkeypatch.setenv("DOCKER_HOST", engine.env["DOCKER_HOST"])
    # Another controller's drill on a shared engine is never this machine's to remove.
    theirs = "harborctl-drill-" + "0" * 12
    engine.run("create", "--name", theirs, "--label",
               f"{scratch.OWNER_LABEL}=another-machine:boot:1:1", f"goharbor/harbor-db:v{VERSION}")
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    name = ""
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert scratch.DRILL_CONTAINER.fullmatch(name), name
        assert scratch._remove_dead_drills("docker") == []  # its drill still runs
        proc.kill()  # -9: no finally removes it
        proc.wait(timeout=30)
        assert name in _leftovers(engine)[0]
        assert scratch._remove_dead_drills("docker") == [name]
        assert _leftovers(engine)[0].count(name) == 0 and theirs in _leftovers(engine)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for left in (theirs, name):
            if left:
                engine.run("rm", "-f", "-v", left, check=False)
