"""harborctl backup against a real PostgreSQL 15 cluster started for the test module.

The cluster and the Harbor host's files come from :mod:`tests.integration.pgfixture`;
everything is stopped and deleted in finalizers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.backup import archive
from harbor_ops.backup.catalog import list_backups, prune_backups
from harbor_ops.backup.engine import BackupResult, HostFiles, create_backup
from harbor_ops.backup.manifest import PARTIAL_SUFFIX, read_sidecar
from harbor_ops.backup.restore import restore_backup, verify_backup
from harbor_ops.core.errors import BackupError, LockHeld
from harbor_ops.core.lock import job_lock
from harbor_ops.site.model import Keep
from tests.integration.pgfixture import (
    PASSWORD,
    Cluster,
    HarborHost,
    free_port,
    make_harbor_host,
    small_tmpfs,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def host(tmp_path: Path) -> HarborHost:
    return make_harbor_host(tmp_path)


def _files(host: HarborHost) -> HostFiles:
    return HostFiles(data_volume=host.data, harbor_yml=host.yml,
                     certificates=(host.cert,))


def _create(cluster: Cluster, host: HarborHost, db: str, **kw: Any) -> BackupResult:
    return create_backup(backup_dir=host.backups, source=cluster.source(db),
                         files=_files(host), harbor_version="2.14.4", hostname="hb",
                         lock_path=host.lock, **kw)


def test_create_list_verify_restore_round_trip(cluster: Cluster, host: HarborHost) -> None:
    expected = cluster.harbor_db("registry_rt", artifacts=500)
    result = _create(cluster, host, "registry_rt")
    m = result.manifest
    assert m.row_counts == {**expected}
    assert (m.pg_major, m.schema_version, m.schema_dirty) == ("15", 171, False)
    assert m.harbor_version == "2.14.4" and m.source_kind == "external"
    assert PASSWORD not in result.path.read_bytes().decode(errors="replace")
    assert result.path.stat().st_mode & 0o777 == 0o600
    assert host.backups.stat().st_mode & 0o777 == 0o700
    assert [n for n in os.listdir(host.backups)] == [result.name]

    listed = list_backups(host.backups)
    assert [e.name for e in listed] == [result.name] and listed[0].verified is None

    v = verify_backup(path=result.path, lock_path=host.lock)
    assert v.ok and v.row_counts == expected
    assert list_backups(host.backups)[0].verified is True

    cluster.sql('DROP DATABASE IF EXISTS "restored"; CREATE DATABASE "restored" OWNER harbor;')
    target_data = host.root / "newhost" / "data"
    target_yml = host.root / "newhost" / "harbor.yml"
    r = restore_backup(path=result.path, target=cluster.source("restored"),
                       data_volume=target_data, harbor_yml=target_yml,
                       installed_version="2.14.4",
                       lock_path=host.lock)
    assert r.row_counts == expected == cluster.counts("restored")
    assert (target_data / "secret/keys/secretkey").read_bytes() == \
        (host.data / "secret/keys/secretkey").read_bytes()
    assert (target_data / "secret/keys/secretkey").stat().st_mode & 0o777 == 0o600
    assert target_yml.read_text() == host.yml.read_text()

    # restoring again over the restored database is idempotent (--clean, one transaction)
    restore_backup(path=result.path, target=cluster.source("restored"),
                   installed_version="2.14.4", lock_path=host.lock)
    assert cluster.counts("restored") == expected


def test_version_misfit_is_refused_unless_forced(cluster: Cluster, host: HarborHost) -> None:
    cluster.harbor_db("registry_v", artifacts=10)
    b = _create(cluster, host, "registry_v")
    with pytest.raises(BackupError, match="older"):
        restore_backup(path=b.path, target=cluster.source("registry_v"),
                       installed_version="2.13.5", lock_path=host.lock)
    r = restore_backup(path=b.path, target=cluster.source("registry_v"),
                       installed_version="2.13.5", force_version=True, lock_path=host.lock)
    assert any("older" in w for w in r.warnings)


def test_flipped_byte_fails_verify_and_restore_refuses(cluster: Cluster,
                                                       host: HarborHost) -> None:
    cluster.harbor_db("registry_c", artifacts=300)
    b = _create(cluster, host, "registry_c")
    with open(b.path, "r+b") as f:
        f.seek(512 + b.manifest.members[0].size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(BackupError, match="SHA-256"):
        verify_backup(path=b.path, lock_path=host.lock)
    assert read_sidecar(b.path)["ok"] is False  # type: ignore[index]
    assert list_backups(host.backups)[0].verified is False
    with pytest.raises(BackupError, match="refusing"):
        restore_backup(path=b.path, target=cluster.source("registry_c"),
                       installed_version="2.14.4", lock_path=host.lock)
    assert cluster.counts("registry_c")["artifact"] == 300


def test_second_job_is_refused_with_lock_held(cluster: Cluster, host: HarborHost) -> None:
    cluster.harbor_db("registry_l", artifacts=10)
    with job_lock(host.lock, job="upgrade apply"), pytest.raises(LockHeld, match="upgrade"):
        _create(cluster, host, "registry_l")
    assert LockHeld.exit_code == 7
    _create(cluster, host, "registry_l")  # the lock is free again


def test_database_down_is_a_clear_error(cluster: Cluster, host: HarborHost) -> None:
    src = cluster.source("registry", port=free_port())
    with pytest.raises(BackupError, match="Connection refused|connection to server"):
        create_backup(backup_dir=host.backups, source=src, files=_files(host),
                      harbor_version="2.14.4", lock_path=host.lock)
    assert not [p for p in host.backups.iterdir()]


def test_wrong_password_is_a_clear_error_without_the_password(cluster: Cluster,
                                                              host: HarborHost) -> None:
    cluster.harbor_db("registry_pw", artifacts=1)
    src = cluster.source("registry_pw", password="wrong-" + PASSWORD)
    with pytest.raises(BackupError, match="password authentication failed") as exc:
        create_backup(backup_dir=host.backups, source=src, files=_files(host),
                      harbor_version="2.14.4", lock_path=host.lock)
    assert PASSWORD not in str(exc.value)


def test_missing_secret_key_is_refused(cluster: Cluster, host: HarborHost) -> None:
    cluster.harbor_db("registry_k", artifacts=1)
    (host.data / "secret/keys/secretkey").unlink()
    with pytest.raises(BackupError, match="secretkey"):
        _create(cluster, host, "registry_k")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "4m") as mnt:
        yield mnt


def test_full_backup_folder(cluster: Cluster, host: HarborHost, small_fs: Path) -> None:
    host.backups = small_fs / "backups"
    cluster.harbor_db("registry_small", artifacts=50)
    older = _create(cluster, host, "registry_small", reserve_bytes=0)
    cluster.harbor_db("registry_big", artifacts=40000, pad=16)  # 10 MB of random bytes
    # refused up front: the estimate does not fit
    with pytest.raises(BackupError, match="not enough free space"):
        _create(cluster, host, "registry_big", reserve_bytes=0)
    # the estimate is fooled: the filesystem fills during the dump
    with pytest.raises(BackupError, match="ran out of space|not enough"):
        _create(cluster, host, "registry_big", reserve_bytes=0, estimate_ratio=0.0)
    assert sorted(os.listdir(host.backups)) == [older.name]
    # the space guard stops before the filesystem is completely full
    with pytest.raises(BackupError, match="ran out of space"):
        _create(cluster, host, "registry_big", reserve_bytes=1 << 20, estimate_ratio=0.0)
    assert sorted(os.listdir(host.backups)) == [older.name]
    assert verify_backup(path=older.path, lock_path=host.lock).ok


def _harborctl(host: HarborHost, site: Path, *args: str) -> subprocess.Popen[bytes]:
    """``harborctl <args>`` in its own session, so a test can kill it at any moment."""
    return subprocess.Popen([sys.executable, "-m", "harbor_ops.cli.main", *args,
                             "--config", str(site)], env=host.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _reap_group(proc: subprocess.Popen[bytes]) -> None:
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
                                                              host: HarborHost) -> None:
    cluster.harbor_db("registry_kill", artifacts=30000, pad=1)
    site = host.site_file(cluster, "registry_kill")
    first = _harborctl(host, site, "backup", "create")
    t0 = time.monotonic()
    out, err = first.communicate(timeout=120)
    duration = time.monotonic() - t0
    assert first.returncode == 0, err.decode()
    earlier = list_backups(host.backups)
    assert len(earlier) == 1
    rng = random.Random(5)
    kills = 0
    # Each kill moment is drawn below the shortest run seen so far, so a loaded (or an idle)
    # machine still kills most runs mid-way; bounded in count and time.
    shortest = duration
    deadline = time.monotonic() + 900
    for _ in range(120):
        if kills >= 20 or time.monotonic() > deadline:
            break
        started = time.monotonic()
        proc = _harborctl(host, site, "backup", "create")
        time.sleep(rng.uniform(0.05, 0.9 * shortest))
        if proc.poll() is None:
            kills += 1
        else:
            shortest = min(shortest, time.monotonic() - started)
        proc.kill()
        proc.communicate(timeout=30)
        _reap_group(proc)
        for e in list_backups(host.backups):
            assert e.manifest is not None, e.problem
            assert archive.check_members(e.path, e.manifest) == []
        # backup names have one-second resolution
        time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
    assert kills >= 20, f"only {kills} runs were still running at their kill moment"
    last = _harborctl(host, site, "backup", "create")
    _, err = last.communicate(timeout=120)
    assert last.returncode == 0, err.decode()
    assert not list(host.backups.glob(f"*{PARTIAL_SUFFIX}"))
    names = [e.name for e in list_backups(host.backups)]
    assert earlier[0].name in names and len(names) >= 2
    assert verify_backup(path=earlier[0].path, lock_path=host.lock).ok


def test_cli_list_json_and_busy_exit_code(cluster: Cluster, host: HarborHost) -> None:
    import json

    cluster.harbor_db("registry_cli", artifacts=10)
    site = host.site_file(cluster, "registry_cli")
    p = _harborctl(host, site, "backup", "create", "-o", "json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    name = json.loads(out)["name"]
    p = _harborctl(host, site, "backup", "list", "-o", "json")
    out, _ = p.communicate(timeout=60)
    assert [r["name"] for r in json.loads(out)] == [name]
    with job_lock(host.lock, job="install"):
        p = _harborctl(host, site, "backup", "create")
        _, err = p.communicate(timeout=60)
    assert p.returncode == 7 and b"busy" in err
    assert PASSWORD.encode() not in err


def test_prune_keeps_newest_verified(cluster: Cluster, host: HarborHost) -> None:
    cluster.harbor_db("registry_p", artifacts=5)
    a = _create(cluster, host, "registry_p")
    verify_backup(path=a.path, lock_path=host.lock)
    time.sleep(1.1)
    b = _create(cluster, host, "registry_p")
    partial = host.backups / ("harbor-hb-20000101T000000Z.hbk" + PARTIAL_SUFFIX)
    partial.write_bytes(b"junk")
    r = prune_backups(backup_dir=host.backups, keep=Keep(daily=0, weekly=0, monthly=0),
                      hostname="hb", lock_path=host.lock)
    assert r.deleted == [] and set(r.kept) == {a.name, b.name}
    assert not partial.exists()


def test_two_backups_in_the_same_second_both_succeed(cluster: Cluster, host: HarborHost,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade's backup right after the nightly one, or an agent retry, gets its own name.

    The clock is frozen, so even the millisecond is the same: the name is still unique,
    and it is settled before the dump (the database is read once per backup).
    """
    from datetime import UTC, datetime

    from harbor_ops.backup import engine

    cluster.harbor_db("registry_same", artifacts=5)
    frozen = datetime(2026, 12, 1, 2, 30, 0, 123456, tzinfo=UTC)
    monkeypatch.setattr(engine, "utc_now", lambda: frozen)
    first = _create(cluster, host, "registry_same")
    second = _create(cluster, host, "registry_same")
    assert first.name == "harbor-hb-20261201T023000.123Z.hbk"
    assert second.name == "harbor-hb-20261201T023000.123Z-1.hbk"
    assert [e.name for e in list_backups(host.backups)] == [second.name, first.name]
    assert verify_backup(path=second.path, lock_path=host.lock).ok


def test_a_clash_is_found_before_the_dump(cluster: Cluster, host: HarborHost,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from harbor_ops.backup import engine

    cluster.harbor_db("registry_clash", artifacts=5)

    def reserve(folder: Path, host: str, **_kw: object) -> Path:
        raise BackupError("no free backup name (test)")

    dumps: list[object] = []
    monkeypatch.setattr(engine, "reserve_name", reserve)
    monkeypatch.setattr(engine, "_dump", lambda *a: dumps.append(a))
    with pytest.raises(BackupError, match="no free backup name"):
        _create(cluster, host, "registry_clash")
    assert dumps == [] and list(host.backups.iterdir()) == []


def test_shared_folder_prune_and_cleanup_touch_only_this_host(
        cluster: Cluster, host: HarborHost) -> None:
    cluster.harbor_db("registry_shared", artifacts=5)
    other = create_backup(backup_dir=host.backups, source=cluster.source("registry_shared"),
                          files=_files(host), harbor_version="2.14.4", hostname="other",
                          lock_path=host.lock)
    their_partial = host.backups / ("harbor-other-20261201T010000.000Z.hbk" + PARTIAL_SUFFIX)
    their_partial.write_bytes(b"another host is writing this right now")
    my_partial = host.backups / ("harbor-hb-20261201T010000.000Z.hbk" + PARTIAL_SUFFIX)
    my_partial.write_bytes(b"junk of a crashed run")
    mine = [_create(cluster, host, "registry_shared") for _ in range(2)]
    assert their_partial.exists() and not my_partial.exists()
    my_partial.write_bytes(b"junk of a crashed run")
    r = prune_backups(backup_dir=host.backups, keep=Keep(daily=0, weekly=0, monthly=0),
                      hostname="hb", lock_path=host.lock)
    assert r.deleted == [mine[0].name] and set(r.kept) == {mine[1].name}
    assert other.path.exists() and their_partial.exists() and not my_partial.exists()
