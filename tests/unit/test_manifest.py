"""The manifest round-trips, detects its own damage, and names sort by time."""

from __future__ import annotations

import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from harbor_ops.backup import archive
from harbor_ops.backup.manifest import (
    FileEntry,
    Manifest,
    Member,
    backup_name,
    host_label,
    is_host_backup,
    parse_name,
    read_sidecar,
    write_sidecar,
)


def sample(**kw: object) -> Manifest:
    base = dict(harborctl_version="0.1.0", harbor_version="2.14.4", source_kind="external",
                source="postgresql://harbor@db:5432/registry", database="registry",
                pg_major="15", pg_server_version_num=150020, database_size=1234,
                schema_version=171, schema_dirty=False, row_counts={"project": 3},
                tables=["project", "schema_migrations"],
                members=[Member("db.dump.zst", 10, "ab" * 32)],
                files=[FileEntry("secret", "/data/secret", "data_volume/secret")],
                started_at="2026-11-29T02:30:00Z", finished_at="2026-11-29T02:30:05Z",
                hostname="hb")
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def test_round_trip() -> None:
    m = sample()
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("field,value", [("harbor_version", "2.15.2"), ("schema_version", 170),
                                         ("row_counts", {"project": 4})])
def test_a_changed_field_is_detected(field: str, value: object) -> None:
    data = json.loads(sample().to_json())
    data[field] = value
    with pytest.raises(ValueError, match="checksum"):
        Manifest.from_json(json.dumps(data).encode())


def test_unknown_format_is_refused() -> None:
    data = sample().to_dict()
    data["format"] = 99
    with pytest.raises(ValueError, match="format"):
        Manifest.from_dict(data)


@pytest.mark.parametrize("host,counter,expected", [
    ("harbor.example.internal", 0, "harbor-harbor.example.internal-20261129T023000.250Z.hbk"),
    ("we ird/host", 0, "harbor-we_ird_host-20261129T023000.250Z.hbk"),
    ("h-1", 3, "harbor-h-1-20261129T023000.250Z-3.hbk"),
])
def test_names(host: str, counter: int, expected: str) -> None:
    when = datetime(2026, 11, 29, 2, 30, 0, 250000, tzinfo=UTC)
    assert backup_name(host, when, counter) == expected
    label = host_label(host)
    assert parse_name(expected) == (label, when.replace(microsecond=250000 + counter))
    assert is_host_backup(expected, host) and is_host_backup(expected + ".partial", host)
    assert not is_host_backup(expected, host + "x")


def test_names_of_older_harborctl_still_parse() -> None:
    when = datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    assert parse_name("harbor-hb-20261129T023000Z.hbk") == ("hb", when)


def test_a_counter_sorts_after_its_millisecond() -> None:
    when = datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    names = [backup_name("hb", when, n) for n in (0, 1, 2)]
    assert sorted(names, key=lambda n: parse_name(n)[1]) == names  # type: ignore[index]


@pytest.mark.parametrize("field,value,problem", [
    ("row_counts", {'x"; DROP TABLE project; --': 1}, "never records"),
    ("row_counts", {"project": -1}, "not a count"),
    ("row_counts", {"project": "1"}, "not a count"),
    ("database", 'registry"\n\\! touch /tmp/pwned', "never records"),
    ("pg_major", "../15", "not a version number"),
    ("members", [Member("../db.dump.zst", 1, "ab" * 32)], "not a member"),
    ("files", [FileEntry("secret", "/data/secret", "data_volume/../../etc")],
     "not one harborctl writes"),
    ("files", [FileEntry("certificate", "/etc/cron.d/x", "certs/0-../x")],
     "not one harborctl writes"),
    ("files", [FileEntry("cron", "/etc/cron.d/x", "cron/x")], "not one harborctl writes"),
    ("files", [FileEntry("certificate", "/etc/cron.d/x", "certs/0-x")], "'/etc/cron.d/x'"),
    ("files", [FileEntry("certificate", "/root/.ssh/authorized_keys",
                         "certs/1-authorized_keys")], "no file harborctl saves lives there"),
    ("files", [FileEntry("secret", "/etc/systemd/system/secret", "data_volume/secret")],
     "no file harborctl saves lives there"),
    ("files", [FileEntry("secret", "/data/../etc/secret", "data_volume/secret")],
     "not an absolute, normalized path"),
    ("files", [FileEntry("secret", "data/secret", "data_volume/secret")],
     "not an absolute, normalized path"),
    ("files", [FileEntry("harbor_yml", "/opt/harbor/evil.sh", "config/harbor.yml")],
     "does not match its name"),
    ("files", [FileEntry("certificate", "/etc/tls/a.crt", "certs/0-b.crt")],
     "does not match its name"),
])
def test_untrusted_manifest_fields_are_named(field: str, value: object, problem: str) -> None:
    problems = sample(**{field: value}).untrusted_problems()
    assert len(problems) == 1 and problem in problems[0]


def test_what_harborctl_writes_is_trusted() -> None:
    m = sample(files=[FileEntry("secret", "/data/secret", "data_volume/secret"),
                      FileEntry("harbor_yml", "/opt/harbor/harbor.yml", "config/harbor.yml"),
                      FileEntry("certificate", "/etc/tls/h.crt", "certs/0-h.crt"),
                      FileEntry("certificate", "/etc/ssl/private/h key.pem",
                                "certs/1-h_key.pem"),
                      FileEntry("certificate", "/etc/harbor/tls/cron.key", "certs/2-cron.key")])
    assert m.untrusted_problems() == []


def _member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize("info,problem", [
    (_member("data_volume/secret/keys/secretkey"), None),
    (_member("data_volume/secret", tarfile.DIRTYPE), None),
    (_member("data_volume/secret/../../x"), "climbs out"),
    (_member("/data_volume/secret/x"), "absolute"),
    (_member("data_volume/secret/l", tarfile.SYMTYPE), "symbolic link"),
    (_member("data_volume/secret/l", tarfile.LNKTYPE), "hard link"),
    (_member("data_volume/secret/d", tarfile.CHRTYPE), "character device"),
    (_member("data_volume/secret/d", tarfile.BLKTYPE), "block device"),
    (_member("data_volume/secret/p", tarfile.FIFOTYPE), "named pipe"),
    (_member("data_volume/secretive"), "not under a file the manifest lists"),
    (_member("data_volume/secret/a\nb"), "control characters"),
])
def test_file_members_that_are_refused(info: tarfile.TarInfo, problem: str | None) -> None:
    found = archive.member_problem(info, ["data_volume/secret"])
    assert (found is None) if problem is None else (problem in (found or ""))


@pytest.mark.parametrize("name", ["harbor-h-20261129T023000Z.hbk.partial", "notes.txt",
                                  "harbor-h-20261129T023000Z.hbk.verified.json"])
def test_other_files_are_not_backups(name: str) -> None:
    assert parse_name(name) is None


def test_archive_is_a_plain_tar_with_streamed_members(tmp_path: Path) -> None:
    path = tmp_path / "x.hbk"
    m = sample(members=[])
    with open(path, "wb") as f:
        w = archive.ArchiveWriter(f)
        sink = w.begin("db.dump.zst")
        for _ in range(3):
            sink.write(b"x" * 1000)
        w.end(sink)
        m = sample(members=list(w.members))
        w.add_bytes("manifest.json", m.to_json())
        w.finish()
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["db.dump.zst", "manifest.json"]
        assert tar.getmember("db.dump.zst").size == 3000
    assert archive.read_manifest(path) == m
    assert archive.check_members(path, m) == []
    data = bytearray(path.read_bytes())
    data[512 + 10] ^= 1
    path.write_bytes(bytes(data))
    assert archive.check_members(path, m) == ["db.dump.zst: SHA-256 differs from the manifest"]


def test_sidecar_is_written_atomically(tmp_path: Path) -> None:
    b = tmp_path / "harbor-h-20261129T023000Z.hbk"
    b.write_bytes(b"")
    assert read_sidecar(b) is None
    write_sidecar(b, {"ok": True})
    assert read_sidecar(b) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [b.name, b.name + ".verified.json"]
    assert (tmp_path / (b.name + ".verified.json")).stat().st_mode & 0o777 == 0o600
