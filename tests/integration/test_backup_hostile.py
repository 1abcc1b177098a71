"""A backup archive is untrusted input: forged archives are refused by verify and restore.

Each archive below is what someone able to write the backup folder (or the off-host
copy) could forge: a real backup's database dump with hostile file members or a
hostile manifest, all checksums recomputed so that only content checks can catch it.
``verify`` and ``restore`` must refuse every one with a clear message, before anything
of the site is touched, and write nothing outside the site's own paths.

A manifest naming ``/etc/cron.d/x`` as the file a certificate was saved from is refused
as a whole; restore destinations always come from the site, whatever a manifest says.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import zstandard

from harbor_ops.backup import archive
from harbor_ops.backup.engine import BackupResult
from harbor_ops.backup.manifest import DB_MEMBER, FILES_MEMBER, MANIFEST_MEMBER, FileEntry
from harbor_ops.backup.restore import restore_backup, verify_backup
from harbor_ops.core.errors import BackupError
from tests.integration.pgfixture import Cluster, HarborHost, backed_up_host, make_harbor_host

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> BackupResult:
    """One honest backup whose database dump every forged archive reuses."""
    return backed_up_host(cluster, tmp_path_factory.mktemp("honest"), "registry_hostile",
                          artifacts=20)[1]


Member = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"",
          link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.linkname = link
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _secret_dir() -> list[Member]:
    return [_info("data_volume/secret", tarfile.DIRTYPE),
            _info("data_volume/secret/keys", tarfile.DIRTYPE),
            _info("data_volume/secret/keys/secretkey", data=b"forged-secret-key")]


def forge(base: BackupResult, out: Path, members: list[Member],
          entries: list[FileEntry] | None = None, **manifest_fields: object) -> Path:
    """A backup with ``base``'s dump, ``members`` as its files, every checksum recomputed."""
    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as z, \
            tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        w = archive.ArchiveWriter(f)
        sink = w.begin(DB_MEMBER)
        for chunk in archive.iter_member(base.path, DB_MEMBER):
            sink.write(chunk)
        w.end(sink)
        w.add_bytes(FILES_MEMBER, buf.getvalue())
        files = entries if entries is not None else [
            FileEntry("secret", "/data/secret", "data_volume/secret")]
        m = replace(base.manifest, members=list(w.members), files=files, **manifest_fields)
        w.add_bytes(MANIFEST_MEMBER, m.to_json())
        w.finish()
    return out


@dataclass
class Case:
    members: Callable[[Path], list[Member]]
    refusal: str
    entries: Callable[[Path], list[FileEntry]] | None = None
    manifest: Callable[[Path], dict[str, object]] | None = None


CANARY = "escaped"
CASES: dict[str, Case] = {
    "traversal": Case(lambda _t: [*_secret_dir(), _info(
        f"data_volume/secret/../../{CANARY}", data=b"pwned")], "climbs out"),
    "absolute symlink": Case(lambda t: [*_secret_dir(), _info(
        "data_volume/secret/keys/link", tarfile.SYMTYPE, link=str(t / CANARY))],
        "symbolic link"),
    "hardlink": Case(lambda t: [*_secret_dir(), _info(
        "data_volume/secret/keys/hard", tarfile.LNKTYPE,
        link=str(t / "site/data/secret/keys/secretkey").lstrip("/"))], "hard link"),
    "device": Case(lambda _t: [*_secret_dir(), _info(
        "data_volume/secret/keys/dev", tarfile.CHRTYPE)], "character device"),
    "absolute name": Case(lambda t: [*_secret_dir(), _info(
        str(t / CANARY), data=b"pwned")], "absolute"),
    "member outside the manifest": Case(lambda _t: [*_secret_dir(), _info(
        "config/harbor.yml", data=b"hostname: evil\n")], "not under a file the manifest"),
    "table with SQL": Case(lambda _t: _secret_dir(), "never records", manifest=lambda _t: {
        "row_counts": {'x"; DROP TABLE project; --': 1,
                       'audit_log"; DROP TABLE audit_log; --': 7}}),
    "table with a psql shell command": Case(lambda _t: _secret_dir(), "never records",
        manifest=lambda t: {"row_counts": {f'project";\n\\! touch {t / CANARY}\n--': 5}}),
    "database with a psql shell command": Case(lambda _t: _secret_dir(), "never records",
        manifest=lambda t: {"database": f'registry";\n\\! touch {t / CANARY}\n--'}),
    "PostgreSQL major as a path": Case(lambda _t: _secret_dir(), "not a version number",
                                       manifest=lambda _t: {"pg_major": "../../../tmp"}),
    "manifest naming /etc/cron.d/x": Case(lambda _t: [*_secret_dir(), _info(
        "certs/0-x", data=b"* * * * * root touch /pwned\n")], "names '/etc/cron.d/x'",
        entries=lambda _t: [FileEntry("secret", "/data/secret", "data_volume/secret"),
                            FileEntry("certificate", "/etc/cron.d/x", "certs/0-x")]),
    "harbor.yml recorded as a shell script": Case(lambda _t: _secret_dir(),
        "does not match its name",
        entries=lambda _t: [FileEntry("secret", "/data/secret", "data_volume/secret"),
                            FileEntry("harbor_yml", "/opt/harbor/x.sh", "config/harbor.yml")]),
    "arcname with ..": Case(lambda _t: [*_secret_dir()], "not one harborctl writes",
        entries=lambda _t: [FileEntry("secret", "/data/secret", "data_volume/secret"),
                            FileEntry("certificate", "/x", "certs/0-../../x")]),
}


def _forge_case(base: BackupResult, tmp: Path, site: HarborHost, case: Case) -> Path:
    return forge(base, site.backups / "harbor-hb-20261201T010000Z.hbk",
                 case.members(tmp), case.entries(tmp) if case.entries else None,
                 **(case.manifest(tmp) if case.manifest else {}))


def _outside(tmp: Path, site: HarborHost) -> set[str]:
    """Every path under the test folder but the backup folder (forgeries, verify records)
    and the job lock."""
    return {str(p) for p in tmp.rglob("*")
            if not p.is_relative_to(site.backups) and p != site.lock}


@pytest.mark.parametrize("name", CASES)
def test_verify_refuses_a_forged_archive(name: str, base: BackupResult,
                                         tmp_path: Path) -> None:
    site = make_harbor_host(tmp_path / "site")
    forged = _forge_case(base, tmp_path, site, CASES[name])
    before = _outside(tmp_path, site)
    with pytest.raises(BackupError, match=CASES[name].refusal) as exc:
        verify_backup(path=forged, lock_path=site.lock)
    assert "Traceback" not in str(exc.value)
    assert _outside(tmp_path, site) - before == set()
    assert not (tmp_path / CANARY).exists()


@pytest.mark.parametrize("name", CASES)
def test_restore_refuses_a_forged_archive_and_changes_nothing(
        name: str, base: BackupResult, cluster: Cluster, tmp_path: Path) -> None:
    site = make_harbor_host(tmp_path / "site")
    db = "registry_target"
    expected = cluster.harbor_db(db, artifacts=3)
    forged = _forge_case(base, tmp_path, site, CASES[name])
    key = (site.data / "secret/keys/secretkey").read_bytes()
    before = _outside(tmp_path, site)
    with pytest.raises(BackupError, match=CASES[name].refusal):
        restore_backup(path=forged, target=cluster.source(db), data_volume=site.data,
                       harbor_yml=site.yml, certificates=(site.cert,),
                       installed_version="2.14.4", force=True, lock_path=site.lock)
    assert _outside(tmp_path, site) - before == set()
    assert not (tmp_path / CANARY).exists()
    assert (site.data / "secret/keys/secretkey").read_bytes() == key
    assert cluster.counts(db) == expected


def test_certificate_targets_come_from_the_site_not_the_manifest(
        base: BackupResult, cluster: Cluster, tmp_path: Path) -> None:
    """A manifest recording another (harmless) certificate path restores to the site's."""
    site = make_harbor_host(tmp_path / "site")
    elsewhere = tmp_path / "old-host/tls/x"
    forged = forge(base, site.backups / "harbor-hb-20261201T010000Z.hbk",
                   [*_secret_dir(), _info("certs/0-x", data=b"the backup's certificate\n")],
                   [FileEntry("secret", "/data/secret", "data_volume/secret"),
                    FileEntry("certificate", str(elsewhere), "certs/0-x")])
    assert verify_backup(path=forged, lock_path=site.lock).ok
    cluster.harbor_db("registry_cert", artifacts=1)
    r = restore_backup(path=forged, target=cluster.source("registry_cert"),
                       data_volume=site.data, harbor_yml=site.yml, certificates=(site.cert,),
                       installed_version="2.14.4", lock_path=site.lock)
    assert not elsewhere.exists()
    assert site.cert.read_bytes() == b"the backup's certificate\n"
    assert str(site.cert) in r.files
    # a site that names no certificate restores none, and says so
    cluster.harbor_db("registry_cert", artifacts=1)
    r = restore_backup(path=forged, target=cluster.source("registry_cert"),
                       data_volume=site.data, installed_version="2.14.4", lock_path=site.lock)
    assert not elsewhere.exists() and any("certificate" in w for w in r.warnings)


def test_cli_refuses_a_manifest_naming_a_cron_file(base: BackupResult, tmp_path: Path,
                                                  cluster: Cluster) -> None:
    """The user sees one clear line naming the path, exit 8, no traceback."""
    site = make_harbor_host(tmp_path / "site")
    _forge_case(base, tmp_path, site, CASES["manifest naming /etc/cron.d/x"])
    for args in (["verify"], ["restore", "--yes"]):
        p = site.harborctl(site.site_file(cluster, "registry_hostile"), "backup", *args,
                           "harbor-hb-20261201T010000Z.hbk")
        assert p.returncode == 8, p.stderr
        assert "names '/etc/cron.d/x' as the file it was saved from" in p.stderr
        assert "Traceback" not in p.stderr


def test_cli_verify_names_the_hostile_member(base: BackupResult, tmp_path: Path,
                                             cluster: Cluster) -> None:
    site = make_harbor_host(tmp_path / "site")
    forge(base, site.backups / "harbor-hb-20261201T010000Z.hbk", CASES["traversal"].members(
        tmp_path))
    p = site.harborctl(site.site_file(cluster, "registry_hostile"), "backup", "verify",
                       "harbor-hb-20261201T010000Z.hbk")
    assert p.returncode == 8, p.stderr
    assert f"member 'data_volume/secret/../../{CANARY}' climbs out" in p.stderr
    assert "Traceback" not in p.stderr
