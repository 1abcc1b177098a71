"""`harborctl install` refuses bad input before any host is touched (issue 4).

Each case runs the real command line (a subprocess, as a user types it) against test-bed
host h2 over real SSH, and asserts what the user sees (the exit code and a message naming
the problem) and what the user would find on the host afterwards: nothing of Harbor's
(no install dir, no bundle copy, no logrotate file, no Nginx front) and no Ansible log:
ansible-playbook, started beside the preflight, waited for its verdict on the controller and
touched no host, and a refusal leaves no log of it. A control case shows the same site with
good input passes preflight, so each refusal is due to its one bad input.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harbor_ops.core.lock import LOCK_ENV
from tests.bed.bundle.builder import build_bundles
from tests.bed.hosts import Host, TestBed

pytestmark = pytest.mark.integration

VERSION = "2.15.2"
OTHER_VERSION = "2.14.4"
ADMIN_PASSWORD = "rf-Admin-pw-2718"  # throw-away test values, looked for in every output
DB_PASSWORD = "rf-Db-pw-3141"
HTTPS_PORT = 8443
HARBOR_PATHS = ("opt/harbor", "opt/harbor-bundles", "etc/logrotate.d/harbor",
                "etc/nginx/conf.d/harbor.conf", "etc/cron.d/harbor", "data/database")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_bundles([VERSION, OTHER_VERSION], tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def h2(testbed: TestBed) -> Host:
    return testbed.reset("h2")


def _write_pem_pair(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A self-signed certificate for ``address``, its key, and a key of another pair."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(key, hashes.SHA256()))
    paths = directory / "tls.crt", directory / "tls.key", directory / "other.key"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for path, k in ((paths[1], key), (paths[2], ec.generate_private_key(ec.SECP256R1()))):
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        path.chmod(0o600)
    return paths


@dataclass
class Case:
    """One bad input: how to make it, what the user must see."""

    site: Path
    bundle: Path
    host: Host
    log_dir: Path


@pytest.fixture
def case(testbed: TestBed, h2: Host, bundles: dict[str, Path], tmp_path: Path) -> Case:
    """A site for h2 that passes preflight as written; each test spoils one input."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "admin").write_text(ADMIN_PASSWORD + "\n")
    (secrets / "db").write_text(DB_PASSWORD + "\n")
    cert, key, _ = _write_pem_pair(tmp_path, h2.address)
    site = {
        "harbor": {"version": VERSION, "hostname": h2.address, "http": {"port": 8080},
                   "https": {"port": HTTPS_PORT, "certificate": str(cert),
                             "private_key": str(key)},
                   "harbor_admin_password_file": "secrets/admin",
                   "database": {"password_file": "secrets/db"}, "data_volume": "/data"},
        "front": {"listen": "0.0.0.0:80", "server_name": h2.address,
                  "upstream": "http://127.0.0.1:8080",
                  "cache": {"path": "/var/cache/nginx/harbor"}},
        "install": {"dir": "/opt/harbor", "bundle_dir": "/opt/harbor-bundles"},
        "hosts": [{"name": h2.name, "address": h2.address,
                   "ssh_key_file": str(testbed.client_key)}],
    }
    path = tmp_path / "harborctl.yml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return Case(path, bundles[VERSION], h2, tmp_path / "logs")


def _edit(case: Case, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(case.site.read_text())
    change(data)
    case.site.write_text(yaml.safe_dump(data, sort_keys=False))


def harborctl(*args: str) -> subprocess.CompletedProcess[str]:
    # none of harborctl's settings from outside, except this pytest process's own lock
    # file: the machine's lock may be held by anyone else's harborctl job here
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARBORCTL_") or k == LOCK_ENV}
    return subprocess.run([sys.executable, "-m", "harbor_ops.cli.main", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def refuse(testbed: TestBed, case: Case, code: int, *fragments: str) -> str:
    """Run `harborctl install`; assert the exit code, the message, and untouched hosts."""
    proc = harborctl("install", "--bundle", str(case.bundle), "-c", str(case.site),
                     "--ssh-config", str(testbed.ssh_config_path),
                     "--log-dir", str(case.log_dir))
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    for fragment in fragments:
        assert fragment in out, out
    assert "Traceback" not in out
    assert ADMIN_PASSWORD not in out and DB_PASSWORD not in out
    for path in HARBOR_PATHS:
        assert not (case.host.root_path / path).exists(), f"/{path} was created"
    assert not case.log_dir.exists(), "a refusal left a log"
    return out


def failed_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("  - ")]


def test_the_unspoilt_site_passes_preflight(testbed: TestBed, case: Case) -> None:
    proc = harborctl("preflight", "--bundle", str(case.bundle), "-c", str(case.site),
                     "--ssh-config", str(testbed.ssh_config_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "preflight passed" in proc.stdout
    assert "PASS  certificate" in proc.stdout and "key matches" in proc.stdout


def test_truncated_bundle(testbed: TestBed, case: Case, tmp_path: Path) -> None:
    truncated = tmp_path / "cut" / case.bundle.name
    truncated.parent.mkdir()
    data = case.bundle.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    case.bundle = truncated
    out = refuse(testbed, case, 4, "preflight failed", "nothing was changed", "h2: bundle:")
    assert len(failed_lines(out)) == 1, out


def test_corrupt_bundle(testbed: TestBed, case: Case, tmp_path: Path) -> None:
    corrupt = tmp_path / "bad" / case.bundle.name
    corrupt.parent.mkdir()
    data = bytearray(case.bundle.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)  # a zeroed block inside the gzip stream
    corrupt.write_bytes(bytes(data))
    case.bundle = corrupt
    out = refuse(testbed, case, 4, "h2: bundle:")
    assert len(failed_lines(out)) == 1, out


def test_bundle_of_another_version(testbed: TestBed, case: Case,
                                   bundles: dict[str, Path]) -> None:
    case.bundle = bundles[OTHER_VERSION]
    out = refuse(testbed, case, 4, "h2: bundle:", f"holds Harbor {OTHER_VERSION}",
                 f"harbor.version is {VERSION}")
    assert len(failed_lines(out)) == 1, out


def test_missing_certificate(testbed: TestBed, case: Case, tmp_path: Path) -> None:
    gone = tmp_path / "nowhere" / "tls.crt"
    _edit(case, lambda d: d["harbor"]["https"].update(certificate=str(gone)))
    refuse(testbed, case, 2, "invalid configuration", "harbor.https.certificate",
           f"{gone} does not exist")


def test_key_that_does_not_match_the_certificate(testbed: TestBed, case: Case,
                                                 tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    _edit(case, lambda d: d["harbor"]["https"].update(private_key=str(other)))
    out = refuse(testbed, case, 4, "h2: certificate:", "does not match certificate")
    assert len(failed_lines(out)) == 1, out


@pytest.fixture
def port_8080_held(h2: Host) -> Iterator[None]:
    """A server inside h2's namespaces on Harbor's http port, killed by its in-host PID."""
    listener = subprocess.Popen(
        ["nsenter", "-t", str(h2.init_pid()), "--net", "--pid", "--mount", "--root",
         "/usr/bin/python3", "-c",
         "import os,socket,time; s=socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen();"
         "print(os.getpid(), flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        pid = listener.stdout.readline().strip()
        assert pid.isdigit(), f"the listener did not start: {pid!r}"
        yield
    finally:
        if listener.poll() is None:
            h2.exec(f"kill {pid}", check=False)
            try:
                listener.wait(timeout=20)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait(timeout=10)


def test_occupied_port(testbed: TestBed, case: Case, port_8080_held: None) -> None:
    out = refuse(testbed, case, 4, "h2: ports:", "0.0.0.0:8080 (harbor.http.port) is in use")
    assert len(failed_lines(out)) == 1, out


def test_unreachable_host_is_named_and_the_reachable_one_untouched(
        testbed: TestBed, case: Case) -> None:
    unused = next(str(a) for a in reversed(list(testbed.subnet.hosts()))
                  if str(a) not in {h.address for h in testbed.hosts.values()})
    _edit(case, lambda d: d["hosts"].append(
        {"name": "ghost", "address": unused, "ssh_key_file": str(testbed.client_key)}))
    out = refuse(testbed, case, 4, "ghost: ssh:", "host ghost is unreachable", unused)
    assert len(failed_lines(out)) == 1, out  # h2 itself passed every check


def test_wrong_ssh_key(testbed: TestBed, case: Case, tmp_path: Path) -> None:
    wrong = tmp_path / "id_wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)],
                   check=True)
    _edit(case, lambda d: d["hosts"][0].update(ssh_key_file=str(wrong)))
    out = refuse(testbed, case, 4, "h2: ssh:", "SSH key refused")
    assert len(failed_lines(out)) == 1, out
