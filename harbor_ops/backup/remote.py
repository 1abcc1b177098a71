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
import json
import os
import posixpath
import shlex
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from harbor_ops.backup import crypto
from harbor_ops.backup.manifest import (
    PARTIAL_SUFFIX,
    VERIFIED_SUFFIX,
    host_label,
    is_host_backup,
    iso,
    parse_name,
    read_push_record,
    sidecar_path,
    utc_now,
    write_push_record,
    write_sidecar,
)
from harbor_ops.backup.retention import BackupRef, KeepPolicy, select_to_prune
from harbor_ops.core.errors import BackupError, RemoteError
from harbor_ops.core.hashing import HashingWriter, sha256_file
from harbor_ops.hosts import ssh
from harbor_ops.site.model import Encryption, Remote

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
                accept_new_host_keys: bool = False,
                encryption: Encryption | None = None) -> PushResult:
    """Copy one backup (and its verification sidecar) to ``remote``, checked there.

    With ``encryption`` the copy is ``<name>.age``, encrypted as it streams up (a sealed
    ``.hbk.age`` backup is copied as it is). The
    SHA-256 of the bytes uploaded is recorded beside the backup (``.pushed.json``): a
    later push finds the copy complete by that checksum, never by encrypting again
    (age output differs each time).
    """
    path = Path(path)
    if parse_name(path.name) is None or not path.is_file():
        raise RemoteError(f"{path} is not a backup file", hint="see `harborctl backup list`")
    t0 = time.monotonic()
    sealed = path.name.endswith(crypto.SUFFIX)
    if sealed:  # already encrypted on this machine: its own bytes go, never sealed twice
        encryption = None
    remote_name = path.name + (crypto.SUFFIX if encryption is not None else "")
    with _session(remote, ssh_config, accept_new_host_keys) as (client, sftp, where):
        _ensure_dir(sftp, remote.path, where)
        final = posixpath.join(remote.path, remote_name)
        known = _known_copy(path, remote_name)
        existing = _stat(sftp, final)
        if known is not None and existing is not None and existing.st_size == known[1] \
                and checksums_match(known[0], _remote_sha256(client, final, known[1], where)):
            _push_sidecar(sftp, path, final)
            return PushResult(remote_name, f"{where}/{remote_name}", known[1], known[0],
                              round(time.monotonic() - t0, 3), already_there=True)
        partial = final + PARTIAL_SUFFIX
        try:
            digest, size = _upload(sftp, path, partial, encryption)
            if not checksums_match(digest, _remote_sha256(client, partial, size, where)):
                raise RemoteError(f"checksum mismatch on {where} for {remote_name}: the copy "
                                  "there differs from what was sent; it was deleted",
                                  hint="check the remote disk and network, then push again")
            sftp.posix_rename(partial, final)
        except BaseException:
            _remove_quietly(sftp, partial)
            raise
        write_push_record(path, {"remote_name": remote_name, "sha256": digest, "size": size,
                                 "destination": f"{where}/{remote_name}",
                                 "encrypted": sealed or encryption is not None})
        _push_sidecar(sftp, path, final)
        return PushResult(remote_name, f"{where}/{remote_name}", size, digest,
                          round(time.monotonic() - t0, 3))


def _known_copy(path: Path, remote_name: str) -> tuple[str, int] | None:
    """(SHA-256, size) the copy named ``remote_name`` has when it is complete."""
    record = read_push_record(path)
    if record is not None and record.get("remote_name") == remote_name:
        return str(record["sha256"]), int(record["size"])
    if remote_name == path.name:  # a plain copy is the file itself
        return sha256_file(path), path.stat().st_size
    return None


def mark_verified(path: Path, remote: Remote, *, ssh_config: Path | None = None,
                  accept_new_host_keys: bool = False) -> bool:
    """Send the verification record of a pushed backup to its copy, so remote retention
    never deletes the newest verified copy. False when the backup was never pushed."""
    record = read_push_record(path)
    if record is None or not sidecar_path(path).is_file():
        return False
    with _session(remote, ssh_config, accept_new_host_keys) as (_client, sftp, _where):
        final = posixpath.join(remote.path, str(record["remote_name"]))
        if _stat(sftp, final) is None:
            return False
        _push_sidecar(sftp, path, final)
    return True


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    source: str
    size: int
    seconds: float
    decrypted: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "source": self.source,
                "size": self.size, "seconds": self.seconds, "decrypted": self.decrypted}


def pull_backup(remote: Remote, backup_dir: Path, *, name: str | None = None,
                hostname: str | None = None, encryption: Encryption | None = None,
                ssh_config: Path | None = None, accept_new_host_keys: bool = False
                ) -> PullResult:
    """Bring a remote copy (default: ``hostname``'s newest) back into ``backup_dir``.

    An ``.age`` copy is decrypted as it streams down; the result gets its name only
    after its manifest and every checksum are proven, so a listed backup is complete.
    """
    t0 = time.monotonic()
    with _session(remote, ssh_config, accept_new_host_keys) as (_client, sftp, where):
        entries = _listing(sftp, remote.path, where, hostname)
        wanted = [e for e in entries if name is None or e.name in (name, name + crypto.SUFFIX)]
        if not wanted:
            raise RemoteError(f"no backup {name or 'of ' + str(hostname)} on {where}",
                              hint="name a backup the remote folder holds")
        entry = wanted[0]
        if entry.name.endswith(crypto.SUFFIX):
            crypto.identities(encryption, entry.name)  # no identity: refuse before any byte
        local = entry.name.removesuffix(crypto.SUFFIX)
        final = Path(backup_dir) / local
        if final.exists():
            raise RemoteError(f"{local} is already in {backup_dir}")
        Path(backup_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = final.with_name(local + PARTIAL_SUFFIX)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as dst, \
                    sftp.open(posixpath.join(remote.path, entry.name), "rb") as src:
                src.prefetch()
                if entry.name.endswith(crypto.SUFFIX):
                    crypto.decrypt_stream(src, dst, encryption, entry.name)
                else:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.fsync(dst.fileno())
            _prove(partial, where)
            _pull_sidecar(sftp, posixpath.join(remote.path, entry.name), final)
            os.link(partial, final)
        finally:
            partial.unlink(missing_ok=True)
    return PullResult(local, final, f"{where}/{entry.name}", final.stat().st_size,
                      round(time.monotonic() - t0, 3), entry.name.endswith(crypto.SUFFIX))


def _prove(partial: Path, where: str) -> None:
    """A pulled file is a backup only when its manifest and every checksum hold."""
    from harbor_ops.backup.drill import archive_problems, load_manifest

    name = partial.name.removesuffix(PARTIAL_SUFFIX)
    try:
        problems = archive_problems(partial, load_manifest(partial))
    except BackupError as exc:
        problems = [exc.message]
    if problems:
        raise RemoteError(f"the copy of {name} on {where} is not a complete backup: "
                          + "; ".join(problems))


def _pull_sidecar(sftp: paramiko.SFTPClient, remote_file: str, final: Path) -> None:
    try:
        with sftp.open(remote_file + VERIFIED_SUFFIX, "rb") as f:
            data = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        write_sidecar(final, data)


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

    return cast(type[Exception], paramiko.SSHException)


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
        sftp.get_channel().settimeout(max(target.timeout, 60.0))
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


def _upload(sftp: paramiko.SFTPClient, path: Path, partial: str,
            encryption: Encryption | None) -> tuple[str, int]:
    """Stream the file up (0600 from the first byte, encrypted when asked); return the
    SHA-256 and size of what was sent."""
    _remove_quietly(sftp, partial)
    with open(path, "rb") as src, sftp.open(partial, "wb") as dst:
        sftp.chmod(partial, 0o600)
        dst.set_pipelined(True)
        if encryption is not None:
            digest, size = crypto.encrypt_stream(src, dst, encryption)
        else:
            sink = HashingWriter(dst)
            shutil.copyfileobj(src, sink, CHUNK)
            digest, size = sink.hexdigest(), sink.size
        dst.flush()
    return digest, size


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
    return str(out)


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
    try:
        attrs = sftp.listdir_attr(folder)
    except FileNotFoundError:
        return []
    out = []
    for a in attrs:
        parsed = parse_name(a.filename.removesuffix(crypto.SUFFIX))
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
