"""The backup manifest, backup names, and the small verification sidecar.

The manifest is the last member written into a backup, so a backup whose manifest
can be read was written to the end; its checksums then prove every other member.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harbor_ops.core.fsutil import atomic_write

FORMAT = 1
SUFFIX = ".hbk"
PARTIAL_SUFFIX = ".partial"
VERIFIED_SUFFIX = ".verified.json"
DB_MEMBER = "db.dump.zst"
FILES_MEMBER = "files.tar.zst"
MANIFEST_MEMBER = "manifest.json"
KEY_TABLES = ("project", "repository", "artifact", "audit_log", "harbor_user")

_NAME_RE = re.compile(r"^harbor-(?P<host>[A-Za-z0-9._-]+?)-(?P<ts>\d{8}T\d{6}Z)\.hbk$")
_TS_FORMAT = "%Y%m%dT%H%M%SZ"


def backup_name(hostname: str, when: datetime) -> str:
    """``harbor-<host>-<UTC timestamp>.hbk``; sorts by time within one host."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", hostname) or "host"
    return f"harbor-{safe}-{when.astimezone(UTC).strftime(_TS_FORMAT)}{SUFFIX}"


def parse_name(name: str) -> tuple[str, datetime] | None:
    """(host, UTC time) of a backup file name, or None when it is not one of ours."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    when = datetime.strptime(match["ts"], _TS_FORMAT).replace(tzinfo=UTC)
    return match["host"], when


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileEntry:
    """A host path saved in files.tar.zst under ``arcname``, and what it is for."""

    role: str  # secret | redis | harbor_yml | certificate
    path: str
    arcname: str


@dataclass(frozen=True)
class Manifest:
    harborctl_version: str
    harbor_version: str | None
    source_kind: str
    source: str  # description without secrets
    database: str
    pg_major: str
    pg_server_version_num: int
    database_size: int
    schema_version: int | None
    schema_dirty: bool | None
    row_counts: dict[str, int]
    tables: list[str]
    members: list[Member]
    files: list[FileEntry]
    started_at: str
    finished_at: str
    hostname: str
    dump_format: str = "pg_dump -Fc -Z0 | zstd"
    format: int = FORMAT
    warnings: list[str] = field(default_factory=list)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        """JSON carrying its own SHA-256, so a flipped byte in the manifest is caught too."""
        data = self.to_dict()
        data["self_sha256"] = _self_sha(data)
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {data.get('format')!r}")
        data["members"] = [Member(**m) for m in data.get("members", [])]
        data["files"] = [FileEntry(**f) for f in data.get("files", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        if data.get("self_sha256") != _self_sha(data):
            raise ValueError("manifest checksum mismatch (the manifest is damaged)")
        return cls.from_dict(data)


def _self_sha(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "self_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def sidecar_path(backup: Path) -> Path:
    return backup.with_name(backup.name + VERIFIED_SUFFIX)


def read_sidecar(backup: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(backup).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(backup: Path, data: dict[str, Any]) -> None:
    atomic_write(sidecar_path(backup), json.dumps(data, indent=2, sort_keys=True) + "\n",
                 mode=0o600)


