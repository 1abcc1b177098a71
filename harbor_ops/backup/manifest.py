"""The backup manifest, backup names, and the small verification sidecar.

The manifest is the last member written into a backup, so a backup whose manifest
can be read was written to the end; its checksums then prove every other member.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.hashing import sha256_bytes

FORMAT = 1
SUFFIX = ".hbk"
PARTIAL_SUFFIX = ".partial"
VERIFIED_SUFFIX = ".verified.json"
PUSHED_SUFFIX = ".pushed.json"  # where the off-host copy is and the checksum it was sent with
DB_MEMBER = "db.dump.zst"
FILES_MEMBER = "files.tar.zst"
MANIFEST_MEMBER = "manifest.json"
KEY_TABLES = ("project", "repository", "artifact", "audit_log", "harbor_user")

# harbor-<host>-<YYYYmmddTHHMMSS>[.<ms>]Z[-<n>].hbk (names of older harborctl: no ms),
# and .hbk.age for a sealed (age-encrypted) one
_NAME_RE = re.compile(r"^harbor-(?P<host>[A-Za-z0-9._-]+?)-(?P<ts>\d{8}T\d{6})"
                      r"(?:\.(?P<ms>\d{3}))?Z(?:-(?P<n>\d{1,4}))?\.hbk(?:\.age)?$")
_TS_FORMAT = "%Y%m%dT%H%M%S"


def host_label(hostname: str) -> str:
    """The host part of a backup name: what tells one host's backups from another's."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", hostname) or "host"


def backup_name(hostname: str, when: datetime, counter: int = 0) -> str:
    """``harbor-<host>-<UTC time to the millisecond>Z[-<n>].hbk``; sorts by time per host.

    ``counter`` tells apart two backups of one host in the same millisecond (frozen
    clocks, a clock stepped back), so a name is never given twice.
    """
    t = when.astimezone(UTC)
    suffix = f"-{counter}" if counter else ""
    return (f"harbor-{host_label(hostname)}-{t.strftime(_TS_FORMAT)}."
            f"{t.microsecond // 1000:03d}Z{suffix}{SUFFIX}")


def parse_name(name: str) -> tuple[str, datetime] | None:
    """(host, UTC time) of a backup file name, or None when it is not one of ours.

    The counter of a name is its microseconds, so that names of one millisecond sort
    in the order they were given.
    """
    match = _NAME_RE.match(name)
    if not match:
        return None
    micro = int(match["ms"] or 0) * 1000 + min(int(match["n"] or 0), 999)
    when = datetime.strptime(match["ts"], _TS_FORMAT).replace(tzinfo=UTC, microsecond=micro)
    return match["host"], when


def is_host_backup(name: str, hostname: str) -> bool:
    """Is ``name`` (a backup or its ``.partial``) one of ``hostname``'s backups?"""
    parsed = parse_name(name.removesuffix(PARTIAL_SUFFIX))
    return parsed is not None and parsed[0] == host_label(hostname)


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

    def untrusted_problems(self) -> list[str]:
        """What in this manifest harborctl never writes, so an archive carrying it is refused.

        A backup archive is untrusted input (anyone who can write the backup folder or
        the off-host copy made it), and its self-checksum proves nothing against a forger.
        Whatever the manifest says that reaches a path, an SQL statement or a program
        must be one of the few values harborctl itself records.
        """
        out: list[str] = []
        if not _DBNAME_RE.match(str(self.database)):
            out.append(f"database name {self.database!r} has characters harborctl never "
                       "records")
        if not _MAJOR_RE.match(str(self.pg_major)):
            out.append(f"PostgreSQL major {self.pg_major!r} is not a version number")
        for table, count in self.row_counts.items():
            if table not in KEY_TABLES:
                out.append(f"row count for table {table!r}, which harborctl never records "
                           f"(only {', '.join(KEY_TABLES)})")
            elif not isinstance(count, int) or isinstance(count, bool) or count < 0:
                out.append(f"row count {count!r} of {table} is not a count")
        for m in self.members:
            if m.name not in (DB_MEMBER, FILES_MEMBER):
                out.append(f"member {m.name!r} is not a member harborctl writes")
        for e in self.files:
            if not _canonical_arcname(e):
                out.append(f"file entry {e.role!r} -> {e.arcname!r} is not one harborctl "
                           "writes")
            elif problem := recorded_path_problem(e):
                out.append(problem)
        return out


_DBNAME_RE = re.compile(r"^[A-Za-z0-9_.$-]{1,63}$")
_MAJOR_RE = re.compile(r"^\d{1,2}(\.\d{1,2})?$")
_CERT_ARCNAME_RE = re.compile(r"^certs/(?P<index>\d{1,2})-[A-Za-z0-9._+@-]{1,200}$")
FIXED_ARCNAMES = {"secret": "data_volume/secret", "redis": "data_volume/redis",
                  "harbor_yml": "config/harbor.yml"}


# Folders no file harborctl saves ever lives in: a file placed there runs as root or
# changes who may log in ("family*" entries match every name that starts so).
_SYSTEM_FOLDERS = (
    "/etc/cron*", "/var/spool/cron", "/etc/anacrontab", "/etc/systemd", "/lib/systemd",
    "/usr/lib/systemd", "/etc/init.d", "/etc/rc*", "/etc/sudoers*", "/etc/profile*",
    "/etc/bash*", "/etc/environment", "/etc/ld.so*", "/etc/pam.d", "/etc/security",
    "/etc/ssh", "/etc/passwd*", "/etc/shadow*", "/etc/group*", "/etc/gshadow*", "/etc/apt",
    "/etc/logrotate*", "/etc/udev", "/etc/modprobe.d", "/etc/docker", "/bin", "/sbin",
    "/lib", "/lib64", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/libexec",
    "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib", "/boot", "/proc", "/sys",
    "/dev", "/run", "/var/run")
_ROLE_FILE_NAMES = {"secret": "secret", "redis": "redis", "harbor_yml": "harbor.yml"}


def recorded_path_problem(e: FileEntry) -> str | None:
    """Why the host path a manifest records for ``e`` is not one harborctl saves from.

    Restores take their destinations from the site, never from these paths; a manifest
    that names a path no Harbor file lives at (``/etc/cron.d/x``, a ``..`` path, a name
    that does not match its role) was not written by harborctl and is refused as a whole,
    so a forged archive is never half-trusted.
    """
    p = e.path
    if (not p.startswith("/") or any(ord(c) < 32 for c in p) or "\\" in p
            or posixpath.normpath(p) != p or p.startswith("//")):
        return f"file entry {e.role!r} records {p!r}, not an absolute, normalized path"
    parts = p.split("/")
    if ".ssh" in parts or any(_under(p, folder) for folder in _SYSTEM_FOLDERS):
        return (f"file entry {e.role!r} names {p!r} as the file it was saved from: no "
                "file harborctl saves lives there (a file there runs as root)")
    name = parts[-1]
    if e.role == "certificate":
        fits = cert_arcname(certificate_index(e.arcname) or 0, name) == e.arcname
    else:
        fits = _ROLE_FILE_NAMES.get(e.role) == name
    if not fits:
        return (f"file entry {e.role!r} records {p!r}, which does not match its name in "
                f"the backup ({e.arcname!r})")
    return None


def _under(path: str, folder: str) -> bool:
    if folder.endswith("*"):
        return path.startswith(folder[:-1])
    return path == folder or path.startswith(folder + "/")


def cert_arcname(index: int, name: str) -> str:
    """A certificate's name inside the backup: the file name, made safe, numbered."""
    return f"certs/{index}-" + re.sub(r"[^A-Za-z0-9._+@-]", "_", name)[:200]


def _canonical_arcname(e: FileEntry) -> bool:
    if e.role == "certificate":
        return bool(_CERT_ARCNAME_RE.match(e.arcname)) and ".." not in e.arcname
    return FIXED_ARCNAMES.get(e.role) == e.arcname


def certificate_index(arcname: str) -> int | None:
    """The position of a certificate in the site's list (``certs/<i>-<name>``)."""
    match = _CERT_ARCNAME_RE.match(arcname)
    return int(match["index"]) if match else None


def _self_sha(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "self_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True).encode())


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


def push_record_path(backup: Path) -> Path:
    return backup.with_name(backup.name + PUSHED_SUFFIX)


def read_push_record(backup: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(push_record_path(backup).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and {"remote_name", "sha256", "size"} <= set(data) \
        else None


def write_push_record(backup: Path, data: dict[str, Any]) -> None:
    atomic_write(push_record_path(backup), json.dumps(data, indent=2, sort_keys=True) + "\n",
                 mode=0o600)


def write_sidecar(backup: Path, data: dict[str, Any]) -> None:
    atomic_write(sidecar_path(backup), json.dumps(data, indent=2, sort_keys=True) + "\n",
                 mode=0o600)


