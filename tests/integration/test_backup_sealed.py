"""Sealed backups (.hbk.age), the controller's copies of SSH hosts: written encrypted from
the first byte, read back as a stream (verify, drill, restore) with the identity, refused
clearly without it, and opened in a disaster by the standard ``age`` tool and ``tar``.

The same engine writes them for any database source, so a real PostgreSQL here is
enough for the format; tests/integration/test_backup_remote.py runs it on a bed host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.backup import archive
from harbor_ops.backup.catalog import find_backup, list_backups, prune_backups
from harbor_ops.backup.engine import BackupResult, HostFiles, create_backup
from harbor_ops.backup.manifest import DB_MEMBER, FILES_MEMBER, MANIFEST_MEMBER
from harbor_ops.backup.restore import restore_backup, verify_backup
from harbor_ops.core.errors import BackupError
from harbor_ops.site.model import Encryption, Keep
from tests.bed.fixtures import unavailable
from tests.integration.pgfixture import Cluster, running_cluster

pytestmark = pytest.mark.integration

# 64 KiB of random bytes: zstd stores them as they are, so a plain backup provably
# holds them (the control) and their absence from the sealed file means something.
SECRET_KEY = os.urandom(1 << 16)
PROBE = SECRET_KEY[1000:1064]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Encryption:
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        unavailable("needs the age tool (Debian package age, see .ci/provision)")
    identity = tmp_path_factory.mktemp("age") / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    return Encryption(recipients=(recipient,), identity_file=identity)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sealed")
    (root / "data/secret/keys").mkdir(parents=True)
    (root / "data/secret/keys/secretkey").write_bytes(SECRET_KEY)
    (root / "harbor.yml").write_text("hostname: harbor.test.internal\n")
    return root


def _create(cluster: Cluster, site: Path, enc: Encryption | None, db: str) -> BackupResult:
    return create_backup(backup_dir=site / "backups", source=cluster.source(db),
                         files=HostFiles(data_volume=site / "data",
                                         harbor_yml=site / "harbor.yml"),
                         harbor_version="2.14.4", hostname="h1", lock_path=site / "lock",
                         encryption=enc)


@pytest.fixture(scope="module")
def sealed(cluster: Cluster, site: Path, keys: Encryption) -> BackupResult:
    cluster.harbor_db("registry_sealed", artifacts=300)
    return _create(cluster, site, keys, "registry_sealed")


def test_the_sealed_file_holds_no_plain_secret_and_no_plain_file_was_left(
        cluster: Cluster, site: Path, sealed: BackupResult) -> None:
    plain = _create(cluster, site, None, "registry_sealed")  # the control
    assert PROBE in plain.path.read_bytes()
    assert sealed.path.name.endswith(".hbk.age") and sealed.path.stat().st_mode & 0o777 == 0o600
    assert PROBE not in sealed.path.read_bytes()
    assert sealed.path.read_bytes().startswith(b"age-encryption.org/v1\n")
    names = {p.name for p in (site / "backups").iterdir()}
    assert names == {sealed.path.name, plain.path.name}  # no spool, no partial
    plain.path.unlink()


def test_the_standard_age_tool_and_tar_open_it(sealed: BackupResult, keys: Encryption,
                                               tmp_path: Path) -> None:
    assert keys.identity_file is not None
    out = tmp_path / "b.hbk"
    subprocess.run(["age", "-d", "-i", str(keys.identity_file), "-o", str(out),
                    str(sealed.path)], check=True)
    with tarfile.open(out) as tar:
        assert tar.getnames() == [MANIFEST_MEMBER, FILES_MEMBER, DB_MEMBER]
    assert archive.check_members(out, sealed.manifest) == []
    assert archive.read_manifest(out) == sealed.manifest


def test_verify_drills_and_restore_puts_it_back_with_the_identity(
        cluster: Cluster, sealed: BackupResult, keys: Encryption, tmp_path: Path) -> None:
    with archive.decrypting(keys):
        listed = {e.name: e for e in list_backups(sealed.path.parent)}
        assert listed[sealed.name].manifest == sealed.manifest
        result = verify_backup(path=sealed.path, lock_path=tmp_path / "lock")
        assert result.ok and result.restore_ok
        assert result.row_counts == sealed.manifest.row_counts
        target = tmp_path / "target"
        (target / "data/secret/keys").mkdir(parents=True)
        (target / "data/secret/keys/secretkey").write_bytes(b"other")
        cluster.harbor_db("registry_sealed_target", artifacts=3)
        restore_backup(path=sealed.path, target=cluster.source("registry_sealed_target"),
                       data_volume=target / "data", installed_version="2.14.4",
                       lock_path=tmp_path / "lock", safety_dir=tmp_path / "safety",
                       hostname="h1", seal=keys)
    assert (target / "data/secret/keys/secretkey").read_bytes() == SECRET_KEY
    assert cluster.counts("registry_sealed_target") == sealed.manifest.row_counts
    safety = list((tmp_path / "safety").iterdir())
    assert [p.name.endswith(".hbk.age") for p in safety] == [True]  # sealed too
    assert b"other" not in safety[0].read_bytes()


def test_without_the_identity_it_is_listed_pruned_and_refused_clearly(
        sealed: BackupResult, keys: Encryption, tmp_path: Path) -> None:
    entry = next(e for e in list_backups(sealed.path.parent) if e.name == sealed.name)
    assert entry.manifest is None and entry.problem is None and entry.sealed
    assert find_backup(sealed.path.parent, None) == sealed.path
    kept = prune_backups(backup_dir=sealed.path.parent, keep=Keep(daily=0, weekly=0,
                                                                  monthly=0),
                         hostname="h1", dry_run=True)
    assert sealed.name in kept.kept
    public_only = Encryption(recipients=keys.recipients)
    with archive.decrypting(public_only), \
            pytest.raises(BackupError, match="encrypted and no identity can decrypt it"):
        verify_backup(path=sealed.path, lock_path=tmp_path / "lock", restore_drill=False)
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    with archive.decrypting(Encryption(recipients=keys.recipients, identity_file=other)), \
            pytest.raises(BackupError, match="cannot decrypt"):
        verify_backup(path=sealed.path, lock_path=tmp_path / "lock", restore_drill=False)


def test_a_cut_short_sealed_file_never_verifies(sealed: BackupResult, keys: Encryption,
                                                tmp_path: Path) -> None:
    cut = tmp_path / sealed.name
    data = sealed.path.read_bytes()
    cut.write_bytes(data[:len(data) - 1000])
    with archive.decrypting(keys), pytest.raises(BackupError, match="verify failed"):
        verify_backup(path=cut, lock_path=tmp_path / "lock", restore_drill=False)
