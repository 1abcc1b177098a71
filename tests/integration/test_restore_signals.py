"""restore replaces database, secret key and config as one unit, and a killed verify or
restore leaves nothing behind.

Real PostgreSQL 15 (the test module's cluster, an external database as Harbor's
``external_database`` would be). Failures are made real: a view that pg_restore cannot
drop, a signal delivered to this very process (``os.kill``) from the progress callback at
each named step, and ``harborctl backup verify`` killed as a child process mid-drill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harbor_ops.backup.catalog import list_backups
from harbor_ops.backup.engine import BackupResult
from harbor_ops.backup.restore import restore_backup, verify_backup
from harbor_ops.core.errors import BackupError
from harbor_ops.core.signals import Interrupted
from tests.integration.pgfixture import Cluster, HarborHost, backed_up_host, make_harbor_host

pytestmark = pytest.mark.integration

VERIFY_STEPS = ("checking checksums and file members", "starting a scratch PostgreSQL",
                "restoring the dump into the scratch cluster", "comparing row counts")
RESTORE_STEPS = ("checking and staging the host files",
                 "taking a safety backup of what the restore replaces", "dumping the database",
                 "restoring the database", "restoring host files")


@pytest.fixture(scope="module")
def backup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> BackupResult:
    """A backup of 300 artifacts, taken from a source host; targets hold 3."""
    return backed_up_host(cluster, tmp_path_factory.mktemp("source"), "registry_src",
                          artifacts=300, parts=("data", "yml"), hostname="src")[1]


@pytest.fixture
def site(tmp_path: Path) -> HarborHost:
    return make_harbor_host(tmp_path)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private parent for scratch clusters (postgres must traverse it: not pytest's)."""
    root = Path(tempfile.mkdtemp(prefix="harborctl-test-scratch-"))
    root.chmod(0o755)
    yield root
    os.rmdir(root)  # fails the test if anything was left inside


def _restore(site: HarborHost, backup: BackupResult, cluster: Cluster, db: str,
             progress: Callable[[str], None] | None = None) -> object:
    return restore_backup(path=backup.path, target=cluster.source(db), data_volume=site.data,
                          harbor_yml=site.yml, installed_version="2.14.4",
                          lock_path=site.lock, safety_dir=site.backups, hostname="target",
                          progress=progress)


def _state(site: HarborHost, cluster: Cluster, db: str) -> tuple[dict[str, int], bytes, bytes]:
    return (cluster.counts(db), (site.data / "secret/keys/secretkey").read_bytes(),
            site.yml.read_bytes())


def _leftovers(site: HarborHost, scratch: Path | None = None) -> list[str]:
    """Staging twins, partial backups, scratch folders, their processes and mounts."""
    out = [str(p) for p in site.root.rglob("*")
           if ".harborctl-restore" in p.name or ".harborctl-previous" in p.name
           or p.name.endswith(".partial")]
    if scratch is not None:
        out += [str(p) for p in scratch.iterdir()]
        for proc in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(scratch) in proc.read_bytes().replace(b"\0", b" ").decode():
                    out.append(f"process {proc.parent.name}")
            except OSError:
                continue
        out += [ln for ln in Path("/proc/mounts").read_text().splitlines()
                if str(scratch) in ln]
    return out


def _kill_at(step: str, signum: int) -> Callable[[str], None]:
    def progress(message: str) -> None:
        if message.startswith(step):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises long before this ends
    return progress


def test_restore_takes_a_safety_backup_that_restores_the_previous_data(
        site: HarborHost, backup: BackupResult, cluster: Cluster) -> None:
    old_rows = cluster.harbor_db("registry_t1", artifacts=3)
    old = _state(site, cluster, "registry_t1")
    r = _restore(site, backup, cluster, "registry_t1")
    assert cluster.counts("registry_t1")["artifact"] == 300
    safety = [e for e in list_backups(site.backups)]
    assert len(safety) == 1 and safety[0].manifest is not None
    assert safety[0].manifest.row_counts["artifact"] == 3
    assert any(safety[0].name in w for w in r.warnings)  # type: ignore[attr-defined]
    back = restore_backup(path=safety[0].path, target=cluster.source("registry_t1"),
                          data_volume=site.data, harbor_yml=site.yml,
                          installed_version="2.14.4", lock_path=site.lock)
    assert back.row_counts == old_rows and _state(site, cluster, "registry_t1") == old


def test_a_failed_database_restore_changes_nothing_and_says_so(
        site: HarborHost, backup: BackupResult, cluster: Cluster) -> None:
    cluster.harbor_db("registry_t2", artifacts=3)
    cluster.sql("CREATE SCHEMA reports; CREATE VIEW reports.v AS SELECT id FROM artifact;",
                "registry_t2")  # pg_restore --clean cannot drop artifact now
    old = _state(site, cluster, "registry_t2")
    with pytest.raises(BackupError) as exc:
        _restore(site, backup, cluster, "registry_t2")
    assert "the database and host files hold its previous data (the restore changed " \
        "nothing)" in str(exc.value)
    assert "depend" in str(exc.value)
    assert _state(site, cluster, "registry_t2") == old
    assert _leftovers(site) == []


def test_a_failure_after_the_database_puts_the_previous_data_back(
        site: HarborHost, backup: BackupResult, cluster: Cluster) -> None:
    cluster.harbor_db("registry_t3", artifacts=3)
    old = _state(site, cluster, "registry_t3")

    def fail_at_files(message: str) -> None:
        if message == "restoring host files":
            raise OSError(28, "No space left on device")

    with pytest.raises(BackupError) as exc:
        _restore(site, backup, cluster, "registry_t3", fail_at_files)
    safety = list_backups(site.backups)[0].name
    assert (f"the database and host files hold its previous data, put back from the safety "
            f"backup {safety}") in str(exc.value)
    assert _state(site, cluster, "registry_t3") == old
    assert _leftovers(site) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_a_killed_restore_leaves_the_previous_state_and_nothing_else(
        step: str, signum: int, site: HarborHost, backup: BackupResult,
        cluster: Cluster) -> None:
    db = "registry_kill_restore"
    cluster.harbor_db(db, artifacts=3)
    old = _state(site, cluster, db)
    with pytest.raises((BackupError, Interrupted)) as exc:
        _restore(site, backup, cluster, db, _kill_at(step, signum))
    assert signal.Signals(signum).name in str(exc.value)
    assert _state(site, cluster, db) == old
    assert _leftovers(site) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("step", VERIFY_STEPS)
def test_a_killed_verify_leaves_no_file_process_or_mount(
        step: str, signum: int, site: HarborHost, backup: BackupResult,
        scratch: Path) -> None:
    with pytest.raises(Interrupted):
        verify_backup(path=backup.path, lock_path=site.lock, scratch_root=scratch,
                      progress=_kill_at(step, signum))
    assert _leftovers(site, scratch) == []


def test_harborctl_verify_killed_mid_drill_cleans_up(cluster: Cluster, site: HarborHost,
                                                     scratch: Path) -> None:
    """As a user meets it: the CLI in its own process, SIGTERM while pg_restore runs."""
    cluster.harbor_db("registry_big", artifacts=40000, pad=2)
    config = site.site_file(cluster, "registry_big")
    created = site.harborctl(config, "backup", "create")
    assert created.returncode == 0, created.stderr
    env = {**site.env(), "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "harbor_ops.cli.main", "backup", "verify",
                             "--config", str(config)], env=env, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # bounded: the process ends, and with it the stream
        if "restoring the dump into the scratch cluster" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err
    assert _leftovers(site, scratch) == []
    assert list_backups(site.backups)[0].verified is None  # never recorded as bad
