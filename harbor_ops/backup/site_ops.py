"""Backup operations for a whole site, as the agent runs them (the CLI runs the same core)."""

from __future__ import annotations

from typing import Any

from harbor_ops.backup.catalog import find_backup, prune_backups
from harbor_ops.backup.engine import BackupResult, create_backup
from harbor_ops.backup.restore import verify_backup
from harbor_ops.backup.settings import BackupSettings
from harbor_ops.errors import BackupError, NoSpace
from harbor_ops.site_model import Site


def create_for_site(site: Site) -> BackupResult:
    """A new backup; when space is short, prune by the keep policy first, then retry once.

    Pruning never deletes the newest verified backup, so a full disk can cost old
    backups but never the last one known to restore.
    """
    s = BackupSettings.from_site(site)

    def create() -> BackupResult:
        return create_backup(backup_dir=s.backup_dir, source=s.source, files=s.files,
                             harbor_version=s.harbor_version, hostname=s.hostname)

    try:
        return create()
    except NoSpace:
        pruned = prune_backups(backup_dir=s.backup_dir, keep=s.keep)
        if not pruned.deleted:
            raise
        return create()


def prune_for_site(site: Site) -> int:
    s = BackupSettings.from_site(site, with_secrets=False)
    return len(prune_backups(backup_dir=s.backup_dir, keep=s.keep).deleted)


def verify_latest_for_site(site: Site) -> dict[str, Any]:
    """The restore drill: checksums, then a real restore of the newest backup."""
    s = BackupSettings.from_site(site, with_secrets=False)
    result = verify_backup(path=find_backup(s.backup_dir, None))
    if not result.ok:
        raise BackupError(f"restore drill of {result.name} failed: {result.error}")
    return {"drill_rows": sum(result.row_counts.values()),
            "drill_duration_seconds": result.duration_seconds}
