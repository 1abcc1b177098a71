"""`harborctl upgrade apply` on a real test-bed host: 2.9.5 -> 2.15.2 (three hops) with data,
and a `kill -9` of harborctl in the middle of a hop.

The host gets Harbor 2.9.5 through `harborctl install` (the Harbor-shaped bundle: real
PostgreSQL, real pg_upgrade in harbor-db, real registry and nginx), rows in Harbor's key
tables and a pushed image; then the site file's harbor.version becomes 2.15.2 and
`harborctl upgrade apply` runs as a user runs it, and is killed with SIGKILL when the host's
journal says hop 2 began `start` (the new release may touch the data from there). The next
`apply` must roll hop 2 back to its snapshot, try it again and reach 2.15.2 with every row.
The window's helper on the host outlives the kill (it finishes its step in flight): `status`
and the next `apply` must wait for its window lock before they read the journal; the next
`apply` is also made to wait for a lock the test holds, and must read and act only after.
Everything is checked on the host as an operator would. The tests share one host, in order.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.core.errors import RemoteError, UpgradePathError
from harbor_ops.upgrade.apply import WINDOW_LOCK, ApplyResult, apply, status
from tests.bed.dockerd import DockerEngine
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration import upgradefixture as up
from tests.integration.test_bundle import _tiny_oci_layout
from tests.integration.test_install import ADMIN_PASSWORD

pytestmark = pytest.mark.integration

OLD, NEW = "2.9.5", "2.15.2"
STOPS = ("2.11.2", "2.13.5", "2.15.2")


@pytest.fixture(scope="module", autouse=True)
def drill_engine(docker_engine: DockerEngine, bundles: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The restore drill of a 2.9.5 backup needs PostgreSQL 14, which this machine lacks:
    harborctl then drills in 2.9.5's own harbor-db image, on the engine DOCKER_HOST names."""
    out = tmp_path_factory.mktemp("drill-images")
    with tarfile.open(bundles / f"harbor-offline-installer-v{OLD}.tgz") as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith(f"v{OLD}.tar.gz"))
        src = tgz.extractfile(member)
        assert src is not None
        (out / "images.tar.gz").write_bytes(src.read())
    docker_engine.run("load", "-i", str(out / "images.tar.gz"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_HOST", docker_engine.env["DOCKER_HOST"])
        yield


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return up.bundles(tmp_path_factory, OLD, *STOPS)


@pytest.fixture(scope="module")
def installed(testbed: TestBed, bundles: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Path, str]:
    """h1 on Harbor 2.9.5 with rows and a pushed image; returns (host, site dir, counts)."""
    host = testbed.reset("h1")
    site_dir = tmp_path_factory.mktemp("site")
    counts = up.install_with_rows(testbed, host, site_dir, bundles, OLD)
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed (the image pushed before the upgrade)")
    _push(host, site_dir)
    return host, site_dir, counts


def _auth(host: Host, folder: Path) -> Path:
    auth = folder / "auth.json"
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"{host.address}:80": {"auth": token}}}))
    auth.chmod(0o600)
    return auth


def _push(host: Host, folder: Path) -> None:
    layout = _tiny_oci_layout(folder / "oci")
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--authfile",
                    str(_auth(host, folder)), f"oci:{layout}:v1",
                    f"docker://{host.address}:80/library/hello:v1"], check=True, timeout=120)


def test_refusal_before_anything_changes_when_a_stop_has_no_bundle(
        testbed: TestBed, installed: tuple[Host, Path, str], bundles: Path,
        tmp_path: Path) -> None:
    host, site_dir, _ = installed
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    partial = tmp_path / "no-2.13.5"
    partial.mkdir()
    for v in (OLD, "2.11.2", NEW):
        name = f"harbor-offline-installer-v{v}.tgz"
        (partial / name).symlink_to(bundles / name)
    result = apply(site, to=NEW, host=None, opts=up.opts(testbed, site_dir, partial))
    assert isinstance(result.error, UpgradePathError)
    assert "no bundle for stop 2.13.5 (hop 2)" in result.error.message
    assert result.hosts[0].outcome == "refused"
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{OLD}"
    assert host.exec("test -e /var/lib/harborctl/upgrade.journal", check=False).returncode != 0


@pytest.fixture(scope="module")
def killed(testbed: TestBed, installed: tuple[Host, Path, str], bundles: Path) -> None:
    """`harborctl upgrade apply` as a user runs it, SIGKILLed when hop 2 begins `start`."""
    host, site_dir, _ = installed
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    argv = up.apply_argv(site, testbed, site_dir, bundles, "--to", NEW,
                         "--health-retries", "36")
    code = up.kill_when(argv, host, lambda j: any(
        e["hop"] == 2 and e["step"] == "start" and e["event"] == "begin" for e in j),
        site_dir / "killed.err")
    assert code == -signal.SIGKILL, (site_dir / "killed.err").read_text()[-2000:]
    # No wait here for the window's helper, which may still finish its step in flight:
    # whatever reads the journal next must wait for the helper's window lock by itself.


@pytest.fixture(scope="module")
def status_after_kill(testbed: TestBed, installed: tuple[Host, Path, str], killed: None,
                      bundles: Path) -> tuple[dict[str, Any], list[up.Entry]]:
    """`upgrade status` right after the kill, and the journal as it is once status answered."""
    host, site_dir, _ = installed
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    st = status(site, host=None, opts=up.opts(testbed, site_dir, bundles)).to_dict()["hosts"][0]
    return st, up.journal(host)


class HeldWindow:
    """The host's window lock held by the test (as by a helper still at work), over ssh."""

    def __init__(self, host: Host) -> None:
        self.proc = subprocess.Popen(host.ssh_argv(
            f"flock -x {WINDOW_LOCK} sh -c 'echo held; read _'"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"held\n"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def upgraded(testbed: TestBed, installed: tuple[Host, Path, str],
             status_after_kill: object, bundles: Path) -> tuple[ApplyResult, list[str], bool]:
    """The next `apply`, started while the test holds the window lock: it must wait for it
    (seen in the host's /proc/locks) and read the journal or act only once it is freed."""
    host, site_dir, _ = installed
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    lines: list[str] = []
    results: list[ApplyResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(apply(site, to=NEW, host=None,
                                 opts=up.opts(testbed, site_dir, bundles),
                                 progress=lines.append))
        except BaseException as exc:  # raised below, in the test's thread
            errors.append(exc)

    held = HeldWindow(host)
    before = up.journal(host)
    rerun = threading.Thread(target=run)
    try:
        rerun.start()
        inode = int(host.exec(f"stat -c %i {WINDOW_LOCK}").stdout)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and rerun.is_alive() and up.flock_waiters(
                host.exec("cat /proc/locks").stdout, inode) == 0:
            time.sleep(0.1)
        waited = (up.flock_waiters(host.exec("cat /proc/locks").stdout, inode) > 0
                  and up.journal(host) == before and not lines)
        time.sleep(1.5)  # the re-run already waits: it now waits >= 1.5 s, so it reports it
    finally:
        held.release()
        rerun.join(timeout=3600)
    if errors:
        raise AssertionError("the re-run raised") from errors[0]
    result = results[0]
    print(json.dumps(result.to_dict()["hosts"][0]["hops_run"], indent=1))  # shown with -s
    return result, lines, waited


def test_status_after_the_kill_says_what_the_next_run_does(
        installed: tuple[Host, Path, str],
        status_after_kill: tuple[dict[str, Any], list[up.Entry]]) -> None:
    host = installed[0]
    st, journal_now = status_after_kill
    # killed during `start`: the helper stopped there, or at the latest at the next step
    # boundary it reached before the closed pipe was noticed (gate, which never ends then)
    assert journal_now[-1]["hop"] == 2 and journal_now[-1]["step"] in ("start", "gate")
    # status waited for the helper: it read the journal's last word, and no helper is left
    assert st["plan"]["journal"]["step"] == journal_now[-1]["step"]
    assert st["plan"]["journal"]["event"] == journal_now[-1]["event"]
    assert host.exec("pgrep -f '[u]pgrade-window'", check=False).returncode != 0
    assert st["plan"]["resume"]["action"] == "rollback" and st["plan"]["resume"]["retry_after"]
    assert host.exec("test -e /var/lib/harborctl/upgrade.window", check=False).returncode == 0


def test_a_window_lock_that_never_frees_is_a_clear_error(
        testbed: TestBed, installed: tuple[Host, Path, str], status_after_kill: object,
        bundles: Path) -> None:
    host, site_dir, _ = installed
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    held = HeldWindow(host)
    try:
        with pytest.raises(RemoteError) as busy:
            status(site, host=None, opts=dataclasses.replace(
                up.opts(testbed, site_dir, bundles), window_wait=2))
    finally:
        held.release()
    assert busy.value.message.startswith("h1: the upgrade window helper of an earlier run "
                                         f"still holds {WINDOW_LOCK} after 2 s (pid="), busy.value
    assert "run the same harborctl command again" in str(busy.value.hint)


def test_the_next_run_waited_for_the_window_lock(
        upgraded: tuple[ApplyResult, list[str], bool]) -> None:
    assert upgraded[2], "the re-run read or acted while the window lock was held"
    # and said so once it could go on (its first line; the test held the lock >= 1 s)
    assert upgraded[1][0].startswith("h1: waited "), upgraded[1][:3]
    assert upgraded[1][0].endswith(" s for the upgrade window helper of an earlier run to "
                                   "end; reading its journal now"), upgraded[1][:3]


def test_the_run_after_the_kill_rolls_back_retries_and_reaches_the_target(
        upgraded: tuple[ApplyResult, list[str], bool],
        installed: tuple[Host, Path, str]) -> None:
    result, lines, _ = upgraded
    assert result.error is None, (result.error, "\n".join(lines[-30:]))
    host_out = result.hosts[0]
    assert (host_out.outcome, host_out.on_release) == ("done", NEW)
    runs = [(h["hop"], h["to"], h["outcome"]) for h in host_out.hops]
    # hop 2 rolled back from the killed run's snapshot, then hops 2 (again) and 3
    assert runs == [(2, "2.13.5", "rolled_back"), (1, "2.13.5", "done"), (2, NEW, "done")]
    rollback = [s["step"] for s in host_out.hops[0]["steps"] if s["step"].startswith("rb_")]
    assert rollback == ["rb_stop", "rb_restore", "rb_switch", "rb_start", "rb_gate"]
    hop = host_out.hops[-1]
    assert hop["downtime_seconds"] > 0
    names = [s["step"] for s in hop["steps"]]
    assert names == ["backup", "unpack", "load_images", "configure", "count_rows", "stop",
                     "snapshot", "switch", "start", "gate", "finish"]
    host = installed[0]
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{NEW}"
    assert f"harbor-core:v{NEW}" in host.exec("docker ps --format '{{.Image}}'").stdout


def test_every_row_survives_and_the_schema_matches(
        upgraded: tuple[ApplyResult, list[str], bool],
        installed: tuple[Host, Path, str]) -> None:
    host, _, before = installed
    assert up.psql(host, up.COUNT_SQL) == before
    assert up.psql(host, "SELECT version, dirty FROM schema_migrations") == "180|f"
    # pg_upgrade converted the data: only pg18 is left, owned by uid 999, mode 0700
    assert host.exec("ls /data/database").stdout.split() == ["pg18"]
    assert host.exec("stat -c '%u %a' /data/database/pg18").stdout.strip() == "999 700"


def _started(host: Host, container: str) -> float:
    out = host.exec(f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}").stdout.strip()
    whole, _, frac = out.rstrip("Z").partition(".")  # RFC 3339 with nanoseconds, UTC
    when = datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00")
    return when.timestamp()


def test_the_new_harbor_log_ran_before_the_snapshot_ended(
        upgraded: tuple[ApplyResult, list[str], bool],
        installed: tuple[Host, Path, str]) -> None:
    """The last hop's window started its harbor-log as soon as it was created, inside the
    snapshot step (it touches no Harbor data), so that its start step began with harbor-db;
    nginx started after core, registry and portal (it resolves them at its start)."""
    host = installed[0]
    ends = [e for e in up.journal(host) if e["step"] == "snapshot" and e["event"] == "end"]
    assert _started(host, "harbor-log") < float(ends[-1]["t"]), ends[-1]
    begins = [e for e in up.journal(host) if e["step"] == "start" and e["event"] == "begin"]
    assert _started(host, "harbor-db") > float(begins[-1]["t"])
    nginx = _started(host, "nginx")
    assert all(nginx > _started(host, c) for c in ("harbor-core", "registry", "harbor-portal"))


def test_the_image_pushed_before_can_be_pulled(upgraded: tuple[ApplyResult, list[str], bool],
                                               installed: tuple[Host, Path, str],
                                               tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed")
    host = installed[0]
    out = tmp_path / "pulled"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--authfile",
                    str(_auth(host, tmp_path)), f"docker://{host.address}:80/library/hello:v1",
                    f"dir:{out}"], check=True, timeout=120)
    assert (out / "manifest.json").is_file()


def test_journal_backup_and_snapshot(upgraded: tuple[ApplyResult, list[str], bool],
                                     installed: tuple[Host, Path, str]) -> None:
    host, site_dir, _ = installed
    assert host.exec("stat -c %a /var/lib/harborctl/upgrade.journal").stdout.strip() == "600"
    assert host.exec("test -e /var/lib/harborctl/upgrade.window", check=False).returncode != 0
    assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""  # dropped
    # one verified backup per hop run, on the controller: 2.11.2, 2.13.5 (killed), 2.13.5, 2.15.2
    backups = sorted((site_dir / "backups" / "h1").glob("harbor-h1-*.hbk"))
    assert len(backups) == 4
    for backup in backups:
        drill = json.loads(Path(f"{backup}.verified.json").read_text())
        assert drill["ok"] and drill["restore_ok"], drill


def test_a_second_apply_does_nothing(testbed: TestBed, installed: tuple[Host, Path, str],
                                     upgraded: tuple[ApplyResult, list[str], bool],
                                     bundles: Path) -> None:
    host, site_dir, _ = installed
    site = up.site_at(site_dir, host, testbed.client_key, NEW)
    again = apply(site, to=NEW, host=None, opts=up.opts(testbed, site_dir, bundles))
    assert again.error is None and again.hosts[0].outcome == "up_to_date"
    st = status(site, host=None, opts=up.opts(testbed, site_dir, bundles)).to_dict()
    assert st["hosts"][0]["plan"]["journal"]["outcome"] == "done"
