"""Off-host copies encrypted in the age format: a real backup pushed over real SSH to a
test-bed host, decrypted there by nobody, by the standard ``age`` tool here, and brought
back with ``pull`` for a real restore."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.backup.catalog import list_backups
from harbor_ops.backup.engine import BackupResult
from harbor_ops.backup.manifest import read_push_record
from harbor_ops.backup.remote import (
    list_remote,
    mark_verified,
    prune_remote,
    pull_backup,
    push_backup,
)
from harbor_ops.backup.restore import restore_backup, verify_backup
from harbor_ops.core.errors import BackupError
from harbor_ops.site.model import Encryption, Keep, Remote
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration.pgfixture import Cluster, backed_up_host

pytestmark = pytest.mark.integration

REMOTE_DIR = "/var/backups/harbor-age"
# What must never reach the remote host in the clear: 64 KiB of random bytes, which zstd
# cannot shrink and so stores as they are: the plain backup provably holds them (the
# test's control), so their absence from the remote copy means something.
SECRET_KEY = os.urandom(1 << 16)
PROBE = SECRET_KEY[1000:1064]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Encryption, Path]:
    """An age identity made by the standard tool (age-keygen), as an operator makes one."""
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        unavailable("needs the age tool (Debian package age, see .ci/provision)")
    folder = tmp_path_factory.mktemp("age")
    identity = folder / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    return Encryption(recipients=(recipient,), identity_file=identity), identity


@pytest.fixture(scope="module")
def backup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> BackupResult:
    return backed_up_host(cluster, tmp_path_factory.mktemp("age-src"), "registry_age",
                          artifacts=500, secret_key=SECRET_KEY, parts=("data",))[1]


@pytest.fixture
def h1(testbed: TestBed) -> Iterator[Host]:
    host = testbed.hosts["h1"]
    yield host
    host.exec(f"rm -rf {REMOTE_DIR}", check=False)


def _remote(host: Host) -> Remote:
    return Remote(host=host.name, path=REMOTE_DIR, key_file=host.key)


def _fetch(host: Host, name: str) -> bytes:
    return base64.b64decode(host.exec(f"base64 -w0 {REMOTE_DIR}/{name}").stdout)


def test_the_remote_copy_is_age_and_holds_no_secret(backup: BackupResult, h1: Host,
                                                    keys: tuple[Encryption, Path],
                                                    tmp_path: Path) -> None:
    enc, identity = keys
    plain = backup.path.read_bytes()
    assert PROBE in plain  # the local backup holds it (the control)
    pushed = push_backup(backup.path, _remote(h1), ssh_config=h1.ssh_config, encryption=enc)
    assert pushed.name == backup.name + ".age"
    there = h1.exec(f"ls {REMOTE_DIR}").stdout.split()
    assert backup.name not in there and pushed.name in there
    copy = _fetch(h1, pushed.name)
    assert copy.startswith(b"age-encryption.org/v1\n")
    assert PROBE not in copy
    # checked by the remote host's hash of what was uploaded, recorded beside the backup
    remote_sha = h1.exec(f"sha256sum {REMOTE_DIR}/{pushed.name}").stdout.split()[0]
    assert remote_sha == pushed.sha256 == read_push_record(backup.path)["sha256"]  # type: ignore[index]
    # the standard age tool decrypts it to the very backup
    (tmp_path / "copy.age").write_bytes(copy)
    out = subprocess.run(["age", "-d", "-i", str(identity), str(tmp_path / "copy.age")],
                         capture_output=True, check=True)
    assert out.stdout == plain
    # pushed again: found complete by the recorded checksum, not encrypted again
    again = push_backup(backup.path, _remote(h1), ssh_config=h1.ssh_config, encryption=enc)
    assert again.already_there and again.sha256 == pushed.sha256


def test_pull_restores_with_the_identity_and_refuses_clearly_without(
        backup: BackupResult, h1: Host, keys: tuple[Encryption, Path], cluster: Cluster,
        tmp_path: Path) -> None:
    enc, _identity = keys
    push_backup(backup.path, _remote(h1), ssh_config=h1.ssh_config, encryption=enc)
    here = tmp_path / "backups"
    public_only = Encryption(recipients=enc.recipients)
    with pytest.raises(BackupError, match="is encrypted and no identity can decrypt it"):
        pull_backup(_remote(h1), here, hostname="hb", encryption=public_only,
                    ssh_config=h1.ssh_config)
    assert not here.exists()  # refused before a byte came down: not even the folder is made
    pulled = pull_backup(_remote(h1), here, hostname="hb", encryption=enc,
                         ssh_config=h1.ssh_config)
    assert pulled.decrypted and pulled.path.read_bytes() == backup.path.read_bytes()
    assert pulled.path.stat().st_mode & 0o777 == 0o600
    assert [e.name for e in list_backups(here)] == [backup.name]
    cluster.sql('DROP DATABASE IF EXISTS "restored_age"; '
                'CREATE DATABASE "restored_age" OWNER harbor;')
    data = tmp_path / "newhost" / "data"
    r = restore_backup(path=pulled.path, target=cluster.source("restored_age"),
                       data_volume=data, installed_version="2.14.4",
                       lock_path=tmp_path / "lock")
    assert r.row_counts["artifact"] == 500 == cluster.counts("restored_age")["artifact"]
    assert (data / "secret/keys/secretkey").read_bytes() == SECRET_KEY


def test_a_copy_that_passes_the_drill_is_marked_verified_there(
        cluster: Cluster, h1: Host, keys: tuple[Encryption, Path], tmp_path: Path) -> None:
    enc, _identity = keys
    host, older = backed_up_host(cluster, tmp_path, "registry_mark", artifacts=5,
                                 secret_key=SECRET_KEY, parts=("data",))
    made = [older, host.backup(cluster, "registry_mark", parts=("data",))]
    for b in made:
        push_backup(b.path, _remote(h1), ssh_config=h1.ssh_config, encryption=enc)
    assert verify_backup(path=older.path, lock_path=host.lock).ok
    assert mark_verified(older.path, _remote(h1), ssh_config=h1.ssh_config)
    listed = {e.name: e.verified for e in list_remote(_remote(h1), ssh_config=h1.ssh_config)}
    assert listed == {older.name + ".age": True, made[1].name + ".age": None}
    pruned = prune_remote(_remote(h1), Keep(daily=1, weekly=0, monthly=0),
                          ssh_config=h1.ssh_config, hostname="hb")
    assert pruned == []  # the newest, and the newest verified: both kept
