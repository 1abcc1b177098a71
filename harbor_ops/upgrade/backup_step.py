"""The verified backup taken before each hop's downtime, with the existing backup engine.

The backup is written on the machine running harborctl and proven by a real restore drill
(:func:`harbor_ops.backup.restore.verify_backup`) before the hop may stop Harbor. For a
local host the engine reads ``harbor-db`` and the host files directly; for an SSH host the
PostgreSQL client tools run inside that host's ``harbor-db`` through ``ssh``, so the dump
streams to the controller and nothing is left on the host. The ssh client uses the
operator's configuration and known_hosts: host keys are always checked.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harbor_ops.backup.engine import HostFiles, create_backup
from harbor_ops.backup.restore import verify_backup
from harbor_ops.backup.settings import BackupSettings
from harbor_ops.backup.sources import DbSource
from harbor_ops.core.errors import BackupError
from harbor_ops.site.model import HostEntry, Site


@dataclass(frozen=True)
class SshDockerSource(DbSource):
    """``harbor-db`` of an SSH host: ``ssh HOST docker exec -i harbor-db TOOL ...``."""

    ssh: tuple[str, ...] = ()
    container: str = "harbor-db"
    user: str = "postgres"
    dbname: str = "registry"
    kind: str = "docker"

    def argv(self, tool: str, args: Sequence[str], *, dbname: str | None = None) -> list[str]:
        remote = ["docker", "exec", "-i", self.container, tool, "-U", self.user,
                  "-d", dbname or self.dbname, *args]
        return [*self.ssh, shlex.join(remote)]

    def describe(self) -> str:
        return f"container {self.container} on {self.ssh[-1]}, database {self.dbname}"


def ssh_argv(entry: HostEntry, ssh_config: Path | None) -> tuple[str, ...]:
    """The ssh client command for ``entry`` (batch mode: never a password prompt)."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if ssh_config is not None:
        argv += ["-F", str(ssh_config)]
    if entry.ssh_key_file is not None:
        argv += ["-i", str(entry.ssh_key_file), "-o", "IdentitiesOnly=yes"]
    argv += ["-p", str(entry.port), "-l", entry.user, entry.address or entry.name]
    return tuple(argv)


def hop_backup(site: Site, entry: HostEntry, *, backup_dir: Path, installed: str,
               ssh_config: Path | None,
               progress: Callable[[str], None] = lambda _: None) -> Path:
    """Back up ``entry`` into ``backup_dir`` and restore-drill it; return the backup's path."""
    backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = BackupSettings.from_site(site)
    if entry.connection == "local":
        source, files = settings.source, settings.files
    else:
        if settings.source.kind != "docker":
            raise BackupError(f"{entry.name}: the per-hop backup of an external database is "
                              "not supported by upgrade apply",
                              hint="back it up with the database's own tools, then upgrade")
        source = SshDockerSource(ssh=ssh_argv(entry, ssh_config))
        files = HostFiles()  # database only: the hop's snapshot keeps the host files
    lock = backup_dir / ".lock"
    result = create_backup(backup_dir=backup_dir, source=source, files=files,
                           harbor_version=installed, hostname=entry.name, lock_path=lock,
                           progress=progress)
    progress(f"{entry.name}: restore drill of {result.path.name}")
    verify_backup(path=result.path, lock_path=lock, progress=progress)
    return result.path
