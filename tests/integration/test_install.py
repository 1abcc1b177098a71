"""`harborctl install` on real test hosts over SSH, checked as a user would check it.

The bundle is the Harbor-shaped offline installer the tests build (tests/bed/bundle); the
hosts are test-bed hosts (own rootfs, sshd, dockerd, nginx, cron, logrotate). Everything
the role does really happens: bundle copy, unpack, install.sh (docker load, prepare,
compose up), the health gate, logrotate, the Nginx front, the boot and agent schedule.
The tests in this module share one installed host and run in file order.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra

from harbor_ops.core.errors import LockHeld, PreflightFailed
from harbor_ops.hosts import joblock
from harbor_ops.install.run import InstallResult, install
from harbor_ops.preflight.run import run_preflight
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from tests.bed.bundle.builder import build_bundle
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration.harborwait import health_url, wait_healthy
from tests.integration.test_bundle import _tiny_oci_layout

pytestmark = pytest.mark.integration

VERSION = "2.15.2"
ADMIN_PASSWORD = "it-Admin-pw-4711"  # throw-away test values, looked for in every output
DB_PASSWORD = "it-Db-pw-0815"
CONTAINERS = ("harbor-log", "registry", "registryctl", "harbor-db", "harbor-core",
              "harbor-portal", "harbor-jobservice", "redis", "nginx")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(VERSION, tmp_path_factory.mktemp("bundles"))


def write_site(directory: Path, host: Host, key: Path) -> Site:
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "admin").write_text(ADMIN_PASSWORD + "\n")
    (secrets / "db").write_text(DB_PASSWORD + "\n")
    (directory / "harborctl.yml").write_text(f"""\
harbor:
  version: {VERSION}
  hostname: {host.address}
  http: {{port: 8080}}
  harbor_admin_password_file: secrets/admin
  database: {{password_file: secrets/db}}
  data_volume: /data
front:
  listen: 0.0.0.0:80
  server_name: {host.address}
  upstream: http://127.0.0.1:8080
  cache: {{path: /var/cache/nginx/harbor}}
install: {{dir: /opt/harbor, bundle_dir: /opt/harbor-bundles}}
hosts:
  - {{name: {host.name}, address: {host.address}, ssh_key_file: {key}}}
""")
    return load_site(directory / "harborctl.yml")


class Runner:
    """Runs install() for one site and keeps every progress line it printed."""

    def __init__(self, site: Site, bed: TestBed, log_dir: Path) -> None:
        self.site, self.bed, self.log_dir = site, bed, log_dir
        self.lines: list[str] = []

    def __call__(self, bundle: Path, **kw: Any) -> InstallResult:
        return install(self.site, bundle=bundle, inventory=None, progress=self.lines.append,
                       log_dir=self.log_dir, ssh_config=self.bed.ssh_config_path,
                       timeout=900, **kw)


@pytest.fixture(scope="module")
def h1(testbed: TestBed) -> Host:
    return testbed.reset("h1")


@pytest.fixture(scope="module")
def runner(testbed: TestBed, h1: Host, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    site_dir = tmp_path_factory.mktemp("site")
    return Runner(write_site(site_dir, h1, testbed.client_key), testbed, site_dir / "logs")


@pytest.fixture(scope="module")
def first(runner: Runner, bundle: Path) -> InstallResult:
    return runner(bundle)


@pytest.fixture(scope="module")
def ti(testbed: TestBed, h1: Host, first: InstallResult) -> testinfra.host.Host:
    return testinfra.get_host(f"ssh://{h1.name}", ssh_config=str(testbed.ssh_config_path))


def http_get(url: str, host_header: str | None = None,
             auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Host": host_header} if host_header else {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - bed address
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _no_secret_anywhere(runner: Runner) -> None:
    texts = ["\n".join(runner.lines)]
    texts += [p.read_text(errors="replace") for p in runner.log_dir.iterdir()]
    for text in texts:
        assert ADMIN_PASSWORD not in text
        assert DB_PASSWORD not in text


def test_first_install_changes_the_host_and_reports_progress(first: InstallResult,
                                                            runner: Runner) -> None:
    tally = first.hosts["h1"]
    assert tally.failed == 0 and tally.unreachable == 0
    assert tally.changed >= 5  # bundle, harbor.yml, install.sh, host files, gate (stamp)
    assert any("h1: Run Harbor's install.sh ... changed" in line for line in runner.lines)
    assert any("h1: Copy the bundle to the host and unpack it ... changed" in line
               for line in runner.lines)
    assert all(line.startswith(("[", "preflight:", "render:")) for line in runner.lines)
    _no_secret_anywhere(runner)


def test_containers_run(ti: testinfra.host.Host) -> None:
    names = ti.check_output("docker ps --filter status=running --format '{{.Names}}'").split()
    assert set(CONTAINERS) <= set(names)


def test_install_layout_and_modes(ti: testinfra.host.Host) -> None:
    link = ti.file("/opt/harbor/harbor")
    assert link.is_symlink and link.linked_to == f"/opt/harbor/harbor-{VERSION}"
    yml = ti.file(f"/opt/harbor/harbor-{VERSION}/harbor.yml")
    assert yml.mode == 0o600 and yml.user == "root"
    assert ti.file(f"/opt/harbor-bundles/harbor-offline-installer-v{VERSION}.tgz").is_file
    database = ti.file("/data/database")
    assert database.is_directory and database.uid == 999 and database.mode == 0o700
    for path in ("/data/registry", "/data/secret"):
        assert ti.file(path).uid == 10000, path


def test_logrotate_file_is_valid(ti: testinfra.host.Host) -> None:
    assert ti.file("/etc/logrotate.d/harbor").mode == 0o644
    ti.run_expect([0], "logrotate -d /etc/logrotate.d/harbor")


def test_health_endpoint_is_healthy(h1: Host, first: InstallResult) -> None:
    # polled: one check of the double's may time out on a loaded machine and say so
    health = wait_healthy(health_url(h1))
    assert {c["name"] for c in health["components"]} >= {"core", "database", "registry"}


def test_nginx_front_proxies_harbor(ti: testinfra.host.Host, h1: Host) -> None:
    assert ti.file("/etc/nginx/conf.d/harbor.conf").exists
    assert ti.file("/var/cache/nginx/harbor").mode == 0o700
    status, _, body = http_get(f"http://{h1.address}/api/v2.0/health", host_header=h1.address)
    assert status == 200 and json.loads(body)["status"] == "healthy"
    status, headers, _ = http_get(f"http://{h1.address}/v2/", host_header=h1.address)
    assert status == 401  # the registry's own challenge, through the front
    assert "Www-Authenticate" in headers or "WWW-Authenticate" in headers


def _skopeo(*args: str) -> None:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_docker_protocol_push_and_pull_through_the_front(h1: Host, first: InstallResult,
                                                         tmp_path: Path) -> None:
    """A tiny image goes in and comes back out through the front; its blobs are cached
    for the credentials that read them and never served without credentials."""
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed (see .ci/provision)")
    front = f"{h1.address}:80"  # front.listen of write_site
    layout = _tiny_oci_layout(tmp_path / "oci")
    auth = tmp_path / "auth.json"  # credentials in a 0600 file, never on a command line
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {front: {"auth": token}}}))
    auth.chmod(0o600)
    _skopeo("copy", "--quiet", "--dest-tls-verify=false", "--authfile", str(auth),
            f"oci:{layout}:v1", f"docker://{front}/library/hello:v1")
    pulled = tmp_path / "pulled"
    _skopeo("copy", "--quiet", "--src-tls-verify=false", "--authfile", str(auth),
            f"docker://{front}/library/hello:v1", f"dir:{pulled}")

    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    pushed_manifest = (layout / "blobs/sha256" / manifest_digest).read_bytes()
    assert (pulled / "manifest.json").read_bytes() == pushed_manifest
    manifest = json.loads(pushed_manifest)
    for desc in (manifest["config"], *manifest["layers"]):
        digest = desc["digest"].split(":", 1)[1]
        assert (pulled / digest).read_bytes() == (layout / "blobs/sha256" / digest).read_bytes()

    layer = manifest["layers"][0]["digest"]
    url = f"http://{front}/v2/library/hello/blobs/{layer}"
    expected = (layout / "blobs/sha256" / layer.split(":", 1)[1]).read_bytes()
    status, _, body = http_get(url, auth=("admin", ADMIN_PASSWORD))
    assert status == 200 and body == expected
    status, headers, body = http_get(url, auth=("admin", ADMIN_PASSWORD))
    assert status == 200 and body == expected
    assert headers.get("X-Cache-Status") == "HIT", headers
    status, headers, body = http_get(url)
    assert status == 401 and body != expected, headers
    assert headers.get("X-Cache-Status") != "HIT"


def test_doctor_finds_nothing_wrong_with_the_installed_harbor(h1: Host, first: InstallResult,
                                                             tmp_path: Path) -> None:
    """doctor from the controller, as a client of the front (the site's URL), push probe
    included (token realm, upload, pull back, delete, health, systeminfo): nothing above
    info. Harbor's own port is not the URL external_url names, and doctor says so."""
    from harbor_ops.doctor.context import DoctorOptions
    from harbor_ops.doctor.run import run_doctor

    def doctor(url: str) -> Any:
        return run_doctor(DoctorOptions(url=url, username="admin", password=ADMIN_PASSWORD,
                                        docker_certs_dir=tmp_path), keep_result=False)

    report = doctor(f"http://{h1.address}")
    assert [f for f in report.findings if f.severity != "info"] == [], str(report)
    assert report.harbor and all(c.status in ("ok", "skip") for c in report.checks)
    assert next(c for c in report.checks if c.name == "push-probe").status == "ok"
    inner = doctor(f"http://{h1.address}:8080")
    assert [(f.id, f.severity) for f in inner.findings] == [
        ("external-url-mismatch", "warning")], str(inner)


def test_boot_schedule_without_systemd_and_no_agent_on_an_ssh_host(
        ti: testinfra.host.Host) -> None:
    """The controller backs SSH hosts up; nothing of the agent is scheduled on the host."""
    assert "@reboot" in ti.file("/etc/cron.d/harbor").content_string
    assert not ti.file("/etc/cron.d/harborctl").exists


def test_second_run_changes_nothing(runner: Runner, bundle: Path, first: InstallResult,
                                    ti: testinfra.host.Host) -> None:
    before = ti.check_output("docker inspect --format '{{.State.StartedAt}}' harbor-core")
    runner.lines.clear()
    again = runner(bundle)
    assert again.hosts["h1"].changed == 0, "\n".join(runner.lines)
    # The one state read proved the host unchanged: nothing else ran (the nightly converge).
    assert any("h1: Converge the host where anything differs ... skipped" in line
               for line in runner.lines), "\n".join(runner.lines)
    assert not any("install.sh" in line for line in runner.lines)
    after = ti.check_output("docker inspect --format '{{.State.StartedAt}}' harbor-core")
    assert before == after  # Harbor was not restarted


def test_a_file_changed_by_hand_is_restored_without_restarting_harbor(
        runner: Runner, bundle: Path, first: InstallResult, ti: testinfra.host.Host) -> None:
    """The unchanged-host shortcut compares content, mode and owner: a hand edit, a chmod
    and a stopped cron are each found and put back; Harbor keeps running."""
    before = ti.check_output("docker inspect --format '{{.State.StartedAt}}' harbor-core")
    logrotate = ti.file("/etc/logrotate.d/harbor").content_string
    ti.run_expect([0], "echo '# edited by hand' >> /etc/logrotate.d/harbor")
    ti.run_expect([0], "chmod 0600 /usr/local/lib/harborctl/cron-check")
    ti.run_expect([0], "service cron stop")
    # `--check --diff` shows the line that would go (Ansible's output, kept beside the log).
    runner(bundle, check=True)
    out = max(runner.log_dir.glob("install-*.out"), key=lambda p: p.stat().st_mtime_ns)
    assert "-# edited by hand" in out.read_text(), out.read_text()[-3000:]
    runner.lines.clear()
    fixed = runner(bundle)
    assert fixed.hosts["h1"].failed == 0 and fixed.hosts["h1"].changed >= 1, fixed
    assert any("h1: Install the host files that differ ... changed" in line
               for line in runner.lines), "\n".join(runner.lines)
    assert any("h1: Run Harbor's install.sh ... skipped" in line for line in runner.lines)
    assert ti.file("/etc/logrotate.d/harbor").content_string == logrotate
    assert ti.file("/usr/local/lib/harborctl/cron-check").mode == 0o755
    ti.run_expect([0], "service cron status")
    after = ti.check_output("docker inspect --format '{{.State.StartedAt}}' harbor-core")
    assert before == after
    runner.lines.clear()
    assert runner(bundle).hosts["h1"].changed == 0, "\n".join(runner.lines)


def test_check_mode_reports_no_change_on_an_installed_host(runner: Runner, bundle: Path,
                                                           first: InstallResult) -> None:
    checked = runner(bundle, check=True)
    assert checked.check and checked.hosts["h1"].changed == 0


def test_lost_containers_converge(runner: Runner, bundle: Path, h1: Host,
                                  ti: testinfra.host.Host) -> None:
    """An interrupted install (here: the project half gone) is repaired by a re-run."""
    ti.run_expect([0], "docker rm -f harbor-core")
    runner.lines.clear()
    result = runner(bundle)
    assert any("Run Harbor's install.sh ... changed" in line for line in runner.lines)
    assert result.hosts["h1"].failed == 0
    wait_healthy(health_url(h1))


def test_install_sh_does_not_run_while_another_job_holds_the_hosts_lock(
        runner: Runner, bundle: Path, h1: Host, ti: testinfra.host.Host) -> None:
    """A backup running on the host holds its job lock: install.sh is not run (flock's exit
    75, through harbor_command and the task's failed_when), the install stops with LockHeld,
    and the next run, the lock free, installs."""
    ti.run_expect([0], "docker rm -f harbor-core")
    with (joblock.hold_on_host(runner.site.hosts[0], job="backup create",
                               ssh_config=runner.bed.ssh_config_path),
          pytest.raises(LockHeld, match="a harborctl job runs on a target host")):
        runner(bundle)
    assert "harbor-core" not in ti.check_output("docker ps --format '{{.Names}}'")
    runner.lines.clear()
    result = runner(bundle)
    assert any("Run Harbor's install.sh ... changed" in line for line in runner.lines)
    assert result.hosts["h1"].failed == 0
    wait_healthy(health_url(h1))


def test_installed_host_snapshot_restores_a_healthy_harbor_in_seconds(
        testbed: TestBed, h1: Host, first: InstallResult) -> None:
    """What fault tests start from: the installed host, back in seconds instead of a fresh
    install each; what a test broke since the snapshot is gone and Harbor is healthy."""
    started = time.monotonic()
    testbed.snapshot("h1", "installed")
    snapshot_s = time.monotonic() - started
    h1.exec("docker rm -f harbor-core harbor-db >/dev/null && echo broken > /data/broken")
    started = time.monotonic()
    testbed.restore("h1", "installed")
    restore_s = time.monotonic() - started
    assert not (h1.root_path / "data/broken").exists()
    wait_healthy(health_url(h1))
    healthy_s = time.monotonic() - started
    running = h1.exec("docker ps --format '{{.Names}}'").stdout.split()
    assert sorted(running) == sorted(CONTAINERS)
    print(f"snapshot {snapshot_s:.1f} s; restore {restore_s:.1f} s, healthy {healthy_s:.1f} s")


def test_preflight_reads_the_schema_inside_harbor_db_on_the_host(
        runner: Runner, testbed: TestBed, h1: Host) -> None:
    """Preflight's schema check runs ``docker exec harbor-db psql`` on the host over SSH: it
    must read Harbor's database in the host's container (not the controller's), so a dirty
    schema there fails. The installed snapshot then undoes the damage in seconds."""
    sql = "psql -U postgres -d registry -tAc"
    version = h1.exec(f"docker exec harbor-db {sql} 'select version from schema_migrations'")
    assert version.stdout.strip().isdigit(), version
    skip = ["cpu", "memory", "disk", "ports", "hostname"]
    report = run_preflight(runner.site, skip=skip, ssh_config=testbed.ssh_config_path)
    schema = [r for r in report.results["h1"] if r.name == "schema_dirty"]
    assert schema and schema[0].verdict == "pass", report.results["h1"]
    assert f"version {version.stdout.strip()}, clean" in schema[0].reason
    h1.exec(f"docker exec harbor-db {sql} 'update schema_migrations set dirty = true'")
    try:
        report = run_preflight(runner.site, skip=skip, ssh_config=testbed.ssh_config_path)
        schema = [r for r in report.results["h1"] if r.name == "schema_dirty"]
        assert schema and schema[0].verdict == "fail", report.results["h1"]
    finally:
        testbed.restore("h1", "installed")
    wait_healthy(health_url(h1))
    clean = h1.exec(f"docker exec harbor-db {sql} 'select dirty from schema_migrations'")
    assert clean.stdout.strip() == "f"


@pytest.fixture
def h2(testbed: TestBed) -> Iterator[Host]:
    yield testbed.reset("h2")


def test_corrupt_bundle_is_refused_before_the_host_is_touched(
        testbed: TestBed, h2: Host, bundle: Path, tmp_path: Path) -> None:
    truncated = tmp_path / bundle.name
    with open(bundle, "rb") as src, open(truncated, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(bundle.stat().st_size // 2)
    site = write_site(tmp_path, h2, testbed.client_key)
    run = Runner(site, testbed, tmp_path / "logs")
    with pytest.raises(PreflightFailed) as err:
        run(truncated)
    assert "bundle" in str(err.value)
    for path in ("opt/harbor", "opt/harbor-bundles", "etc/logrotate.d/harbor",
                 "etc/nginx/conf.d/harbor.conf"):
        assert not (h2.root_path / path).exists(), path
    assert not (tmp_path / "logs").exists()  # no playbook ran

