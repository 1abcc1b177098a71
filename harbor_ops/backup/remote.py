"""Off-host copies of finished backups over SSH (paramiko), proven by a checksum THERE.

A backup is uploaded by SFTP to ``<remote.path>/<name>.partial``; the remote host then
hashes what it actually stored (``sha256sum`` over the SSH exec channel, ``python3``
when coreutils lack it) and only when that hash equals the hash of the bytes read
locally is the file renamed to ``<name>`` (``posix-rename``: atomic on the remote
filesystem). So a name without ``.partial`` on the remote host is always a complete,
checked copy, whatever dropped the connection. Files are 0600, the folder 0700.

Which host and how, and which host keys are trusted, is :mod:`harbor_ops.hosts.ssh`'s
one resolver and policy: the site's ``backup.remote`` (host, port, user, key_file, path)
wins over the ssh config (``$HARBORCTL_SSH_CONFIG``, else ``~/.ssh/config``); an unknown
host key is refused unless the user accepted new keys explicitly; a changed one always is.

Every failure is a :class:`~harbor_ops.core.errors.RemoteError` (exit 6) naming the host
and folder; no key material or passphrase is ever part of a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import shlex
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harbor_ops.backup.archive import file_sha256
from harbor_ops.backup.manifest import (
    PARTIAL_SUFFIX,
    VERIFIED_SUFFIX,
    host_label,
    is_host_backup,
    iso,
    parse_name,
    sidecar_path,
    utc_now,
)
from harbor_ops.backup.retention import BackupRef, KeepPolicy, select_to_prune
from harbor_ops.core.errors import RemoteError
from harbor_ops.hosts import ssh
from harbor_ops.site.model import Remote

if TYPE_CHECKING:
    import paramiko

CHUNK = 1 << 20
# Hashing on the remote host: generous, but bounded (60 s plus 20 MB/s of file).
HASH_SECONDS_PER_BYTE = 1 / (20 << 20)
# A .partial older than this is a leftover of a dropped push and is removed by prune.
STALE_PARTIAL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class PushResult:
    name: str
    destination: str  # user@host:path/name
    size: int
    sha256: str
    seconds: float
    already_there: bool = False
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "destination": self.destination, "size": self.size,
                "sha256": self.sha256, "seconds": self.seconds,
                "already_there": self.already_there, "pruned": self.pruned}


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    created: datetime
    size: int
    verified: bool | None

    def ref(self) -> BackupRef:
        return BackupRef(self.name, self.created, bool(self.verified))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created": iso(self.created), "size": self.size,
                "verified": self.verified}


def checksums_match(local_sha256: str, remote_output: str) -> bool:
    """Pure: does ``sha256sum`` output (``<hex>  <file>``) name the local digest?"""
    words = remote_output.split()
    return bool(words) and words[0].lower() == local_sha256.lower() and len(words[0]) == 64


def push_backup(path: Path, remote: Remote, *, ssh_config: Path | None = None,
                accept_new_host_keys: bool = False) -> PushResult:
    """Copy one backup (and its verification sidecar) to ``remote``, checked there."""
    path = Path(path)
    if parse_name(path.name) is None or not path.is_file():
        raise RemoteError(f"{path} is not a backup file", hint="see `harborctl backup list`")
    t0 = time.monotonic()
    with _session(remote, ssh_config, accept_new_host_keys) as (client, sftp, where):
        _ensure_dir(sftp, remote.path, where)
        final = posixpath.join(remote.path, path.name)
        partial = final + PARTIAL_SUFFIX
        size = path.stat().st_size
        existing = _stat(sftp, final)
        if existing is not None and existing.st_size == size:
            digest = file_sha256(path)
            out = _remote_sha256(client, final, size, where)
            if checksums_match(digest, out):
                _push_sidecar(sftp, path, final)
                return PushResult(path.name, f"{where}/{path.name}", size, digest,
                                  round(time.monotonic() - t0, 3), already_there=True)
        try:
            digest = _upload(sftp, path, partial)
            out = _remote_sha256(client, partial, size, where)
            if not checksums_match(digest, out):
                raise RemoteError(f"checksum mismatch on {where} for {path.name}: the copy "
                                  "there differs from the local backup; it was deleted",
                                  hint="check the remote disk and network, then push again")
            sftp.posix_rename(partial, final)
        except BaseException:
            _remove_quietly(sftp, partial)
            raise
        _push_sidecar(sftp, path, final)
        return PushResult(path.name, f"{where}/{path.name}", size, digest,
                          round(time.monotonic() - t0, 3))


def list_remote(remote: Remote, *, ssh_config: Path | None = None,
                hostname: str | None = None) -> list[RemoteEntry]:
    """Complete backups in the remote folder (of ``hostname`` only, when given), newest first."""
    with _session(remote, ssh_config) as (_client, sftp, where):
        return _listing(sftp, remote.path, where, hostname)


def prune_remote(remote: Remote, keep: KeepPolicy | None = None, *,
                 ssh_config: Path | None = None, hostname: str | None = None,
                 now: datetime | None = None, dry_run: bool = False) -> list[str]:
    """Apply the keep policy (``remote.keep``, else ``keep``) to the remote folder.

    The same pure retention as locally, so the newest backup and the newest verified
    one are never deleted. With ``hostname``, other hosts' backups in a shared folder
    are left alone. Returns the names deleted (or that would be, with ``dry_run``).
    """
    policy = remote.keep or keep
    if policy is None:
        raise RemoteError("no keep policy for the remote backups (backup.remote.keep)")
    with _session(remote, ssh_config) as (_client, sftp, where):
        entries = _listing(sftp, remote.path, where, hostname)
        doomed = select_to_prune([e.ref() for e in entries], policy, now or utc_now())
        if dry_run:
            return [b.name for b in doomed]
        try:
            for b in doomed:
                target = posixpath.join(remote.path, b.name)
                sftp.remove(target)
                _remove_quietly(sftp, target + VERIFIED_SUFFIX)
            _remove_stale_partials(sftp, remote.path, hostname)
        except (OSError, _ssh_exception()) as exc:
            raise RemoteError(f"pruning backups on {where} failed: {ssh.reason(exc)}") from None
        return [b.name for b in doomed]


# ------------------------------------------------------------------ connection


def _ssh_exception() -> type[Exception]:
    import paramiko

    return paramiko.SSHException


@contextmanager
def _session(remote: Remote, ssh_config: Path | None, accept_new_host_keys: bool = False
             ) -> Iterator[tuple[paramiko.SSHClient, paramiko.SFTPClient, str]]:
    """A connected client and SFTP session; any SSH/OS failure becomes a RemoteError."""
    import paramiko

    where = f"{remote.user}@{remote.host}:{remote.path}"
    target = ssh.resolve(remote.host, port=remote.port, user=remote.user,
                         key_file=remote.key_file, ssh_config=ssh_config,
                         accept_new_host_keys=accept_new_host_keys)
    try:
        client = ssh.connect(target)
    except RemoteError as exc:
        raise RemoteError(f"{where}: {exc.message}", hint=exc.hint) from None
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(max(target.timeout, 60.0))  # type: ignore[union-attr]
        yield client, sftp, where
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise RemoteError(f"off-host copy to {where} failed: {ssh.reason(exc)}") from None
    finally:
        client.close()


# ------------------------------------------------------------------ remote steps


def _ensure_dir(sftp: paramiko.SFTPClient, folder: str, where: str) -> None:
    """mkdir -p with 0700 for what we create, then 0700 on the backup folder itself."""
    if not folder.startswith("/"):
        raise RemoteError(f"{where}: backup.remote.path must be absolute")
    current = "/"
    for part in [p for p in folder.split("/") if p]:
        current = posixpath.join(current, part)
        st = _stat(sftp, current)
        if st is None:
            sftp.mkdir(current, mode=0o700)
        elif not stat.S_ISDIR(st.st_mode or 0):
            raise RemoteError(f"{where}: {current} exists and is not a folder")
    sftp.chmod(folder, 0o700)


def _stat(sftp: paramiko.SFTPClient, path: str) -> Any:
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None


def _upload(sftp: paramiko.SFTPClient, path: Path, partial: str) -> str:
    """Stream the file up (0600 from the first byte); return the SHA-256 of what was sent."""
    digest = hashlib.sha256()
    _remove_quietly(sftp, partial)
    with open(path, "rb") as src, sftp.open(partial, "wb") as dst:
        sftp.chmod(partial, 0o600)
        dst.set_pipelined(True)
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
    return digest.hexdigest()


_PY_SHA = ("import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],'rb')\n"
           "for b in iter(lambda:f.read(1<<20),b''):h.update(b)\n"
           "print(h.hexdigest(),sys.argv[1])")


def _remote_sha256(client: paramiko.SSHClient, path: str, size: int, where: str) -> str:
    """The remote host's own hash of ``path`` (sha256sum, else python3)."""
    timeout = 60 + size * HASH_SECONDS_PER_BYTE
    q = shlex.quote(path)
    command = (f"if command -v sha256sum >/dev/null 2>&1; then sha256sum -b -- {q}; "
               f"else python3 -c {shlex.quote(_PY_SHA)} {q}; fi")
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode(errors="replace")
    err = stderr.read().decode(errors="replace").strip()
    status = stdout.channel.recv_exit_status()
    if status != 0:
        raise RemoteError(f"{where}: hashing the uploaded copy failed ({status}): "
                          f"{err.splitlines()[-1] if err else 'no message'}")
    return out


def _push_sidecar(sftp: paramiko.SFTPClient, path: Path, final: str) -> None:
    """The verification record travels with the backup, so remote retention sees it."""
    side = sidecar_path(path)
    if not side.is_file():
        return
    target = final + VERIFIED_SUFFIX
    tmp = target + ".tmp"
    with sftp.open(tmp, "wb") as dst:
        sftp.chmod(tmp, 0o600)
        dst.write(side.read_bytes())
    sftp.posix_rename(tmp, target)


def _listing(sftp: paramiko.SFTPClient, folder: str, where: str,
             hostname: str | None) -> list[RemoteEntry]:
    import json

    try:
        attrs = sftp.listdir_attr(folder)
    except FileNotFoundError:
        return []
    out = []
    for a in attrs:
        parsed = parse_name(a.filename)
        if parsed is None or not stat.S_ISREG(a.st_mode or 0):
            continue
        if hostname is not None and parsed[0] != host_label(hostname):
            continue
        verified: bool | None = None
        try:
            with sftp.open(posixpath.join(folder, a.filename + VERIFIED_SUFFIX), "rb") as f:
                side = json.loads(f.read(1 << 16))
            verified = bool(side.get("ok")) if isinstance(side, dict) else None
        except (OSError, ValueError):
            verified = None
        out.append(RemoteEntry(a.filename, parsed[1], int(a.st_size or 0), verified))
    return sorted(out, key=lambda e: (e.created, e.name), reverse=True)


def _remove_stale_partials(sftp: paramiko.SFTPClient, folder: str,
                           hostname: str | None) -> None:
    cutoff = time.time() - STALE_PARTIAL_SECONDS
    for a in sftp.listdir_attr(folder):
        mine = hostname is None or is_host_backup(a.filename, hostname)
        if mine and a.filename.endswith(PARTIAL_SUFFIX) and (a.st_mtime or 0) < cutoff:
            _remove_quietly(sftp, posixpath.join(folder, a.filename))


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    # Best effort: a dead connection must not mask the error being reported.
    with contextlib.suppress(Exception):
        sftp.remove(path)
