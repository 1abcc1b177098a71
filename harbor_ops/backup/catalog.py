"""``backup list`` and ``backup prune``: what is in the backup folder, and what goes.

Only complete backups are listed: a file is one when its name is a backup name (the
``.partial`` suffix of an unfinished one never is) and its manifest can be read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harbor_ops.backup import archive
from harbor_ops.backup.engine import clean_partials
from harbor_ops.backup.manifest import (
    Manifest,
    is_host_backup,
    iso,
    parse_name,
    push_record_path,
    read_sidecar,
    sidecar_path,
    utc_now,
)
from harbor_ops.backup.retention import BackupRef, KeepPolicy, keep_reasons
from harbor_ops.core.errors import BackupError
from harbor_ops.core.lock import job_lock


@dataclass(frozen=True)
class BackupEntry:
    name: str
    path: Path
    created: datetime
    size: int
    manifest: Manifest | None
    verified: bool | None  # None: never verified; False: the last verify failed
    verified_at: str | None = None
    problem: str | None = None
    sealed: bool = False  # age-encrypted: its manifest is read only where the identity is

    @property
    def usable(self) -> bool:
        """Complete: its manifest reads, or it is sealed (named only once written whole)."""
        return self.manifest is not None or (self.sealed and self.problem is None)

    def ref(self) -> BackupRef:
        return BackupRef(self.name, self.created, bool(self.verified))

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": self.name, "path": str(self.path), "created": iso(self.created),
                "size": self.size, "verified": self.verified, "verified_at": self.verified_at,
                "harbor_version": m.harbor_version if m else None,
                "pg_major": m.pg_major if m else None,
                "schema_version": m.schema_version if m else None,
                "row_counts": m.row_counts if m else None, "problem": self.problem,
                "encrypted": self.sealed}


def list_backups(backup_dir: Path) -> list[BackupEntry]:
    """Complete backups, newest first (an unreadable one is listed with its problem).

    A sealed backup's manifest is read when the run has its identity
    (:func:`archive.decrypting`); without it the backup is listed by name and size.
    """
    out: list[BackupEntry] = []
    if not Path(backup_dir).is_dir():
        return out
    for path in Path(backup_dir).iterdir():
        parsed = parse_name(path.name)
        if parsed is None or not path.is_file():
            continue
        manifest: Manifest | None = None
        problem = None
        sealed = archive.is_sealed(path)
        try:
            if not sealed or archive.can_decrypt():
                manifest = archive.read_manifest(path)
        except Exception as exc:  # noqa: BLE001 - any damage means "not usable"
            problem = f"manifest unreadable: {exc}"
        side = read_sidecar(path) or {}
        verified = side.get("ok") if "ok" in side else None
        out.append(BackupEntry(path.name, path, parsed[1], path.stat().st_size, manifest,
                               verified, side.get("verified_at"), problem, sealed))
    return sorted(out, key=lambda e: (e.created, e.name), reverse=True)


def find_backup(backup_dir: Path, name: str | None, *, latest_verified: bool = False) -> Path:
    """A backup by name (or path), or the newest verified one."""
    if name:
        p = Path(name)
        cand = p if p.is_file() else Path(backup_dir) / name
        if not cand.is_file() or parse_name(cand.name) is None:
            raise BackupError(f"no backup named {name} in {backup_dir}",
                              hint="see `harborctl backup list`")
        return cand
    for e in list_backups(backup_dir):
        if e.usable and (e.verified or not latest_verified):
            return e.path
    what = "verified backup" if latest_verified else "backup"
    raise BackupError(f"no {what} in {backup_dir}")


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "kept": self.kept, "dry_run": self.dry_run}


def prune_backups(*, backup_dir: Path, keep: KeepPolicy, hostname: str,
                  now: datetime | None = None, dry_run: bool = False,
                  lock_path: Path | None = None) -> PruneResult:
    """Delete what the retention policy does not keep of ``hostname``'s backups (and its
    leftovers of crashed runs); other hosts' backups in a shared folder are not touched."""
    with job_lock(lock_path, job="backup prune"):
        if not dry_run and Path(backup_dir).is_dir():
            clean_partials(Path(backup_dir), hostname)
        entries = [e for e in list_backups(backup_dir)
                   if e.usable and is_host_backup(e.name, hostname)]
        reasons = keep_reasons([e.ref() for e in entries], keep, now or utc_now())
        result = PruneResult(kept=reasons, dry_run=dry_run)
        for e in entries:
            if e.name in reasons:
                continue
            result.deleted.append(e.name)
            if not dry_run:
                e.path.unlink(missing_ok=True)
                sidecar_path(e.path).unlink(missing_ok=True)
                push_record_path(e.path).unlink(missing_ok=True)
        return result
