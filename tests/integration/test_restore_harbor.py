"""A restore onto a fresh host brings back every project, repository and row, and the secret key.

Site A is a Harbor-shaped install (its own ``install.sh``, real PostgreSQL in ``harbor-db``)
on the session's Docker engine, filled with projects, repositories, artifacts and audit rows.
``harborctl backup create`` and ``verify`` run as a user runs them (a subprocess whose
``DOCKER_HOST`` names A's engine). The fresh host is a second private Docker engine with its
own, empty data volume and install folder: the same Harbor installed there from the bundle
knows only ``library`` until ``harborctl backup restore`` stops it, restores database, secret
key and harbor.yml, starts it and waits for ``/api/v2.0/health``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harbor_ops.backup.manifest import sidecar_path
from harbor_ops.backup.restore import restore_backup
from harbor_ops.backup.sources import DockerExecSource
from harbor_ops.core.errors import BackupError
from harbor_ops.core.lock import LOCK_ENV
from tests.bed.bundle import build_bundles
from tests.bed.dockerd import DockerEngine
from tests.integration.test_bundle import ADMIN_PASSWORD, Harbor

pytestmark = pytest.mark.integration

VERSION = "2.14.4"
DB_PASSWORD = "root123"  # harbor.yml.tmpl's default; the backup never needs it (docker exec)
OLDER = "2.12.4"  # same PostgreSQL major (15), older schema: only the Harbor version misfits
# Every table the stand-in core creates, with the column that orders its rows.
TABLES = {"harbor_user": "user_id", "project": "project_id", "repository": "repository_id",
          "artifact": "id", "audit_log": "id", "schema_migrations": "version"}


@dataclass
class Site:
    """One Harbor install plus the harborctl site file that describes it."""

    harbor: Harbor
    config: Path
    backups: Path
    lock: Path

    def harborctl(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.harbor.engine.env, LOCK_ENV: str(self.lock),
               "TEST_HARBOR_ADMIN": ADMIN_PASSWORD, "TEST_HARBOR_DB": DB_PASSWORD}
        return subprocess.run([sys.executable, "-m", "harbor_ops.cli.main", *args,
                               "-c", str(self.config)], input=stdin, capture_output=True,
                              text=True, env=env, timeout=900, check=False)

    def rows(self) -> dict[str, list[str]]:
        """Every row of every Harbor table, as psql prints it: the full content, not counts."""
        return {t: self.harbor.sql(f"SELECT * FROM {t} ORDER BY {key}")
                for t, key in TABLES.items()}

    @property
    def secretkey(self) -> Path:
        return self.harbor.data / "secret/keys/secretkey"

    @property
    def harbor_yml(self) -> Path:
        assert self.harbor.install_dir is not None
        return self.harbor.install_dir / "harbor.yml"

    def started_at(self, container: str) -> str:
        return self.harbor.engine.run("inspect", "-f", "{{.State.StartedAt}}",
                                      container).stdout.strip()


def install_site(base: Path, engine: DockerEngine, bundle: Path, version: str) -> Site:
    """Install Harbor from its bundle the way a user does, and write its site file."""
    base.mkdir(parents=True, exist_ok=True)
    harbor = Harbor(base, engine)
    harbor.install(bundle)
    harbor.wait_healthy()
    assert harbor.install_dir is not None
    backups = base / "backups"
    config = base / "harborctl.yml"
    config.write_text(f"""\
harbor:
  version: {version}
  hostname: harbor.test
  http:
    port: {harbor.port}
  harbor_admin_password_env: TEST_HARBOR_ADMIN
  database:
    password_env: TEST_HARBOR_DB
  data_volume: {harbor.data}
  log:
    local:
      location: {harbor.logs}
backup:
  dir: {backups}
install:
  dir: {harbor.install_dir.parent}
""")
    return Site(harbor, config, backups, base / "harborctl.lock")


def fill(site: Site) -> None:
    """Projects, repositories, artifacts and audit rows beyond what a fresh Harbor has."""
    site.harbor.sql("""
        INSERT INTO project (owner_id, name)
          SELECT 1, 'team-' || i FROM generate_series(1, 12) AS i;
        INSERT INTO repository (name, project_id, description, pull_count)
          SELECT p.name || '/app-' || j, p.project_id, 'repo ' || j, j * 7
          FROM project p, generate_series(1, 5) AS j WHERE p.name LIKE 'team-%';
        INSERT INTO artifact (project_id, repository_id, repository_name, digest, size,
                              media_type, annotations)
          SELECT r.project_id, r.repository_id, r.name,
                 'sha256:' || encode(sha256(convert_to(r.name || '#' || k, 'UTF8')), 'hex'),
                 1000 * k, 'application/vnd.oci.image.manifest.v1+json',
                 jsonb_build_object('build', k)
          FROM repository r, generate_series(1, 4) AS k;
        INSERT INTO audit_log (project_id, operation, resource_type, resource, username)
          SELECT a.project_id, 'push', 'artifact', a.repository_name || '@' || a.digest, 'admin'
          FROM artifact a;
        INSERT INTO harbor_user (username, email, realname)
          VALUES ('dev-1', 'dev-1@harbor.test', 'Developer One');""")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_bundles((VERSION, OLDER), tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def site_a(tmp_path_factory: pytest.TempPathFactory, docker_engine: DockerEngine,
           bundles: dict[str, Path]) -> Iterator[Site]:
    site = install_site(tmp_path_factory.mktemp("site-a"), docker_engine, bundles[VERSION],
                        VERSION)
    yield site
    site.harbor.down()


@pytest.fixture(scope="module")
def fresh_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    """The fresh host: a Docker engine of its own, no images, no containers, no data."""
    engine = DockerEngine(tmp_path_factory.mktemp("fresh-engine"))
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def backup(site_a: Site) -> dict[str, object]:
    """A filled site A, backed up and verified with the CLI; what A held at that moment."""
    fill(site_a)
    rows = site_a.rows()
    assert len(rows["project"]) == 13 and len(rows["artifact"]) == 240
    created = site_a.harborctl("backup", "create", "-o", "json")
    assert created.returncode == 0, created.stderr
    name = json.loads(created.stdout)["name"]
    verified = site_a.harborctl("backup", "verify", name, "-o", "json")
    assert verified.returncode == 0, verified.stderr
    drill = json.loads(verified.stdout)
    assert drill["ok"] and drill["restore_ok"]
    assert drill["row_counts"]["artifact"] == 240 and drill["row_counts"]["audit_log"] == 240
    return {"name": name, "path": site_a.backups / name, "rows": rows,
            "secretkey": site_a.secretkey.read_bytes(),
            "harbor_yml": site_a.harbor_yml.read_bytes()}


def ship(backup: dict[str, object], site: Site) -> str:
    """Copy the backup (and its verify record) to the other host's backup folder."""
    path = backup["path"]
    assert isinstance(path, Path)
    site.backups.mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(path, site.backups / path.name)
    shutil.copy2(sidecar_path(path), sidecar_path(site.backups / path.name))
    return path.name


def test_restore_onto_a_fresh_host_brings_back_every_row_and_the_secret_key(
        tmp_path: Path, fresh_engine: DockerEngine, bundles: dict[str, Path],
        backup: dict[str, object]) -> None:
    site_b = install_site(tmp_path / "site-b", fresh_engine, bundles[VERSION], VERSION)
    try:
        fresh = site_b.rows()
        assert [r.split("|")[2] for r in fresh["project"]] == ["library"]
        assert fresh["repository"] == fresh["artifact"] == fresh["audit_log"] == []
        assert site_b.secretkey.read_bytes() != backup["secretkey"]
        name = ship(backup, site_b)

        # A wrong typed answer changes nothing: same rows, same key, Harbor never restarted.
        core_started = site_b.started_at("harbor-core")
        declined = site_b.harborctl("backup", "restore", name, stdin="yes\n")
        assert declined.returncode == 10, declined.stderr
        assert "restore not confirmed; nothing was changed" in declined.stderr
        assert site_b.rows() == fresh
        assert site_b.secretkey.read_bytes() != backup["secretkey"]
        assert site_b.started_at("harbor-core") == core_started

        restored = site_b.harborctl("backup", "restore", name, "--yes")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"restored {name} into container harbor-db, database registry" in restored.stdout
        assert "/api/v2.0/health (via 127.0.0.1) to report healthy" in restored.stderr
        status, body = site_b.harbor.get("/api/v2.0/health")
        assert status == 200 and json.loads(body)["status"] == "healthy"
        assert site_b.started_at("harbor-core") != core_started

        assert site_b.rows() == backup["rows"]
        assert site_b.secretkey.read_bytes() == backup["secretkey"]
        assert site_b.secretkey.stat().st_uid == 10000
        assert site_b.harbor_yml.read_bytes() == backup["harbor_yml"]
        # Sequences came back too: Harbor's next project does not collide with a restored one.
        new_id = site_b.harbor.sql("INSERT INTO project (owner_id, name) "
                                   "VALUES (1, 'after-restore') RETURNING project_id")[0]
        assert int(new_id) == 14
    finally:
        site_b.harbor.down()


def test_restore_refuses_a_backup_from_a_newer_harbor_and_touches_nothing(
        tmp_path: Path, fresh_engine: DockerEngine, bundles: dict[str, Path],
        backup: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    site_c = install_site(tmp_path / "site-c", fresh_engine, bundles[OLDER], OLDER)
    try:
        before = site_c.rows()
        key = site_c.secretkey.read_bytes()
        yml = site_c.harbor_yml.read_bytes()
        core_started = site_c.started_at("harbor-core")
        db_started = site_c.started_at("harbor-db")
        name = ship(backup, site_c)

        refused = site_c.harborctl("backup", "restore", name, "--yes")
        assert refused.returncode == 8, refused.stdout + refused.stderr
        assert (f"the backup is from Harbor {VERSION}, the installed Harbor {OLDER} is older "
                "(Harbor does not support downgrades)") in refused.stderr
        assert "--force-version" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert site_c.rows() == before
        assert site_c.secretkey.read_bytes() == key and site_c.harbor_yml.read_bytes() == yml
        assert (site_c.started_at("harbor-core"), site_c.started_at("harbor-db")) == (
            core_started, db_started)
        assert site_c.harbor.get("/api/v2.0/health")[0] == 200

        # Told to, it restores; Harbor 2.12's core then refuses the newer schema, the
        # health gate says so, and the previous data (from the safety backup taken first)
        # is put back: Harbor runs again on what it had, and the message says so.
        monkeypatch.setenv("DOCKER_HOST", fresh_engine.env["DOCKER_HOST"])
        assert site_c.harbor.install_dir is not None
        with pytest.raises(BackupError) as exc:
            restore_backup(path=site_c.backups / name, target=DockerExecSource(),
                           data_volume=site_c.harbor.data, harbor_yml=site_c.harbor_yml,
                           installed_version=OLDER, force_version=True,
                           harbor_dir=site_c.harbor.install_dir,
                           health_url=f"http://127.0.0.1:{site_c.harbor.port}/api/v2.0/health",
                           health_timeout=20, lock_path=site_c.lock,
                           safety_dir=site_c.backups, hostname="site-c")
        assert "was not healthy within 20 s" in str(exc.value)
        assert "Harbor is running on its previous data, put back from the safety backup " \
            "harbor-site-c-" in str(exc.value)
        assert site_c.rows() == before
        assert site_c.secretkey.read_bytes() == key and site_c.harbor_yml.read_bytes() == yml
        assert site_c.harbor.get("/api/v2.0/health")[0] == 200
    finally:
        site_c.harbor.down()
