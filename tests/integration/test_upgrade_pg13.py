"""`harborctl upgrade apply` 2.6.4 -> 2.10.3 with data on a test-bed host: PostgreSQL 13 -> 14.

The planned path is two hops: 2.8.6 (Harbor's two-minor rule; its harbor-db uses the pg13
layout as it is) and 2.10.3, whose harbor-db converts pg13 to pg14 with a real pg_upgrade
(bullseye's 13, PyPI's 14). The host gets 2.6.4 through `harborctl install`, rows in
Harbor's key tables and a pushed image; after the upgrade every row and the image are there,
`schema_migrations` is at 2.10's version and clean, only ``pg14`` is left (uid 999, 0700),
and a second `apply` does nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.backup.archive import read_manifest
from harbor_ops.backup.manifest import VERIFIED_SUFFIX
from harbor_ops.install.run import install
from harbor_ops.upgrade.apply import ApplyResult, apply
from tests.bed.bundle.builder import build_bundles
from tests.bed.dockerd import DockerEngine
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration.test_upgrade_apply import _auth, _push
from tests.integration.upgradefixture import COUNT_SQL, ROWS_SQL, opts, psql, site_at

pytestmark = pytest.mark.integration

OLD, NEW = "2.6.4", "2.10.3"
STOPS = ("2.8.6", "2.10.3")


@pytest.fixture(scope="module", autouse=True)
def private_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARBORCTL_LOCK_FILE", str(tmp_path_factory.mktemp("lock") / "harborctl.lock"))
        yield


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bundles")
    build_bundles((OLD, *STOPS), d)  # one engine for whatever the cache lacks
    return d


@pytest.fixture(scope="module", autouse=True)
def drill_engine(docker_engine: DockerEngine, bundles: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Both hops' backups (of 2.6.4 and of 2.8.6) hold PostgreSQL 13, which this machine
    lacks: harborctl drills them in a harbor-db image of PostgreSQL 13 on DOCKER_HOST's
    engine (the backup's own release's image first, else any of that major). 2.6.4's
    serves both; loading one release's images instead of two saves ~15 s."""
    out = tmp_path_factory.mktemp("drill-images")
    with tarfile.open(bundles / f"harbor-offline-installer-v{OLD}.tgz") as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith(f"v{OLD}.tar.gz"))
        src = tgz.extractfile(member)
        assert src is not None
        with open(out / "images.tar.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    docker_engine.run("load", "-i", str(out / "images.tar.gz"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_HOST", docker_engine.env["DOCKER_HOST"])
        yield


@pytest.fixture(scope="module")
def installed(testbed: TestBed, bundles: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Path, str]:
    host = testbed.reset("h1")
    site_dir = tmp_path_factory.mktemp("site")
    site = site_at(site_dir, host, testbed.client_key, OLD)
    install(site, bundle=bundles / f"harbor-offline-installer-v{OLD}.tgz",
            log_dir=site_dir / "logs", ssh_config=testbed.ssh_config_path, timeout=900)
    # Where 2.6.4 stands before the upgrade: real PostgreSQL 13 in pg13, schema 91, clean.
    assert host.exec("ls /data/database").stdout.split() == ["pg13"]
    assert psql(host, "SHOW server_version_num")[:2] == "13"
    assert psql(host, "SELECT version, dirty FROM schema_migrations") == "91|f"
    host.exec("docker exec -i harbor-db psql -v ON_ERROR_STOP=1 -U postgres -d registry",
              input=ROWS_SQL.encode())
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed (run .ci/provision)")
    _push(host, site_dir)
    return host, site_dir, psql(host, COUNT_SQL)


@pytest.fixture(scope="module")
def upgraded(testbed: TestBed, installed: tuple[Host, Path, str], bundles: Path) -> ApplyResult:
    host, site_dir, _ = installed
    site = site_at(site_dir, host, testbed.client_key, NEW)
    # Each step's line with its duration (pytest shows them when a test fails).
    return apply(site, to=NEW, host=None, opts=opts(testbed, site_dir, bundles),
                 progress=lambda line: print(line, flush=True))


def test_two_hops_the_second_converts_13_to_14(upgraded: ApplyResult,
                                               installed: tuple[Host, Path, str]) -> None:
    assert upgraded.error is None, upgraded.error
    out = upgraded.hosts[0]
    assert (out.outcome, out.on_release) == ("done", NEW)
    assert [(h["from"], h["to"], h["outcome"]) for h in out.hops] == [
        (OLD, "2.8.6", "done"), ("2.8.6", NEW, "done")]
    plan = out.plan.to_dict()["hops"]
    assert [(h["data_layout"]["before"], h["data_layout"]["after"], h["db_outcome"])
            for h in plan] == [("pg13", "pg13", "use"), ("pg13", "pg14", "convert")]
    host = installed[0]
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{NEW}"
    assert f"harbor-core:v{NEW}" in host.exec("docker ps --format '{{.Image}}'").stdout


def test_every_row_survives_and_the_schema_matches(upgraded: ApplyResult,
                                                   installed: tuple[Host, Path, str]) -> None:
    host, _, before = installed
    assert psql(host, COUNT_SQL) == before
    assert psql(host, "SELECT version, dirty FROM schema_migrations") == "130|f"
    assert psql(host, "SHOW server_version_num")[:2] == "14"
    assert host.exec("ls /data/database").stdout.split() == ["pg14"]
    assert host.exec("stat -c '%u %a' /data/database/pg14").stdout.strip() == "999 700"


def test_the_pushed_image_can_be_pulled(upgraded: ApplyResult, installed: tuple[Host, Path, str],
                                        tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed (run .ci/provision)")
    host = installed[0]
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--authfile",
                    str(_auth(host, tmp_path)), f"docker://{host.address}:80/library/hello:v1",
                    f"dir:{tmp_path / 'pulled'}"], check=True, timeout=120)
    assert (tmp_path / "pulled" / "manifest.json").is_file()


def test_a_second_apply_does_nothing(testbed: TestBed, installed: tuple[Host, Path, str],
                                     upgraded: ApplyResult, bundles: Path) -> None:
    host, site_dir, before = installed
    started = "docker inspect -f '{{.State.StartedAt}}' harbor-db harbor-core"
    was = host.exec(started).stdout
    site = site_at(site_dir, host, testbed.client_key, NEW)
    again = apply(site, to=NEW, host=None, opts=opts(testbed, site_dir, bundles))
    assert again.error is None and again.hosts[0].outcome == "up_to_date"
    assert again.hosts[0].hops == []
    assert host.exec(started).stdout == was  # not even restarted
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{NEW}"
    assert psql(host, COUNT_SQL) == before


def test_each_hop_had_a_drilled_postgresql_13_backup(upgraded: ApplyResult,
                                                     installed: tuple[Host, Path, str]) -> None:
    """Both hops start from pg13: each backup holds PostgreSQL 13 at its release's schema and
    passed a real restore drill in a PostgreSQL 13 (harbor-db's image: the controller has no
    13 of its own)."""
    _, site_dir, _ = installed
    backups = sorted((site_dir / "backups" / "h1").glob("harbor-h1-*.hbk"))
    manifests = [read_manifest(b) for b in backups]
    assert [(m.harbor_version, m.pg_major, m.schema_version) for m in manifests] == [
        (OLD, "13", 91), ("2.8.6", "13", 111)]
    for backup in backups:
        drill = json.loads(Path(f"{backup}{VERIFIED_SUFFIX}").read_text())
        assert drill["ok"] and drill["restore_ok"], drill
