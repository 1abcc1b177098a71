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


@pytest.mark.parametrize("host,expected", [
    ("harbor.example.internal", "harbor-harbor.example.internal-20261129T023000Z.hbk"),
    ("we ird/host", "harbor-we_ird_host-20261129T023000Z.hbk"),
])
def test_names(host: str, expected: str) -> None:
    when = datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    assert backup_name(host, when) == expected
    assert parse_name(expected) == (expected[7:-21], when)


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
