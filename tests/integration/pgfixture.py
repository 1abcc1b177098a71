"""A real PostgreSQL 15 cluster for integration tests, and a Harbor host's files beside it.

The cluster listens on a unix socket (trust, for the test's own setup) and on 127.0.0.1
with scram passwords (what harborctl uses, as Harbor's ``external_database`` would be).
A test module wraps :func:`running_cluster` and :func:`make_harbor_host` in its own
fixtures; everything is stopped and deleted on exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harbor_ops.backup.engine import BackupResult, HostFiles, create_backup
from harbor_ops.backup.sources import ExternalSource
from harbor_ops.core.lock import LOCK_ENV
from tests.bed.fixtures import unavailable
from tests.bed.network import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "s3cret-test-pw"  # test-only credential of a throw-away cluster
ADMIN_PASSWORD = "admin-test"  # test-only


def available() -> str | None:
    """Why the cluster cannot run here, or None."""
    if not (PG_BIN / "initdb").exists():
        return "needs PostgreSQL 15 server binaries"
    if os.geteuid() != 0:
        return "needs root (runuser postgres)"
    return None


def _pg(*argv: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], input=input, text=True,
                          capture_output=True, timeout=300, check=False, cwd="/")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr}")
    return proc.stdout




@dataclass
class Cluster:
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def start(self) -> None:
        _pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
            "-w", "-t", "60", "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start")

    def stop(self, mode: str = "fast") -> None:
        _pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
            check=False)

    def sql(self, sql: str, db: str = "postgres") -> str:
        return _pg(str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                   "-h", str(self.folder), "-p", str(self.port), "-d", db, input=sql)

    def source(self, db: str, **kw: Any) -> ExternalSource:
        """How harborctl reaches ``db``: TCP and a scram password; ``kw`` overrides fields."""
        fields: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "user": "harbor",
                                  "dbname": db, "password": PASSWORD}
        return ExternalSource(**{**fields, **kw})

    def harbor_db(self, db: str, *, artifacts: int = 200, pad: int = 0) -> dict[str, int]:
        """A Harbor-shaped database; returns its row counts."""
        self.sql(f'DROP DATABASE IF EXISTS "{db}"; CREATE DATABASE "{db}" OWNER harbor;')
        self.sql(f"""
            SET ROLE harbor;
            CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY,
                                            dirty boolean NOT NULL);
            INSERT INTO schema_migrations VALUES (171, false);
            CREATE TABLE project (project_id serial PRIMARY KEY, name text UNIQUE,
                                  creation_time timestamp DEFAULT now());
            CREATE TABLE repository (repository_id serial PRIMARY KEY,
                                     project_id int REFERENCES project, name text);
            CREATE TABLE artifact (id serial PRIMARY KEY, repository_id int REFERENCES
                                   repository, digest text, extra_attrs jsonb, pad bytea);
            CREATE INDEX ON artifact (digest);
            CREATE TABLE audit_log (id serial PRIMARY KEY, op text);
            INSERT INTO project (name) SELECT 'p' || g FROM generate_series(1, 5) g;
            INSERT INTO repository (project_id, name)
                SELECT 1 + g % 5, 'r' || g FROM generate_series(1, 20) g;
            INSERT INTO artifact (repository_id, digest, extra_attrs, pad)
                SELECT 1 + g % 20, 'sha256:' || md5(g::text), jsonb_build_object('n', g),
                       CASE WHEN {pad} > 0 THEN
                         (SELECT decode(string_agg(md5(g::text || x::text), ''), 'hex')
                          FROM generate_series(1, {pad}) x) END
                FROM generate_series(1, {artifacts}) g;
            INSERT INTO audit_log (op) SELECT 'push' FROM generate_series(1, 7);
        """, db)
        return {"project": 5, "repository": 20, "artifact": artifacts, "audit_log": 7}

    def counts(self, db: str) -> dict[str, int]:
        """Row counts of the tables :meth:`harbor_db` fills, as they are now."""
        return {t: int(self.sql(f"SELECT count(*) FROM {t}", db).strip())
                for t in ("project", "repository", "artifact", "audit_log")}


@contextmanager
def running_cluster() -> Iterator[Cluster]:
    """initdb + start a private cluster; stopped and deleted on exit."""
    reason = available()
    if reason:
        unavailable(reason)
    # Not under pytest's tmp dir: that one is 0700 root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="harborctl-test-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    c = Cluster(folder, free_port())
    try:
        _pg(str(PG_BIN / "initdb"), "-D", str(c.data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        c.start()
        c.sql(f"CREATE ROLE harbor LOGIN CREATEDB PASSWORD '{PASSWORD}';")
        yield c
    finally:
        c.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


HOST_PARTS = ("data", "yml", "cert")


@dataclass
class HarborHost:
    """A Harbor host's files: data_volume with the secret key, harbor.yml, a certificate."""

    root: Path
    data: Path
    yml: Path
    cert: Path
    lock: Path
    backups: Path

    def site_file(self, cluster: Cluster, db: str, *, extra: str = "",
                  backups: Path | None = None) -> Path:
        """A site file whose harbor uses ``db`` on ``cluster`` as its external database."""
        site = self.root / "harborctl.yml"
        site.write_text(f"""
harbor:
  version: 2.14.4
  hostname: harbor.test.internal
  http:
    port: {free_port()}
  harbor_admin_password_env: TEST_HARBOR_ADMIN
  data_volume: {self.data}
  log:
    local:
      location: {self.root / "logs"}
  external_database:
    harbor:
      host: 127.0.0.1
      port: {cluster.port}
      db_name: {db}
      username: harbor
      password_env: TEST_HARBOR_DB
      ssl_mode: disable
backup:
  dir: {backups or self.backups}
  jitter_minutes: 0
install:
  dir: {self.yml.parent.parent}
  bundle_dir: {self.root / "bundles"}
{extra}""")
        return site

    def backup(self, cluster: Cluster, db: str, *, parts: tuple[str, ...] = HOST_PARTS,
               hostname: str = "hb", version: str = "2.14.4", **kw: Any) -> BackupResult:
        """A real backup of ``db`` on ``cluster`` with this host's files named in ``parts``
        (``data``: the data volume, ``yml``: harbor.yml, ``cert``: the certificate)."""
        unknown = set(parts) - set(HOST_PARTS)
        assert not unknown, f"unknown host parts {sorted(unknown)}"
        files = HostFiles(data_volume=self.data if "data" in parts else None,
                          harbor_yml=self.yml if "yml" in parts else None,
                          certificates=(self.cert,) if "cert" in parts else ())
        return create_backup(backup_dir=self.backups, source=cluster.source(db), files=files,
                             harbor_version=version, hostname=hostname, lock_path=self.lock,
                             **kw)

    def env(self, **more: str) -> dict[str, str]:
        return {**os.environ, LOCK_ENV: str(self.lock), "TEST_HARBOR_DB": PASSWORD,
                "TEST_HARBOR_ADMIN": ADMIN_PASSWORD, **more}

    def harborctl(self, site: Path, *args: str, timeout: float = 300,
                  **env: str) -> subprocess.CompletedProcess[str]:
        """``harborctl <args> --config site`` in a child process, as a user runs it."""
        return subprocess.run([sys.executable, "-m", "harbor_ops.cli.main", *args,
                               "--config", str(site)], env=self.env(**env), text=True,
                              capture_output=True, timeout=timeout, check=False)


def make_harbor_host(tmp_path: Path) -> HarborHost:
    data = tmp_path / "data"
    (data / "secret" / "keys").mkdir(parents=True)
    key = data / "secret" / "keys" / "secretkey"
    key.write_bytes(os.urandom(16).hex().encode())
    key.chmod(0o600)
    (data / "secret" / "core").mkdir()
    (data / "secret" / "core" / "private_key.pem").write_text("not-a-real-key\n")
    yml = tmp_path / "harbor" / "harbor.yml"
    yml.parent.mkdir()
    yml.write_text("hostname: harbor.test.internal\n_version: 2.14.4\n")
    cert = tmp_path / "tls" / "harbor.crt"
    cert.parent.mkdir()
    cert.write_text("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "bundles").mkdir()
    return HarborHost(tmp_path, data, yml, cert, tmp_path / "harborctl.lock",
                      tmp_path / "backups")


def backed_up_host(cluster: Cluster, folder: Path, db: str, *, artifacts: int, pad: int = 0,
                   secret_key: bytes | None = None, **backup: Any) -> tuple[HarborHost,
                                                                           BackupResult]:
    """A Harbor host's files in ``folder`` (``secret_key`` replacing its random one), a
    fresh Harbor-shaped database ``db``, and one real backup of both
    (``backup``: :meth:`HarborHost.backup`'s options)."""
    host = make_harbor_host(folder)
    if secret_key is not None:
        (host.data / "secret" / "keys" / "secretkey").write_bytes(secret_key)
    cluster.harbor_db(db, artifacts=artifacts, pad=pad)
    return host, host.backup(cluster, db, **backup)


@contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (created), unmounted on exit."""
    folder.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
