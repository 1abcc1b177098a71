"""The single-host operator's whole day, on an air-gapped Harbor host (issue 13).

harborctl is carried into a fresh test-bed host as one wheelhouse archive (the host has no
route to any package index, no pip and no ensurepip) and installed offline with its
installer. Then every command runs ON THAT HOST, as its operator would type it, with the
site file's default ``connection: local``: init, the edit of the site file (passwords in
files), preflight, install, a push and a pull through the front, backup create, backup
verify, agent once, upgrade plan, and a second install that changes nothing. Each step's
exit code and output are asserted; the tests share the host and run in file order.

The front answers only to its server_name (``h1``, what the operator gave ``init``): for the
push and pull the image client runs as on a user's machine whose name service resolves
``h1`` to the host's address (a private mount namespace with its own /etc/hosts; this
machine's /etc/hosts is never touched).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed.bundle.builder import build_bundle
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration.test_bundle import _tiny_oci_layout

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VERSION = "2.15.2"
ADMIN_PASSWORD = "day-Admin-pw-3141"  # throw-away test values, looked for in every output
DB_PASSWORD = "day-Db-pw-2718"
CARRY = "/root/carry"  # where the operator put what they carried in
BUNDLE = f"{CARRY}/harbor-offline-installer-v{VERSION}.tgz"
AGENT_TICK_LOCK = "run/lock/harborctl-agent.lock"  # the cron line's `flock -n` file
SOURCE_DATE_EPOCH = "1764547200"


def _build_wheelhouse(out: Path, *extra: str) -> Path:
    # The same time stamp for every build of the module (by default the checkout's last
    # commit time: a commit made while the tests run would be another input).
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/wheelhouse"), "--output",
                           str(out), *extra], capture_output=True, text=True, timeout=900,
                          check=False, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip())


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive for the bed hosts' python3 (Debian 12: 3.11, glibc 2.36, x86_64)."""
    return _build_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module")
def unpacked(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(wheelhouse) as tar:
        tar.extractall(dest, filter="data")
    return dest / wheelhouse.name.removesuffix(".tar.gz")


@pytest.fixture(scope="module")
def host(testbed: TestBed, wheelhouse: Path) -> Iterator[Host]:
    """A fresh h1 with the wheelhouse and Harbor's offline installer carried in by hand.

    The cron line the install puts on the host runs `agent once` every 5 minutes under
    ``flock -n``; the test holds that lock so a tick cannot race the steps it drives itself
    (the explicit `agent once` below does not take it)."""
    h1 = testbed.reset("h1")
    carry = h1.root_path / CARRY.lstrip("/")
    carry.mkdir(parents=True)
    shutil.copy(wheelhouse, carry)
    bundle = build_bundle(VERSION, carry.parent / "bundles")
    os.link(bundle, carry / bundle.name)  # the bed's bundle cache shares the bytes
    shutil.rmtree(carry.parent / "bundles")
    lock_path = Path(f"/proc/{h1.init_pid()}/root") / AGENT_TICK_LOCK
    with open(lock_path, "w") as tick_lock:
        fcntl.flock(tick_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield h1


def operator(host: Host, command: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """``command`` in root's home on the host, as typed at its shell; never raises."""
    proc = host.exec(f"cd /root && {command}", check=False, timeout=timeout)
    for text in (proc.stdout, proc.stderr):
        assert ADMIN_PASSWORD not in text and DB_PASSWORD not in text
    return proc


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# ---- the wheelhouse itself ----------------------------------------------------------------


def test_wheelhouse_is_reproducible(wheelhouse: Path, unpacked: Path,
                                    tmp_path: Path) -> None:
    """The same checkout and pinned wheels give the same archive, byte for byte."""
    again = _build_wheelhouse(tmp_path, "--find-links", str(unpacked / "wheels"))
    assert again.name == wheelhouse.name
    assert again.read_bytes() == wheelhouse.read_bytes()
    names = sorted(p.name for p in (unpacked / "wheels").iterdir())
    assert any(n.startswith("harborctl-") for n in names)
    assert any(n.startswith("pip-") for n in names)
    assert any(n.startswith("ansible_core-") for n in names)
    sums = (unpacked / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == sorted(
        ["TARGET.json", "install.py"] + [f"wheels/{n}" for n in names])


def test_installer_refuses_another_python(unpacked: Path, tmp_path: Path) -> None:
    """Built for 3.11: a wheelhouse built for another Python refuses to install, exit 14,
    nothing written."""
    other = tmp_path / "other"
    shutil.copytree(unpacked, other)
    target = json.loads((other / "TARGET.json").read_text())
    target["python"] = "3.12"
    (other / "TARGET.json").write_text(json.dumps(target))
    prefix = tmp_path / "venv"
    proc = subprocess.run([sys.executable, str(other / "install.py"), "--prefix", str(prefix),
                           "--bin-dir", str(tmp_path / "bin")],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 14, proc.stderr
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"this wheelhouse is for Python 3.12, but {sys.executable} is Python {here}" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not prefix.exists() and not (tmp_path / "bin").exists()


def test_installer_refuses_a_damaged_archive(unpacked: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(unpacked, damaged)
    wheel = next((damaged / "wheels").glob("click-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte (a zip's last bytes are often zero)
    wheel.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, str(damaged / "install.py"), "--prefix",
                           str(tmp_path / "venv"), "--bin-dir", str(tmp_path / "bin")],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 1
    assert f"wheels/{wheel.name} does not match SHA256SUMS" in proc.stderr
    assert not (tmp_path / "venv").exists()


# ---- the operator's day on the host --------------------------------------------------------


def test_offline_install_of_harborctl(host: Host, wheelhouse: Path) -> None:
    air = host.exec("ip route; python3 -m pip --version; python3 -c 'import ensurepip'",
                    check=False)
    assert "default" not in air.stdout and air.returncode != 0  # no route out, no pip
    out = _ok(operator(host, f"cd {CARRY} && tar xzf {wheelhouse.name} && "
                             f"python3 {wheelhouse.name.removesuffix('.tar.gz')}/install.py"))
    assert "harborctl 0.1.0 installed in /opt/harborctl" in out
    assert "/usr/local/bin/harborctl -> /opt/harborctl/bin/harborctl" in out
    version = operator(host, "harborctl --version")
    _ok(version)
    assert version.stdout.strip() == "harborctl, version 0.1.0"


def test_init_writes_the_site_file(host: Host) -> None:
    out = _ok(operator(host, f"harborctl init --hostname {host.name} --harbor-version {VERSION}"))
    assert f"wrote harborctl.yml for Harbor {VERSION} ({host.name})" in out
    site = (host.root_path / "root/harborctl.yml").read_text()
    assert "connection: local" in site and "harbor_admin_password_env" in site


def test_operator_edits_the_site_file_to_read_passwords_from_files(host: Host) -> None:
    _ok(operator(host, "install -d -m 0700 /etc/harborctl && umask 077 && "
                       f"printf '%s\\n' '{ADMIN_PASSWORD}' > /etc/harborctl/admin.password && "
                       f"printf '%s\\n' '{DB_PASSWORD}' > /etc/harborctl/db.password"))
    _ok(operator(host, "sed -i "
                       "-e 's|harbor_admin_password_env: HARBOR_ADMIN_PASSWORD|"
                       "harbor_admin_password_file: /etc/harborctl/admin.password|' "
                       "-e 's|password_env: HARBOR_DB_PASSWORD|"
                       "password_file: /etc/harborctl/db.password|' "
                       "-e '/external_url:/d' harborctl.yml"))
    site = (host.root_path / "root/harborctl.yml").read_text()
    assert "password_file: /etc/harborctl/db.password" in site and "_env:" not in site


def test_preflight_passes(host: Host) -> None:
    out = _ok(operator(host, f"harborctl preflight --bundle {BUNDLE}"))
    assert f"localhost (Harbor {VERSION}):" in out
    assert f"PASS  bundle        Harbor {VERSION} offline installer" in out
    assert "PASS  docker" in out and "preflight passed" in out
    assert "FAIL" not in out


def test_install_with_the_local_connection(host: Host) -> None:
    out = _ok(operator(host, f"harborctl install --bundle {BUNDLE}"))
    assert "localhost: Run Harbor's install.sh ... changed" in out
    # changed: once healthy, the gate's run writes the install stamp
    assert "localhost: Wait until Harbor reports every component healthy ... changed" in out
    assert "localhost: Install the host files that differ ... changed" in out
    assert f"Harbor {VERSION} installed on 1 host(s)" in out
    assert "agent schedule on this controller" not in out  # the host schedules itself
    cron = (host.root_path / "etc/cron.d/harborctl").read_text()
    assert "'/usr/local/bin/harborctl' agent once -c '/root/harborctl.yml'" in cron
    yml = host.root_path / f"opt/harbor/harbor-{VERSION}/harbor.yml"
    assert yml.stat().st_mode & 0o777 == 0o600


def _skopeo_as_a_user(host: Host, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """skopeo with the admin's credentials (a 0600 file), resolving ``host.name`` to the
    host's address as the users' DNS would: /etc/hosts bind-mounted in its own mount
    namespace."""
    if shutil.which("skopeo") is None or shutil.which("unshare") is None:
        unavailable("skopeo and unshare are needed (see .ci/provision)")
    hosts = work / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + f"{host.address} {host.name}\n")
    auth = work / "auth.json"
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"{host.name}:80": {"auth": token}}}))
    auth.chmod(0o600)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts),
         "skopeo", args[0], "--quiet", "--authfile", str(auth), *args[1:]],
        capture_output=True, text=True, timeout=120, check=False)


def test_push_and_pull_through_the_front(host: Host, tmp_path: Path) -> None:
    """A tiny image goes in and comes back out through the front by its server_name, and
    lands in this host's registry storage."""
    layout = _tiny_oci_layout(tmp_path / "oci")
    image = f"docker://{host.name}:80/library/hello:v1"
    pushed = _skopeo_as_a_user(host, tmp_path, "copy", "--dest-tls-verify=false",
                               f"oci:{layout}:v1", image)
    assert pushed.returncode == 0, pushed.stderr
    pulled = tmp_path / "pulled"
    got = _skopeo_as_a_user(host, tmp_path, "copy", "--src-tls-verify=false", image,
                            f"dir:{pulled}")
    assert got.returncode == 0, got.stderr
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    pushed_manifest = (layout / "blobs/sha256" / manifest_digest.split(":", 1)[1]).read_bytes()
    assert (pulled / "manifest.json").read_bytes() == pushed_manifest
    manifest = json.loads(pushed_manifest)
    for desc in (manifest["config"], *manifest["layers"]):
        digest = desc["digest"].split(":", 1)[1]
        assert (pulled / digest).read_bytes() == (layout / "blobs/sha256" / digest).read_bytes()
    tag = "data/registry/docker/registry/v2/repositories/library/hello/_manifests/tags/v1"
    assert (host.root_path / tag).is_dir()


def test_backup_create(host: Host) -> None:
    proc = operator(host, "harborctl backup create -o json")
    _ok(proc)
    path = json.loads(proc.stdout)["path"]
    assert path.startswith(f"/var/backups/harbor/harbor-{host.name}-") and path.endswith(".hbk")
    assert (host.root_path / path.lstrip("/")).stat().st_mode & 0o077 == 0


def test_backup_verify(host: Host) -> None:
    out = _ok(operator(host, "harborctl backup verify"))
    assert f"harbor-{host.name}-" in out and ": verified (" in out


def test_agent_once_writes_status_and_metrics(host: Host) -> None:
    _ok(operator(host, "harborctl agent once"))
    status = json.loads((host.root_path / "var/lib/harborctl/status.json").read_text())
    jobs = status["jobs"]
    for job in ("backup", "drill", "health", "certificates", "disk_and_logs", "upgrade_check"):
        assert jobs[job]["result"] == "ok", (job, jobs[job])
    assert jobs["health"]["detail"]["components"] >= 7
    metrics = "".join(p.read_text() for p in
                      (host.root_path / "var/lib/node_exporter/textfile").glob("*.prom"))
    assert 'harborctl_job_success{job="backup"} 1' in metrics
    assert 'harborctl_job_success{job="health"} 1' in metrics


def test_upgrade_plan(host: Host) -> None:
    out = _ok(operator(host, f"harborctl upgrade plan --to {VERSION}"))
    assert "Already at target" in out
    out = _ok(operator(host, f"harborctl upgrade plan --from 2.14.4 --to {VERSION}"))
    assert f"path         2.14.4 -> {VERSION}" in out
    assert "pg15 -> pg18 by pg_upgrade" in out


def test_second_install_changes_nothing(host: Host) -> None:
    proc = operator(host, f"harborctl install --bundle {BUNDLE} -o json")
    out = _ok(proc)
    result = json.loads(proc.stdout)
    assert result["changed"] is False, out
    assert result["hosts"]["localhost"]["failed"] == 0
    assert result["hosts"]["localhost"]["changed"] == 0
    assert "... changed" not in out
