"""harborctl backup against a real PostgreSQL 15 cluster started for the test module.

The cluster listens on a unix socket (trust, for the test's own setup) and on
127.0.0.1 with scram passwords (the ExternalSource under test, as Harbor's
external_database would be). Everything is stopped and deleted in finalizers.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harbor_ops.backup import archive
from harbor_ops.backup.catalog import list_backups, prune_backups
from harbor_ops.backup.engine import HostFiles, create_backup
from harbor_ops.backup.lock import LOCK_ENV, job_lock
from harbor_ops.backup.manifest import PARTIAL_SUFFIX, read_sidecar
from harbor_ops.backup.restore import restore_backup, verify_backup
from harbor_ops.backup.sources import ExternalSource
from harbor_ops.errors import BackupError, LockHeld
from harbor_ops.site_model import Keep

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "s3cret-test-pw"  # test-only credential of a throw-away cluster

if not (PG_BIN / "initdb").exists() or os.geteuid() != 0:
    pytest.skip("needs PostgreSQL 15 server binaries and root (runuser postgres)",
                allow_module_level=True)


def _pg(*argv: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], input=input, text=True,
                          capture_output=True, timeout=300, check=False, cwd="/")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr}")
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    folder: Path
    port: int

    def sql(self, sql: str, db: str = "postgres") -> str:
        return _pg(str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                   "-h", str(self.folder), "-p", str(self.port), "-d", db, input=sql)

    def source(self, db: str, **kw: object) -> ExternalSource:
        return ExternalSource(host="127.0.0.1", port=self.port, user="harbor", dbname=db,
                              password=PASSWORD, **kw)  # type: ignore[arg-type]

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
        out = {}
        for t in ("project", "repository", "artifact", "audit_log"):
            out[t] = int(self.sql(f"SELECT count(*) FROM {t}", db).strip())
        return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Not under pytest's tmp dir: that one is 0700 root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="harborctl-test-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    data = folder / "data"
    _pg(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
    _pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        c = Cluster(folder, port)
        c.sql(f"CREATE ROLE harbor LOGIN CREATEDB PASSWORD '{PASSWORD}';")
        yield c
    finally:
        _pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop",
            check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    """A Harbor host's files: data_volume with the secret key, harbor.yml, a certificate."""
    data = tmp_path / "data"
    (data / "secret" / "keys").mkdir(parents=True)
    key = data / "secret" / "keys" / "secretkey"
    key.write_bytes(os.urandom(16).hex().encode())
    key.chmod(0o600)
    (data / "secret" / "core").mkdir()
    (data / "secret" / "core" / "private_key.pem").write_text("not-a-real-key\n")
    yml = tmp_path / "harbor" / "harbor.yml"
    yml.parent.mkdir()
    yml.write_text("hostname: harbor.test.internal\n_version: 2.14.0\n")
    cert = tmp_path / "tls" / "harbor.crt"
    cert.parent.mkdir()
    cert.write_text("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    return {"data": data, "yml": yml, "cert": cert, "lock": tmp_path / "harborctl.lock",
            "backups": tmp_path / "backups", "root": tmp_path}


def _files(host: dict[str, Path]) -> HostFiles:
    return HostFiles(data_volume=host["data"], harbor_yml=host["yml"],
                     certificates=(host["cert"],))


def _create(cluster: Cluster, host: dict[str, Path], db: str, **kw: object):  # type: ignore[no-untyped-def]
    return create_backup(backup_dir=host["backups"], source=cluster.source(db),
                         files=_files(host), harbor_version="2.14.4", hostname="hb",
                         lock_path=host["lock"], **kw)  # type: ignore[arg-type]


def test_create_list_verify_restore_round_trip(cluster: Cluster, host: dict[str, Path]) -> None:
    expected = cluster.harbor_db("registry_rt", artifacts=500)
    result = _create(cluster, host, "registry_rt")
    m = result.manifest
    assert m.row_counts == {**expected}
    assert (m.pg_major, m.schema_version, m.schema_dirty) == ("15", 171, False)
    assert m.harbor_version == "2.14.4" and m.source_kind == "external"
    assert PASSWORD not in result.path.read_bytes().decode(errors="replace")
    assert result.path.stat().st_mode & 0o777 == 0o600
    assert host["backups"].stat().st_mode & 0o777 == 0o700
    assert [n for n in os.listdir(host["backups"])] == [result.name]

    listed = list_backups(host["backups"])
    assert [e.name for e in listed] == [result.name] and listed[0].verified is None

    v = verify_backup(path=result.path, lock_path=host["lock"])
    assert v.ok and v.row_counts == expected
    assert list_backups(host["backups"])[0].verified is True

    cluster.sql('DROP DATABASE IF EXISTS "restored"; CREATE DATABASE "restored" OWNER harbor;')
    target_data = host["root"] / "newhost" / "data"
    target_yml = host["root"] / "newhost" / "harbor.yml"
    r = restore_backup(path=result.path, target=cluster.source("restored"),
                       data_volume=target_data, harbor_yml=target_yml,
                       restore_certificates=False, installed_version="2.14.4",
                       lock_path=host["lock"])
    assert r.row_counts == expected == cluster.counts("restored")
    assert (target_data / "secret/keys/secretkey").read_bytes() == \
        (host["data"] / "secret/keys/secretkey").read_bytes()
    assert (target_data / "secret/keys/secretkey").stat().st_mode & 0o777 == 0o600
    assert target_yml.read_text() == host["yml"].read_text()

    # restoring again over the restored database is idempotent (--clean, one transaction)
    restore_backup(path=result.path, target=cluster.source("restored"),
                   installed_version="2.14.4", lock_path=host["lock"])
    assert cluster.counts("restored") == expected


def test_version_misfit_is_refused_unless_forced(cluster: Cluster, host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_v", artifacts=10)
    b = _create(cluster, host, "registry_v")
    with pytest.raises(BackupError, match="older"):
        restore_backup(path=b.path, target=cluster.source("registry_v"),
                       installed_version="2.13.5", lock_path=host["lock"])
    r = restore_backup(path=b.path, target=cluster.source("registry_v"),
                       installed_version="2.13.5", force_version=True, lock_path=host["lock"])
    assert any("older" in w for w in r.warnings)


def test_flipped_byte_fails_verify_and_restore_refuses(cluster: Cluster,
                                                       host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_c", artifacts=300)
    b = _create(cluster, host, "registry_c")
    with open(b.path, "r+b") as f:
        f.seek(512 + b.manifest.members[0].size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(BackupError, match="SHA-256"):
        verify_backup(path=b.path, lock_path=host["lock"])
    assert read_sidecar(b.path)["ok"] is False  # type: ignore[index]
    assert list_backups(host["backups"])[0].verified is False
    with pytest.raises(BackupError, match="refusing"):
        restore_backup(path=b.path, target=cluster.source("registry_c"),
                       installed_version="2.14.4", lock_path=host["lock"])
    assert cluster.counts("registry_c")["artifact"] == 300


def test_second_job_is_refused_with_lock_held(cluster: Cluster, host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_l", artifacts=10)
    with job_lock(host["lock"], job="upgrade apply"), pytest.raises(LockHeld, match="upgrade"):
        _create(cluster, host, "registry_l")
    assert LockHeld.exit_code == 7
    _create(cluster, host, "registry_l")  # the lock is free again


def test_database_down_is_a_clear_error(cluster: Cluster, host: dict[str, Path]) -> None:
    src = ExternalSource(host="127.0.0.1", port=_free_port(), user="harbor",
                         dbname="registry", password=PASSWORD)
    with pytest.raises(BackupError, match="Connection refused|connection to server"):
        create_backup(backup_dir=host["backups"], source=src, files=_files(host),
                      harbor_version="2.14.4", lock_path=host["lock"])
    assert not [p for p in host["backups"].iterdir()]


def test_wrong_password_is_a_clear_error_without_the_password(cluster: Cluster,
                                                              host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_pw", artifacts=1)
    src = ExternalSource(host="127.0.0.1", port=cluster.port, user="harbor",
                         dbname="registry_pw", password="wrong-" + PASSWORD)
    with pytest.raises(BackupError, match="password authentication failed") as exc:
        create_backup(backup_dir=host["backups"], source=src, files=_files(host),
                      harbor_version="2.14.4", lock_path=host["lock"])
    assert PASSWORD not in str(exc.value)


def test_missing_secret_key_is_refused(cluster: Cluster, host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_k", artifacts=1)
    (host["data"] / "secret/keys/secretkey").unlink()
    with pytest.raises(BackupError, match="secretkey"):
        _create(cluster, host, "registry_k")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_backup_folder(cluster: Cluster, host: dict[str, Path], small_fs: Path) -> None:
    host["backups"] = small_fs / "backups"
    cluster.harbor_db("registry_small", artifacts=50)
    older = _create(cluster, host, "registry_small", reserve_bytes=0)
    cluster.harbor_db("registry_big", artifacts=40000, pad=16)  # 10 MB of random bytes
    # refused up front: the estimate does not fit
    with pytest.raises(BackupError, match="not enough free space"):
        _create(cluster, host, "registry_big", reserve_bytes=0)
    # the estimate is fooled: the filesystem fills during the dump
    with pytest.raises(BackupError, match="ran out of space|not enough"):
        _create(cluster, host, "registry_big", reserve_bytes=0, estimate_ratio=0.0)
    assert sorted(os.listdir(host["backups"])) == [older.name]
    # the space guard stops before the filesystem is completely full
    with pytest.raises(BackupError, match="ran out of space"):
        _create(cluster, host, "registry_big", reserve_bytes=1 << 20, estimate_ratio=0.0)
    assert sorted(os.listdir(host["backups"])) == [older.name]
    assert verify_backup(path=older.path, lock_path=host["lock"]).ok


def _site_file(cluster: Cluster, host: dict[str, Path], db: str) -> Path:
    site = host["root"] / "harborctl.yml"
    site.write_text(f"""
harbor:
  version: 2.14.4
  hostname: harbor.test.internal
  http:
    port: 8080
  harbor_admin_password_env: TEST_HARBOR_ADMIN
  data_volume: {host["data"]}
  external_database:
    harbor:
      host: 127.0.0.1
      port: {cluster.port}
      db_name: {db}
      username: harbor
      password_env: TEST_HARBOR_DB
      ssl_mode: disable
backup:
  dir: {host["backups"]}
install:
  dir: {host["yml"].parent.parent}
""")
    return site


def _harborctl(site: Path, lock: Path, *args: str, **kw: object) -> subprocess.Popen:  # type: ignore[type-arg]
    env = {**os.environ, LOCK_ENV: str(lock), "TEST_HARBOR_DB": PASSWORD,
           "TEST_HARBOR_ADMIN": "admin-test"}
    return subprocess.Popen([sys.executable, "-m", "harbor_ops.cli.main", *args,
                             "--config", str(site)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **kw)  # type: ignore[call-overload]


def _reap_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Children of a killed harborctl (pg_dump, psql) end by themselves; bounded wait."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)


def test_kill_9_at_random_moments_leaves_no_incomplete_backup(cluster: Cluster,
                                                              host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_kill", artifacts=30000, pad=1)
    site = _site_file(cluster, host, "registry_kill")
    first = _harborctl(site, host["lock"], "backup", "create")
    t0 = time.monotonic()
    out, err = first.communicate(timeout=120)
    duration = time.monotonic() - t0
    assert first.returncode == 0, err.decode()
    earlier = list_backups(host["backups"])
    assert len(earlier) == 1
    rng = random.Random(5)
    kills = 0
    for _ in range(40):  # bounded: stop after 20 kills that hit a running backup
        if kills >= 20:
            break
        started = time.monotonic()
        proc = _harborctl(site, host["lock"], "backup", "create")
        time.sleep(rng.uniform(0.05, 0.9 * duration))
        if proc.poll() is None:
            kills += 1
        proc.kill()
        proc.communicate(timeout=30)
        _reap_group(proc)
        for e in list_backups(host["backups"]):
            assert e.manifest is not None, e.problem
            assert archive.check_members(e.path, e.manifest) == []
        # backup names have one-second resolution
        time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
    assert kills >= 20
    last = _harborctl(site, host["lock"], "backup", "create")
    _, err = last.communicate(timeout=120)
    assert last.returncode == 0, err.decode()
    assert not list(host["backups"].glob(f"*{PARTIAL_SUFFIX}"))
    names = [e.name for e in list_backups(host["backups"])]
    assert earlier[0].name in names and len(names) >= 2
    assert verify_backup(path=earlier[0].path, lock_path=host["lock"]).ok


def test_cli_list_json_and_busy_exit_code(cluster: Cluster, host: dict[str, Path]) -> None:
    import json

    cluster.harbor_db("registry_cli", artifacts=10)
    site = _site_file(cluster, host, "registry_cli")
    p = _harborctl(site, host["lock"], "backup", "create", "-o", "json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    name = json.loads(out)["name"]
    p = _harborctl(site, host["lock"], "backup", "list", "-o", "json")
    out, _ = p.communicate(timeout=60)
    assert [r["name"] for r in json.loads(out)] == [name]
    with job_lock(host["lock"], job="install"):
        p = _harborctl(site, host["lock"], "backup", "create")
        _, err = p.communicate(timeout=60)
    assert p.returncode == 7 and b"busy" in err
    assert PASSWORD.encode() not in err


def test_prune_keeps_newest_verified(cluster: Cluster, host: dict[str, Path]) -> None:
    cluster.harbor_db("registry_p", artifacts=5)
    a = _create(cluster, host, "registry_p")
    verify_backup(path=a.path, lock_path=host["lock"])
    time.sleep(1.1)
    b = _create(cluster, host, "registry_p")
    partial = host["backups"] / ("harbor-hb-20000101T000000Z.hbk" + PARTIAL_SUFFIX)
    partial.write_bytes(b"junk")
    r = prune_backups(backup_dir=host["backups"], keep=Keep(daily=0, weekly=0, monthly=0),
                      lock_path=host["lock"])
    assert r.deleted == [] and set(r.kept) == {a.name, b.name}
    assert not partial.exists()
