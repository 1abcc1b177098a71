"""`harborctl support-bundle`: one 0600 archive, readable, with no secret of the site in it."""

from __future__ import annotations

import base64
import json
import os
import socket
import tarfile
from pathlib import Path

import pyrage
import pytest
from click.testing import CliRunner

from harbor_ops.cli.main import cli
from harbor_ops.render.engine import render_texts
from harbor_ops.site.load import load_site, resolve_secrets
from tests.integration import doctor_pki as pki

SECRETS = {
    "admin": "Admin-Pw-qz81!",
    "db": "Db-Pw-77xk",
    "redis": "Redis-Pw-k2p9",
    "secretkey": "0123456789abcdef",
    "core_secret": "CoreSecret-v8w2",
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def harbor_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A site whose every secret is set, and a host layout that holds them all."""
    monkeypatch.setenv("BUNDLE_ADMIN_PW", SECRETS["admin"])
    monkeypatch.setenv("BUNDLE_REDIS_PW", SECRETS["redis"])
    monkeypatch.setenv("HARBORCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    (tmp_path / "db.pw").write_text(SECRETS["db"] + "\n")
    server = pki.leaf(pki.ca("Bundle CA"), ["harbor.bundle.test"])
    crt, key = pki.write_pair(tmp_path, "harbor", server)
    ssh_key = tmp_path / "id_backup"
    ssh_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA-bundle"
                       "\n-----END OPENSSH PRIVATE KEY-----\n")
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "backup.age-key").write_text(f"# age identity\n{identity}\n")
    (tmp_path / "backup.age-key").chmod(0o600)
    data, logs = tmp_path / "data", tmp_path / "logs"
    (data / "secret" / "keys").mkdir(parents=True)
    (data / "secret" / "keys" / "secretkey").write_text(SECRETS["secretkey"])
    (data / "registry").mkdir()
    logs.mkdir()
    site_file = tmp_path / "harborctl.yml"
    site_file.write_text(f"""
harbor:
  version: 2.15.2
  hostname: harbor.bundle.test
  http: {{port: 8080}}
  https: {{port: 8443, certificate: {crt}, private_key: {key}}}
  external_url: http://127.0.0.1:{_closed_port()}
  harbor_admin_password_env: BUNDLE_ADMIN_PW
  database: {{password_file: {tmp_path / 'db.pw'}, max_idle_conns: 100,
             max_open_conns: 900}}
  external_redis: {{host: "redis.bundle.test:6379", password_env: BUNDLE_REDIS_PW,
                   registry_db_index: 1, jobservice_db_index: 2, trivy_db_index: 5,
                   idle_timeout_seconds: 30}}
  data_volume: {data}
  log: {{level: info, local: {{rotate_count: 5, rotate_size: 20M, location: {logs}}}}}
backup:
  dir: {tmp_path / 'backups'}
  remote: {{host: backup.bundle.test, path: /srv/backups, key_file: {ssh_key}}}
  encryption: {{recipient: {identity.to_public()}, identity_file: {tmp_path / 'backup.age-key'}}}
agent:
  status_file: {tmp_path / 'status.json'}
install:
  dir: {tmp_path / 'opt'}
hosts:
  - name: localhost
    connection: local
""")
    site = load_site(site_file)
    # What an install leaves on the host: harbor.yml and Harbor's env files WITH secrets.
    root = tmp_path / "opt" / "harbor"
    (root / "common" / "config" / "core").mkdir(parents=True)
    rendered = render_texts(site, harbor_values=resolve_secrets(site), rel=site.release)
    (root / "harbor.yml").write_text(rendered["harbor.yml"])
    (root / "common" / "config" / "core" / "env").write_text(
        f"CORE_SECRET={SECRETS['core_secret']}\nPOSTGRESQL_PASSWORD={SECRETS['db']}\n"
        f"_REDIS_URL_CORE=redis://:{SECRETS['redis']}@redis:6379?idle_timeout_seconds=30\n"
        "LOG_LEVEL=info\n")
    (root / "common" / "config" / "core" / "private_key.pem").write_bytes(server.key_pem())
    (logs / "core.log").write_text("".join(f"line {i}\n" for i in range(500)) +
                                   f"auth failed for admin with password {SECRETS['admin']}\n"
                                   f"jobservice: loaded identity {identity}\n")
    (tmp_path / "status.json").write_text(json.dumps({"backup": {"ok": True}}))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "doctor-last.json").write_text('{"url": "https://x", "findings": []}')
    secrets = list(SECRETS.values()) + [
        server.key_pem().decode().splitlines()[1], "b3BlbnNzaC1rZXktdjEAAAA-bundle",
        base64.b64encode(f"admin:{SECRETS['admin']}".encode()).decode(), str(identity)]
    return site_file, secrets


def test_bundle_holds_no_secret(harbor_site: tuple[Path, list[str]], tmp_path: Path) -> None:
    site_file, secrets = harbor_site
    out = tmp_path / "out" / "support.tar.gz"
    res = CliRunner().invoke(cli, ["support-bundle", "-c", str(site_file), "--output-file",
                                   str(out), "--log-lines", "50", "-o", "json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert out.stat().st_mode & 0o777 == 0o600
    members = {}
    with tarfile.open(out) as tar:
        for m in tar.getmembers():
            assert m.isfile() and m.name.startswith("support/")
            members[m.name[len("support/"):]] = tar.extractfile(m).read()  # type: ignore[union-attr]
    blob = b"\n".join(members.values()) + "\n".join(members).encode()
    for secret in secrets:
        assert secret.encode() not in blob, secret
    for secret in secrets:
        assert secret not in res.output
    # ...and it is still a bundle a maintainer can read
    assert {"versions.json", "rendered/harbor.yml", "installed/harbor.yml",
            "installed/config/core/env", "logs/files/core.log", "agent-status.json",
            "doctor-last.json", "disk.txt", "errors.txt", "site/harborctl.yml"} <= set(members)
    assert not any("private_key" in name for name in members)
    assert b"<redacted>" in members["installed/harbor.yml"]
    assert b"LOG_LEVEL=info" in members["installed/config/core/env"]
    assert b"line 499" in members["logs/files/core.log"]
    assert b"line 400" not in members["logs/files/core.log"]
    assert json.loads(members["versions.json"])["harbor"] == "2.15.2"
    errors = members["errors.txt"].decode()
    assert "docker" in errors and "health" in errors  # no daemon, no Harbor: said, not fatal
    assert json.loads(res.output)["path"] == str(out)


def test_bundle_refuses_bad_input(harbor_site: tuple[Path, list[str]]) -> None:
    site_file, _ = harbor_site
    res = CliRunner().invoke(cli, ["support-bundle", "-c", str(site_file), "--log-lines", "-1"],
                             standalone_mode=False)
    assert "--log-lines" in str(res.exception)
    assert not list(Path(os.getcwd()).glob("harbor-support-*.tar.gz"))
