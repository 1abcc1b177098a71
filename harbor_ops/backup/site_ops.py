"""Backup operations for a whole site, as the agent runs them (the CLI runs the same core)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harbor_ops.backup.catalog import find_backup, prune_backups
from harbor_ops.backup.drill import verify_backup
from harbor_ops.backup.engine import BackupResult, create_backup
from harbor_ops.backup.settings import BackupSettings
from harbor_ops.core.errors import BackupError, NoSpace, RemoteError, UsageError
from harbor_ops.site.model import Site

if TYPE_CHECKING:
    from harbor_ops.backup.remote import PushResult


def create_for_site(site: Site, *, dry_run: bool = False,
                    progress: Callable[[str], None] | None = None) -> BackupResult:
    """A new backup, copied off-host when ``backup.remote`` is set.

    A failed off-host copy is a RemoteError (exit 6) that says the local backup exists.
    """
    result = _create_local(site, dry_run=dry_run, progress=progress)
    if site.backup.remote is not None and not dry_run:
        push = push_for_site(site, result.path)
        result.notes.append(f"copied to {push.destination}"
                            + (f"; pruned there: {', '.join(push.pruned)}" if push.pruned
                               else ""))
    return result


def push_for_site(site: Site, path: Path, *, accept_new_host_keys: bool = False) -> PushResult:
    """Copy one backup to ``backup.remote`` (checked there), then apply retention there."""
    from harbor_ops.backup.remote import prune_remote, push_backup

    remote = site.backup.remote
    if remote is None:
        raise UsageError("backup.remote is not set in the site file")
    try:
        pushed = push_backup(path, remote, accept_new_host_keys=accept_new_host_keys)
        pruned = prune_remote(remote, site.backup.keep, hostname=site.hostname)
    except RemoteError as exc:
        raise RemoteError(f"backup {path.name} is complete locally, but {exc.message}",
                          hint=exc.hint) from None
    return replace(pushed, pruned=pruned)


def _create_local(site: Site, *, dry_run: bool = False,
                  progress: Callable[[str], None] | None = None) -> BackupResult:
    """When space is short, prune by the keep policy first, then retry once.

    Pruning never deletes the newest verified backup, so a full disk can cost old
    backups but never the last one known to restore.
    """
    s = BackupSettings.from_site(site)

    def create() -> BackupResult:
        return create_backup(backup_dir=s.backup_dir, source=s.source, files=s.files,
                             harbor_version=s.harbor_version, hostname=s.hostname,
                             dry_run=dry_run, progress=progress)

    try:
        return create()
    except NoSpace:
        pruned = prune_backups(backup_dir=s.backup_dir, keep=s.keep, hostname=s.hostname)
        if not pruned.deleted:
            raise
        return create()


def prune_for_site(site: Site) -> int:
    s = BackupSettings.from_site(site, with_secrets=False)
    return len(prune_backups(backup_dir=s.backup_dir, keep=s.keep, hostname=s.hostname).deleted)


def verify_latest_for_site(site: Site) -> dict[str, Any]:
    """The restore drill: checksums, then a real restore of the newest backup."""
    s = BackupSettings.from_site(site, with_secrets=False)
    result = verify_backup(path=find_backup(s.backup_dir, None))
    if not result.ok:
        raise BackupError(f"restore drill of {result.name} failed: {result.error}")
    return {"drill_rows": sum(result.row_counts.values()),
            "drill_duration_seconds": result.duration_seconds}
