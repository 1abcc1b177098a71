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
