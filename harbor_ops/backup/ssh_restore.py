"""Restoring an SSH host from the controller: compose over SSH, files back over SFTP.

The restore core (:func:`harbor_ops.backup.restore.restore_backup`) keeps every refusal,
the database stream, the safety nets and the health wait; an SSH host only brings how its
compose stack is driven and where the saved files are staged: the same staging twins as
on this host (:mod:`harbor_ops.backup.hostfiles`), written over SFTP, swapped in with
renames on the host's filesystem, undone when the database restore fails.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml

from harbor_ops.backup import archive
from harbor_ops.backup.hostfiles import Staged, planned_members, staging_path
from harbor_ops.backup.manifest import Manifest
from harbor_ops.backup.ssh_host import reason, ssh_errors
from harbor_ops.core.errors import BackupError, RemoteError

COMPOSE_TIMEOUT = 600.0
# Compose project and service names as harborctl accepts them from the host.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def run(client: Any, host: str, command: str, *, timeout: float = 120.0) -> str:
    """Run ``command`` on the host; its stdout, or a RemoteError naming the host.

    A signal here (the restore's SIGTERM) does not stop the command on the host: it is
    waited for (at most ``timeout``) before the signal goes on, so what the restore does
    next (its way back: ``compose down``, then up again) never races a ``compose up`` still
    running there."""
    try:
        _in, out, err = client.exec_command(command, timeout=timeout)
        try:
            stdout = str(out.read().decode(errors="replace"))
            stderr = err.read().decode(errors="replace").strip()
            rc = out.channel.recv_exit_status()
        except KeyboardInterrupt:
            out.channel.status_event.wait(timeout)
            raise
    except Exception as exc:  # noqa: BLE001 - paramiko raises many kinds
        raise RemoteError(f"host {host}: `{command}` failed: {reason(exc)}") from None
    if rc != 0:
        raise RemoteError(f"host {host}: `{command}` failed ({rc}): {stderr[-500:]}")
    return stdout


class SshStack:
    """Harbor's compose project on an SSH host, driven like :class:`HarborStack` does."""

    def __init__(self, client: Any, sftp: Any, host: str, harbor_dir: str,
                 container: str = "harbor-db") -> None:
        self.client, self.host, self.harbor_dir = client, host, harbor_dir
        self.db_service = _service_of(sftp, posixpath.join(harbor_dir, "docker-compose.yml"),
                                      container)
        fmt = shlex.quote('{{index .Config.Labels "com.docker.compose.project"}}')
        self.project: str | None = None
        for name in (container, "harbor-core"):
            try:
                label = run(client, host, f"docker inspect -f {fmt} {shlex.quote(name)}").strip()
            except RemoteError:
                continue
            if label and label != "<no value>" and _NAME.fullmatch(label):
                self.project = label
                break

    def compose(self, *args: str) -> None:
        words = [*(["-p", self.project] if self.project else []), *args]
        tail = shlex.join(words)
        run(self.client, self.host, f"cd -P {shlex.quote(self.harbor_dir)} && if command -v "
            f"docker-compose >/dev/null 2>&1; then docker-compose {tail}; "
            f"else docker compose {tail}; fi", timeout=COMPOSE_TIMEOUT)


def _service_of(sftp: Any, compose_file: str, container: str) -> str:
    try:
        with sftp.open(compose_file, "rb") as f:
            doc = yaml.safe_load(f.read(1 << 20)) or {}
    except (OSError, yaml.YAMLError):
        return "postgresql"
    for name, body in (doc.get("services") or {}).items():
        if isinstance(body, dict) and body.get("container_name") == container \
                and _NAME.fullmatch(str(name)):
            return str(name)
    return "postgresql"


@dataclass
class SftpFs:
    """An SSH host's filesystem, for :class:`~harbor_ops.backup.hostfiles.Staged`: the same
    twins and swap as on this host, over SFTP (a folder is removed with ``rm -rf``)."""

    client: Any
    sftp: Any
    host: str
    errors: tuple[type[BaseException], ...] = (Exception,)  # paramiko raises many kinds

    def exists(self, path: Path) -> bool:
        try:
            self.sftp.lstat(str(path))
            return True
        except FileNotFoundError:
            return False

    def remove(self, path: Path) -> None:
        run(self.client, self.host, f"rm -rf -- {shlex.quote(str(path))}")

    def rename(self, src: Path, dst: Path) -> None:
        self.sftp.posix_rename(str(src), str(dst))

    def synced(self, folder: Path) -> None:
        del folder  # SFTP has no fsync of a folder; the renames are the host's own

    def guard(self, what: str) -> contextlib.AbstractContextManager[None]:
        return ssh_errors(self.host, f"{what} over SFTP")


def stage_over_sftp(client: Any, sftp: Any, host: str, path: Path, manifest: Manifest,
                    plan: dict[str, Path]) -> Staged:
    """Write the saved files into the staging twins of ``plan``'s destinations on the host.

    The same rules as on this host: only plain files and folders named by the manifest,
    only under the twin of a destination the site names, a single file never a folder.
    """
    fs = SftpFs(client, sftp, host)
    staged = Staged(plan, fs=fs)
    try:
        with ssh_errors(host, "staging the restored files over SFTP"):
            for dest in plan.values():
                fs.remove(staging_path(dest))
                _mkdirs(sftp, str(dest.parent))
            for info, data, dest, rel in planned_members(path, manifest, plan):
                _put(sftp, info, data, dest, rel)
            staged.written = [str(d) for d in plan.values() if fs.exists(staging_path(d))]
    except BaseException:
        staged.discard()
        raise
    return staged


def _put(sftp: Any, info: tarfile.TarInfo, data: IO[bytes] | None, dest: Path,
         rel: str) -> None:
    """Write one member under the staging twin of ``dest`` on the host, over SFTP."""
    parts = PurePosixPath(rel).parts if rel else ()
    if ".." in parts:
        raise BackupError(f"refusing member {info.name!r}: it leaves {dest}")
    target = posixpath.join(str(staging_path(dest)), *parts)
    if info.isdir():
        _mkdirs(sftp, target)
    else:
        _mkdirs(sftp, posixpath.dirname(target))
        with sftp.open(target, "wbx") as f:
            f.set_pipelined(True)
            if data is not None:
                while chunk := data.read(archive.CHUNK):
                    f.write(chunk)
    sftp.chown(target, info.uid, info.gid)
    sftp.chmod(target, info.mode & 0o775)  # as saved, never world-writable or setuid


def _mkdirs(sftp: Any, folder: str) -> None:
    missing = []
    while folder not in ("", "/"):
        try:
            sftp.stat(folder)
            break
        except FileNotFoundError:
            missing.append(folder)
            folder = posixpath.dirname(folder)
    for d in reversed(missing):
        sftp.mkdir(d, mode=0o700)
