"""The verified backup taken before each hop's downtime, with the backup engine.

The backup is written on the machine running harborctl and proven by a real restore drill
(:func:`harbor_ops.backup.restore.verify_backup`) before the hop may stop Harbor. The host
is reached exactly as ``harborctl backup create --host`` reaches it
(:func:`harbor_ops.backup.fleet.access`): a local host directly; an SSH host over one
paramiko session under the one host-key policy, pg_dump streaming from its ``harbor-db``
into the controller's archive writer and the host files over SFTP, nothing left on the host.
An SSH host's backup is a copy off that host, so with ``backup.encryption`` it is sealed
like ``backup create --host``'s (:mod:`harbor_ops.backup.sealed`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harbor_ops.backup import archive
from harbor_ops.backup.crypto import warn_plain
from harbor_ops.backup.engine import create_backup
from harbor_ops.backup.fleet import access
from harbor_ops.backup.restore import verify_backup
from harbor_ops.hosts.joblock import is_local
from harbor_ops.site.model import HostEntry, Site


def hop_backup(site: Site, entry: HostEntry, *, backup_dir: Path, installed: str,
               ssh_config: Path | None, accept_new_host_keys: bool = False,
               progress: Callable[[str], None] = lambda _: None) -> Path:
    """Back up ``entry`` into ``backup_dir`` and restore-drill it; return the backup's path.

    The lock is the backup folder's own: the upgrade already holds the host's job lock.
    """
    backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = backup_dir / ".lock"
    seal = None if is_local(entry) else site.backup.encryption
    if seal is None and not is_local(entry):
        warn_plain(f"the controller ({backup_dir})")
    with access(site, entry, ssh_config=ssh_config,
                accept_new_host_keys=accept_new_host_keys) as host:
        result = create_backup(backup_dir=backup_dir, source=host.source, files=host.files,
                               harbor_version=installed, hostname=entry.name, lock_path=lock,
                               progress=progress, encryption=seal)
    progress(f"{entry.name}: restore drill of {result.path.name}")
    with archive.decrypting(seal):
        verify_backup(path=result.path, lock_path=lock, progress=progress)
    return result.path
