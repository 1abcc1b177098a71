"""Backup operations for a whole site, as the agent runs them (the CLI runs the same core)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harbor_ops.backup.catalog import find_backup, prune_backups
from harbor_ops.backup.crypto import warn_plain
from harbor_ops.backup.drill import verify_backup
from harbor_ops.backup.engine import BackupResult, create_backup
from harbor_ops.backup.settings import BackupSettings
from harbor_ops.core.errors import BackupError, NoSpace, RemoteError, UsageError
from harbor_ops.site.model import Site

if TYPE_CHECKING:
    from harbor_ops.backup.drill import VerifyResult
    from harbor_ops.backup.remote import PullResult, PushResult


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


def push_for_site(site: Site, path: Path, *, accept_new_host_keys: bool = False,
                  hostname: str | None = None) -> PushResult:
    """Copy one backup to ``backup.remote`` (checked there), then apply retention there.

    ``hostname``: whose backups the remote retention looks at (default: this site's).
    """
    from harbor_ops.backup.remote import prune_remote, push_backup

    remote = site.backup.remote
    if remote is None:
        raise UsageError("backup.remote is not set in the site file")
    if site.backup.encryption is None:
        warn_plain(f"{remote.host}:{remote.path}")
    try:
        pushed = push_backup(path, remote, accept_new_host_keys=accept_new_host_keys,
                             encryption=site.backup.encryption)
        pruned = prune_remote(remote, site.backup.keep, hostname=hostname or site.hostname)
    except RemoteError as exc:
        raise RemoteError(f"backup {path.name} is complete locally, but {exc.message}",
                          hint=exc.hint) from None
    return replace(pushed, pruned=pruned)


def pull_for_site(site: Site, name: str | None = None, *,
                  accept_new_host_keys: bool = False) -> PullResult:
    """Bring a copy back from ``backup.remote`` (default: this host's newest) for a restore;
    an encrypted copy needs ``backup.encryption.identity_file``."""
    from harbor_ops.backup.remote import pull_backup

    if site.backup.remote is None:
        raise UsageError("backup.remote is not set in the site file")
    return pull_backup(site.backup.remote, site.backup.dir, name=name,
                       hostname=None if name else site.hostname,
                       encryption=site.backup.encryption,
                       accept_new_host_keys=accept_new_host_keys)


def verify_for_site(site: Site, name: str | None = None, *, drill: bool = True,
                    progress: Callable[[str], None] | None = None,
                    accept_new_host_keys: bool = False) -> VerifyResult:
    """Verify a backup (default: the newest); a pushed one that passes the drill is marked
    verified on the remote too, so remote retention keeps the newest verified copy."""
    from harbor_ops.backup.remote import mark_verified

    path = find_backup(site.backup.dir, name)
    result = verify_backup(path=path, restore_drill=drill, progress=progress)
    if drill and site.backup.remote is not None:
        try:
            mark_verified(path, site.backup.remote, accept_new_host_keys=accept_new_host_keys)
        except RemoteError as exc:
            logging.getLogger("harborctl").warning(
                "%s is verified here, but marking its off-host copy failed: %s", path.name, exc)
    return result


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
    result = verify_for_site(site)
    if not result.ok:
        raise BackupError(f"restore drill of {result.name} failed: {result.error}")
    return {"drill_rows": sum(result.row_counts.values()),
            "drill_duration_seconds": result.duration_seconds}
