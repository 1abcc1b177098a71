"""The agent under real faults: a stopped or hanging-up database, a backup folder that
fills during the dump, and a good night. ``harborctl agent once`` runs as a child process,
as the systemd timer or cron line runs it; the test reads what an operator would: the
status file, the Prometheus textfile and the backup folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.agent.jobs import BACKUP_ATTEMPTS, BACKUP_RETRY_ENV
from harbor_ops.backup.catalog import list_backups
from harbor_ops.backup.manifest import PARTIAL_SUFFIX
from harbor_ops.backup.restore import verify_backup
from tests.integration.pgfixture import (
    Cluster,
    HarborHost,
    free_port,
    make_harbor_host,
    running_cluster,
    small_tmpfs,
)

pytestmark = pytest.mark.integration

RETRY = "1,2"  # waits between the three attempts: 1 s, then 2 s


@pytest.fixture
def harbor_host(tmp_path: Path) -> HarborHost:
    return make_harbor_host(tmp_path)


def _agent_site(host: HarborHost, cluster: Cluster, db: str, *,
                backups: Path | None = None, port: int | None = None) -> Path:
    extra = f"""agent:
  status_file: {host.root / "state" / "status.json"}
  metrics_dir: {host.root / "metrics"}
  bundle_dir: {host.root / "bundles"}
"""
    (host.root / "metrics").mkdir(exist_ok=True)
    site = host.site_file(cluster, db, extra=extra, backups=backups)
    if port is not None:  # the database moved to a port of the test's own
        site.write_text(site.read_text().replace(f"port: {cluster.port}\n", f"port: {port}\n"))
    return site


def _once(host: HarborHost, site: Path) -> tuple[dict[str, Any], str]:
    proc = host.harborctl(site, "agent", "once", "-o", "json", timeout=600,
                          **{BACKUP_RETRY_ENV: RETRY})
    assert proc.returncode == 0, proc.stderr  # the agent itself succeeded
    status = json.loads((host.root / "state" / "status.json").read_text())
    metrics = (host.root / "metrics" / "harborctl.prom").read_text()
    return status["jobs"], metrics


def test_stopped_database_is_recorded_after_bounded_retries(harbor_host: HarborHost) -> None:
    with running_cluster() as own:  # a cluster of its own: this test stops it
        own.harbor_db("registry_down", artifacts=5)
        site = _agent_site(harbor_host, own, "registry_down")
        own.stop()
        jobs, metrics = _once(harbor_host, site)
    backup = jobs["backup"]
    assert backup["result"] == "failed" and backup["failures"] == 1
    assert "Connection refused" in backup["error"] or "connection to server" in backup["error"]
    assert "s3cret" not in json.dumps(jobs)
    # three attempts separated by 1 s and 2 s waits (that no more are made: the test below
    # counts the sessions; an upper bound on time would measure this machine's speed)
    assert backup["duration_seconds"] >= 3.0
    assert 'harborctl_job_success{job="backup"} 0' in metrics
    assert 'harborctl_job_failures_total{job="backup"} 1' in metrics
    assert "harborctl_backup_last_success_timestamp_seconds" not in metrics
    assert not harbor_host.backups.exists() or not any(harbor_host.backups.iterdir())


class _HangUp:
    """A port that accepts TCP connections and closes them at once, counting them:
    a database that is up but refuses every session."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def test_refused_sessions_are_retried_exactly_within_bounds(cluster: Cluster,
                                                            harbor_host: HarborHost) -> None:
    hang = _HangUp()
    try:
        site = _agent_site(harbor_host, cluster, "registry", port=hang.port)
        jobs, metrics = _once(harbor_host, site)
    finally:
        hang.close()
    backup = jobs["backup"]
    assert backup["result"] == "failed" and backup["failures"] == 1
    assert "closed the connection" in backup["error"] or "terminated" in backup["error"]
    # one session per attempt: the retries are real and bounded
    assert hang.accepted == BACKUP_ATTEMPTS
    assert backup["duration_seconds"] >= 3.0  # the waits between attempts were kept
    assert 'harborctl_job_success{job="backup"} 0' in metrics


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs whose size the test sets (``remount``); unmounted in the finalizer."""
    with small_tmpfs(tmp_path / "small", "64m") as mnt:
        yield mnt


def test_backup_folder_fills_during_the_dump(cluster: Cluster, harbor_host: HarborHost,
                                             small_fs: Path) -> None:
    mnt = small_fs
    backups = mnt / "backups"
    site = _agent_site(harbor_host, cluster, "registry_fill", backups=backups)
    cluster.harbor_db("registry_fill", artifacts=20, pad=1)
    older = harbor_host.harborctl(site, "backup", "create", "-o", "json")
    assert older.returncode == 0, older.stderr
    older_name = json.loads(older.stdout)["name"]

    # ~20 MB of incompressible rows; the engine estimates half the table size, so a
    # filesystem between the estimate and the real dump size fills DURING the dump.
    cluster.harbor_db("registry_fill", artifacts=20000, pad=64)
    data_size = int(cluster.sql(
        "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public'",
        "registry_fill").strip())
    size = data_size // 2 + (2 << 20)
    assert size < 20 << 20 < data_size  # the dump cannot fit, the estimate does
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    jobs, metrics = _once(harbor_host, site)
    backup = jobs["backup"]
    assert backup["result"] == "failed" and backup["failures"] == 1
    assert "ran out of space during the dump" in backup["error"]
    assert 'harborctl_job_success{job="backup"} 0' in metrics
    # nothing partial, the older backup intact: listed, and the drill restored it
    assert sorted(os.listdir(backups)) == [older_name, older_name + ".verified.json"]
    assert not list(backups.glob(f"*{PARTIAL_SUFFIX}"))
    assert jobs["drill"]["result"] == "ok", jobs["drill"]["error"]
    assert [e.name for e in list_backups(backups)] == [older_name]
    assert verify_backup(path=backups / older_name, lock_path=harbor_host.lock).ok


def test_a_good_night_backs_up_and_the_drill_proves_it(cluster: Cluster,
                                                       harbor_host: HarborHost) -> None:
    counts = cluster.harbor_db("registry_ok", artifacts=500)
    site = _agent_site(harbor_host, cluster, "registry_ok")
    jobs, metrics = _once(harbor_host, site)
    assert jobs["backup"]["result"] == "ok", jobs["backup"]["error"]
    assert jobs["backup"]["detail"]["backup_size_bytes"] > 0
    assert jobs["drill"]["result"] == "ok", jobs["drill"]["error"]
    assert jobs["drill"]["detail"]["drill_rows"] == sum(counts.values())
    assert "harborctl_backup_last_success_timestamp_seconds " in metrics
    assert 'harborctl_job_success{job="backup"} 1' in metrics
    assert 'harborctl_job_success{job="drill"} 1' in metrics
    [entry] = list_backups(harbor_host.backups)
    assert entry.verified is True and entry.manifest is not None
    assert entry.manifest.row_counts == counts
    # the next tick a minute later finds nothing of the nightly work due
    again = harbor_host.harborctl(site, "agent", "once", "-o", "json")
    assert again.returncode == 0, again.stderr
    ran = json.loads(again.stdout)["ran"]
    assert "backup" not in ran and "drill" not in ran
