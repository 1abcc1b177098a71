"""What the `upgrade apply` integration tests share: bundles, a site at a version, Harbor
installed on a bed host with rows in its key tables, the host's upgrade journal, and
harborctl run as a user runs it and killed when the journal reaches a chosen step.

Each test module wraps these in its own (module-scoped) fixtures. The lock file and state
folder are already private to each pytest process (tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.install.run import install
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from harbor_ops.upgrade.apply import Options
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed
from tests.integration.harborwait import health_url, wait_healthy
from tests.integration.test_install import write_site

JOURNAL = "/var/lib/harborctl/upgrade.journal"
# What each release of the double leaves: its schema_migrations row and PostgreSQL data dir.
SCHEMA = {"2.14.4": ("171", "pg15"), "2.15.2": ("180", "pg18")}
ROWS_SQL = """
INSERT INTO harbor_user (username, realname) SELECT 'user' || i, 'User ' || i
  FROM generate_series(1, 40) i;
INSERT INTO project (owner_id, name) SELECT 1, 'proj' || i FROM generate_series(1, 25) i;
INSERT INTO repository (name, project_id) SELECT 'proj' || (i % 25 + 1) || '/repo' || i, 1
  FROM generate_series(1, 200) i;
INSERT INTO artifact (project_id, repository_id, repository_name, digest, size)
  SELECT 1, i, 'proj/repo' || i, 'sha256:' || md5(i::text), i * 1000
  FROM generate_series(1, 200) i;
"""
COUNT_SQL = ("SELECT (SELECT count(*) FROM project), (SELECT count(*) FROM repository), "
             "(SELECT count(*) FROM artifact), (SELECT count(*) FROM harbor_user)")
Entry = dict[str, object]


def bundles(tmp_path_factory: pytest.TempPathFactory, *versions: str) -> Path:
    """A folder with the Harbor-shaped offline installer of each version."""
    folder = tmp_path_factory.mktemp("bundles")
    for version in versions:
        build_bundle(version, folder)
    return folder


def site_at(site_dir: Path, host: Host, key: Path, version: str) -> Site:
    """The test site file for ``host`` with harbor.version set to ``version``."""
    write_site(site_dir, host, key)
    path = site_dir / "harborctl.yml"
    path.write_text(path.read_text().replace("version: 2.15.2", f"version: {version}"))
    return load_site(path)


def psql(host: Host, sql: str) -> str:
    """One query in the host's harbor-db (registry database), its rows unaligned."""
    p = host.exec(f"docker exec -i harbor-db psql -U postgres -d registry -tAc \"{sql}\"")
    return p.stdout.strip()


def install_with_rows(testbed: TestBed, host: Host, site_dir: Path, bundle_dir: Path,
                      version: str) -> str:
    """`harborctl install` of ``version`` on ``host``, then the rows; returns their counts."""
    site = site_at(site_dir, host, testbed.client_key, version)
    install(site, bundle=bundle_dir / f"harbor-offline-installer-v{version}.tgz",
            log_dir=site_dir / "logs", ssh_config=testbed.ssh_config_path, timeout=900)
    host.exec("docker exec -i harbor-db psql -v ON_ERROR_STOP=1 -U postgres -d registry",
              input=ROWS_SQL.encode())
    return psql(host, COUNT_SQL)


LEFTOVERS = ("find /data /opt/harbor -maxdepth 3 \\( -name '*.partial' -o -name 'pgNEW*' "
             "-o -name '*.tmp-*' \\) -print")


def healthy_with_every_row(host: Host, release: str, counts: str,
                           snapshot_dropped: bool = False) -> None:
    """:func:`on_release_with_every_row`, Harbor healthy, no partial snapshot, pg_upgrade
    folder or staging file left, no window helper running, no container paused (the window
    pauses harbor-core while harbor-db converts); ``snapshot_dropped``: the hop's snapshot
    is gone too (a hop that reached its target)."""
    on_release_with_every_row(host, release, counts)
    wait_healthy(health_url(host))
    assert host.exec(LEFTOVERS).stdout.strip() == ""
    assert host.exec("pgrep -f '[u]pgrade-window'", check=False).returncode != 0
    assert paused(host) == []
    if snapshot_dropped:
        assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""


@pytest.fixture
def run_tmpdir() -> Iterator[Path]:
    """The TMPDIR of the harborctl runs of one test (pass it to :func:`apply_argv`): the
    staging folder a killed run leaves (the rendered harbor.yml in it) lands there, and the
    folder is removed after the test. A folder of its own under the system's temp dir, mode
    0711, not pytest's tmp_path: the per-hop backup's restore drill runs its scratch
    PostgreSQL as ``postgres`` in TMPDIR, and tmp_path's parents are 0700."""
    folder = Path(tempfile.mkdtemp(prefix="hctl-test-run-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def staging_left(tmp: Path) -> list[str]:
    """The staging folders of install and upgrade runs in ``tmp`` (a run's TMPDIR)."""
    return sorted(p.name for pattern in ("harborctl-upgrade-*", "harborctl-install-*")
                  for p in tmp.glob(pattern))


def journal(host: Host) -> list[Entry]:
    """The host's upgrade journal, one entry a line (none before the first apply)."""
    text = host.exec(f"cat {JOURNAL}", check=False).stdout
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def opts(testbed: TestBed, site_dir: Path, bundle_dir: Path, health_retries: int = 36) -> Options:
    """apply()'s options: bundles, the bed's SSH config, logs and backups in the site dir."""
    return Options(bundle_dir=bundle_dir, ssh_config=testbed.ssh_config_path,
                   log_dir=site_dir / "logs", backup_dir=site_dir / "backups",
                   health_retries=health_retries)


def apply_argv(site: Site, testbed: TestBed, site_dir: Path, bundle_dir: Path,
               *extra: str, tmpdir: Path | None = None) -> list[str]:
    """`harborctl upgrade apply` for ``site`` as a user types it (the venv's harborctl).

    ``tmpdir``: its TMPDIR (:func:`run_tmpdir`). Set for harborctl alone
    (``env`` execs it, same pid): the bed hosts' daemons, started by the test process, must
    keep theirs."""
    assert site.path is not None
    env = ["env", f"TMPDIR={tmpdir}"] if tmpdir is not None else []
    return [*env, str(Path(sys.executable).with_name("harborctl")), "upgrade", "apply", "--yes",
            "-c", str(site.path), "--bundle-dir", str(bundle_dir),
            "--ssh-config", str(testbed.ssh_config_path), "--log-dir", str(site_dir / "logs"),
            "--backup-dir", str(site_dir / "backups"), *extra]


def kill_when(argv: list[str], host: Host, reached: Callable[[list[Entry]], bool],
              stderr: Path) -> int:
    """Run ``argv`` and SIGKILL it as soon as the host's journal satisfies ``reached``.

    The journal is polled (every 50 ms: the step must still be running when the kill lands,
    however fast this machine is) until the event happened or the run ended by itself
    (bounded by 900 s); returns the exit status (-9 when the kill landed)."""
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and proc.poll() is None:
                if reached(journal(host)):
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return proc.returncode


def flock_waiters(proc_locks: str, inode: int) -> int:
    """How many processes wait (``->`` lines of ``/proc/locks``) for a flock on ``inode``:
    the sign, independent of any timing, that a re-run waits for the window lock."""
    return sum(1 for line in proc_locks.splitlines()
               if "-> FLOCK" in line and line.split()[-3].endswith(f":{inode}"))


def snapshot_with_rows(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory,
                       bundle_dir: Path, version: str, label: str) -> tuple[Path, str]:
    """A fresh h1 on ``version`` with rows, kept as bed snapshot ``label`` for
    :func:`restored`; returns (site dir, row counts)."""
    host = testbed.reset("h1")
    site_dir = tmp_path_factory.mktemp("site")
    counts = install_with_rows(testbed, host, site_dir, bundle_dir, version)
    testbed.snapshot("h1", label)
    return site_dir, counts


def one_hop_fixtures(old: str, new: str, label: str) -> tuple[Any, Any]:
    """A module's two fixtures for one hop ``old`` -> ``new`` from a snapshot: ``bundles``
    (both offline installers) and ``snapshot`` (h1 on ``old`` with rows, kept as bed
    snapshot ``label``: (site dir, row counts)). In the module:
    ``bundles, snapshot = up.one_hop_fixtures(OLD, NEW, LABEL)``."""

    @pytest.fixture(scope="module", name="bundles")
    def bundles_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return bundles(tmp_path_factory, old, new)

    @pytest.fixture(scope="module", name="snapshot")
    def snapshot_fixture(testbed: TestBed, bundles: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
        return snapshot_with_rows(testbed, tmp_path_factory, bundles, old, label)

    return bundles_fixture, snapshot_fixture


def restored(testbed: TestBed, name: str, label: str) -> Host:
    """Bed snapshot ``label`` of host ``name`` booted; its containers come back by their
    restart policy (waited for until Harbor says healthy, bounded)."""
    host = testbed.restore(name, label)
    wait_healthy(health_url(host))
    return host


def on_release_with_every_row(host: Host, release: str, counts: str) -> None:
    """``host`` runs ``release`` (the link and core's image), with the rows ``counts`` says,
    a clean schema_migrations, exactly one database dir (owned by harbor-db's uid 999, mode
    0700) and no open upgrade window."""
    version, pg_dir = SCHEMA[release]
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{release}"
    assert f"harbor-core:v{release}" in host.exec("docker ps --format '{{.Image}}'").stdout
    assert psql(host, COUNT_SQL) == counts
    assert psql(host, "SELECT version, dirty FROM schema_migrations") == f"{version}|f"
    assert host.exec("ls -A /data/database").stdout.split() == [pg_dir]
    assert host.exec(f"stat -c '%u %a' /data/database/{pg_dir}").stdout.strip() == "999 700"
    assert host.exec("test -e /var/lib/harborctl/upgrade.window", check=False).returncode != 0


# The helper's ancestors that are sshd session processes ("sshd: root@notty"; never the
# listener, whose title is its command line or "sshd: ... [listener] ..."): killing them cuts
# exactly the session that started the window helper, as a dropped connection does. Prints
# the pids it killed.
DROP_SESSION = r"""
p=$(pgrep -o -f '[u]pgrade-window') || exit 3
killed=
while [ "$p" -gt 1 ]; do
  p=$(sed 's/.*) //' /proc/$p/stat | cut -d' ' -f2)
  case "$(tr '\0' ' ' < /proc/$p/cmdline)" in
    *"[listener]"*) ;;
    "sshd: "*) killed="$killed $p";;
  esac
done
[ -n "$killed" ] && kill -9 $killed && echo $killed
"""


def drop_window_session(host: Host) -> str:
    """Cut the SSH session that runs the window helper on ``host``; the pids killed."""
    got = host.exec(DROP_SESSION, check=False)
    assert got.returncode == 0, (got.stdout, got.stderr)
    return got.stdout.strip()


def paused(host: Host) -> list[str]:
    """The names of the host's paused containers."""
    return host.exec("docker ps --filter status=paused --format '{{.Names}}'").stdout.split()


WINDOW_LOCK = "/run/harborctl-upgrade-window.lock"  # the role's harbor_upgrade_window_lock


def held(j: list[Entry]) -> bool:
    """True of a journal whose window paused a container and never unpaused it."""
    return [e["event"] for e in j if e["event"] in ("pause", "unpause")] == ["pause"]


def kill_while_paused(argv: list[str], host: Host, stderr: Path) -> str:
    """Run ``argv``; once its window paused harbor-core (journaled, and paused indeed),
    SIGKILL the window helper (its pid from the window lock's holder line) and then
    ``argv``: nothing is left to unpause core. The holder line (pid, run, hop, step); the
    journal is polled every 50 ms, at most 900 s."""
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and proc.poll() is None:
                if held(journal(host)) and paused(host) == ["harbor-core"]:
                    holder = host.exec(f"cat {WINDOW_LOCK}").stdout
                    host.exec(f"kill -9 {int(holder.split('pid=', 1)[1].split()[0])}")
                    return holder
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
    raise AssertionError("the window never held harbor-core paused: "
                         + stderr.read_text()[-2000:])


def began(step: str) -> Callable[[list[Entry]], bool]:
    """True of a journal in which ``step`` began."""
    return lambda j: any(e["step"] == step and e["event"] == "begin" for e in j)


def at_step(host: Host, step: str, proc: subprocess.Popen[bytes],
            act: Callable[[Host], str]) -> str:
    """Poll the journal (every 50 ms, at most 900 s, while ``proc`` runs) until ``step``
    began, then ``act(host)``; what it returned ("" when the step never came)."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if began(step)(journal(host)):
            return act(host)
        time.sleep(0.05)
    return ""
