"""Putting saved host files back: staged beside their destinations, then swapped in.

The destinations come from the site (data volume, harbor.yml, the certificates it
names), never from the archive: a member is written only under the staging twin of a
destination, only as a plain file or folder, never through a link. Staging first
means a damaged or hostile archive fails before anything of the site is touched, and
the swap (one rename per destination) can be undone until :meth:`Staged.finish`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from harbor_ops.backup import archive
from harbor_ops.backup.manifest import Manifest, certificate_index
from harbor_ops.core.errors import BackupError
from harbor_ops.core.fsutil import fsync_dir

STAGING_TAG = ".harborctl-restore"
OLD_TAG = ".harborctl-previous"


def file_plan(manifest: Manifest, *, data_volume: Path | None, harbor_yml: Path | None,
              certificates: Sequence[Path] = ()) -> tuple[dict[str, Path], list[str]]:
    """arcname -> destination on this host, from the site's own paths; and what is skipped.

    The manifest's recorded host paths are ignored: the site says where its secret key,
    harbor.yml and certificates live. Certificates map by position (certificate, key).
    """
    plan: dict[str, Path] = {}
    skipped: list[str] = []
    for e in manifest.files:
        if e.role in ("secret", "redis") and data_volume is not None:
            plan[e.arcname] = data_volume / PurePosixPath(e.arcname).name
        elif e.role == "harbor_yml" and harbor_yml is not None:
            plan[e.arcname] = harbor_yml
        elif e.role == "certificate":
            index = certificate_index(e.arcname)
            if index is not None and index < len(certificates):
                plan[e.arcname] = certificates[index]
            else:
                skipped.append(f"{e.arcname}: the site names no certificate #{index}")
    return plan, skipped


def staging_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{STAGING_TAG}")


def previous_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{OLD_TAG}")


class StagingFs(Protocol):
    """The filesystem the destinations are on, as :class:`Staged` moves files on it: this
    host's (:class:`LocalFs`), or an SSH host's over SFTP
    (:class:`harbor_ops.backup.ssh_restore.SftpFs`)."""

    errors: tuple[type[BaseException], ...]  # what a best-effort step may meet

    def exists(self, path: Path) -> bool: ...  # a link counts, not followed
    def remove(self, path: Path) -> None: ...  # a file, link or whole folder; absent: fine
    def rename(self, src: Path, dst: Path) -> None: ...
    def synced(self, folder: Path) -> None: ...  # the folder's renames made durable
    def guard(self, what: str) -> contextlib.AbstractContextManager[None]: ...


class LocalFs:
    """This host's filesystem."""

    errors: tuple[type[BaseException], ...] = (OSError,)

    def exists(self, path: Path) -> bool:
        return path.exists() or path.is_symlink()

    def remove(self, path: Path) -> None:
        _remove(path)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def synced(self, folder: Path) -> None:
        fsync_dir(folder)

    def guard(self, what: str) -> contextlib.AbstractContextManager[None]:
        del what  # errors here are this host's own OSErrors
        return contextlib.nullcontext()


@dataclass
class Staged:
    """Files extracted beside their destinations, ready to be swapped in (or dropped)."""

    plan: dict[str, Path]
    written: list[str] = field(default_factory=list)
    swapped: list[tuple[Path, bool]] = field(default_factory=list)  # (dest, it existed)
    fs: StagingFs = field(default_factory=LocalFs)

    def swap_in(self) -> None:
        """Each destination replaced by its staged twin; the old one kept aside."""
        fs = self.fs
        with fs.guard("swapping the restored files in"):
            for dest in self.plan.values():
                staged = staging_path(dest)
                if not fs.exists(staged):
                    continue  # the backup holds nothing for it: the site's file stays
                if fs.exists(previous_path(dest)):
                    fs.remove(previous_path(dest))
                existed = fs.exists(dest)
                self.swapped.append((dest, existed))  # before the renames: undo sees both
                if existed:
                    fs.rename(dest, previous_path(dest))
                fs.rename(staged, dest)
                fs.synced(dest.parent)

    def undo(self) -> None:
        """Put every swapped destination back as it was (best effort, all of them)."""
        fs = self.fs
        for dest, existed in reversed(self.swapped):
            with contextlib.suppress(*fs.errors):
                if not existed:
                    fs.remove(dest)
                elif fs.exists(previous_path(dest)):
                    fs.remove(dest)
                    fs.rename(previous_path(dest), dest)
                fs.synced(dest.parent)
        self.swapped.clear()
        self.discard()

    def discard(self) -> None:
        """Drop what is staged and not swapped in (best effort)."""
        for dest in self.plan.values():
            with contextlib.suppress(*self.fs.errors):
                self.fs.remove(staging_path(dest))

    def finish(self) -> None:
        """The swap is final: the previous files go."""
        for dest, _existed in self.swapped:
            self.fs.remove(previous_path(dest))
        self.discard()


def planned_members(path: Path, manifest: Manifest, plan: dict[str, Path]
                    ) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None, Path, str]]:
    """The saved files' members a restore writes, each with its destination in ``plan``
    and its path under it: only plain files and folders the manifest names (else
    :class:`BackupError`), a single file never a folder nor under one; a member of a file
    the site does not restore (e.g. no certificate there) is left out. Where they are
    written (here, over SFTP) is the caller's."""
    listed = [e.arcname for e in manifest.files]
    for info, data in archive.file_members(path):
        problem = archive.member_problem(info, listed)
        if problem:
            raise BackupError(f"refusing {path.name}: {problem}")
        name = info.name.rstrip("/")
        prefix = next((p for p in plan if name == p or name.startswith(p + "/")), None)
        if prefix is None:
            continue
        rel = name[len(prefix):].lstrip("/")
        folder = prefix.startswith("data_volume/")  # secret, redis; the rest single files
        if not folder and (rel or not info.isreg()):
            raise BackupError(f"refusing member {info.name!r}: {prefix} is a single file")
        if folder and not rel and not info.isdir():
            raise BackupError(f"refusing member {info.name!r}: {prefix} is a folder")
        yield info, data, plan[prefix], rel


def stage_files(path: Path, manifest: Manifest, plan: dict[str, Path]) -> Staged:
    """Extract the saved files into the staging twins of ``plan``'s destinations."""
    staged = Staged(plan)
    try:
        for dest in plan.values():
            _remove(staging_path(dest))
            dest.parent.mkdir(parents=True, exist_ok=True)
        for info, data, dest, rel in planned_members(path, manifest, plan):
            _write_member(info, data, dest, rel)
        staged.written = [str(d) for d in plan.values() if staging_path(d).exists()]
    except BaseException:
        staged.discard()
        raise
    return staged


def _write_member(info: tarfile.TarInfo, data: IO[bytes] | None, dest: Path, rel: str) -> None:
    """Write one member under the staging twin of ``dest``; nothing else, no link followed."""
    root = staging_path(dest)
    target = root / rel if rel else root
    if info.isdir():
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(target), real_root]) != real_root:
        raise BackupError(f"refusing member {info.name!r}: it leaves {dest}")
    if info.isdir():
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    else:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    try:
        if data is not None:
            with os.fdopen(os.dup(fd), "wb") as out:
                shutil.copyfileobj(data, out, archive.CHUNK)
                out.flush()
                os.fsync(out.fileno())
        if os.geteuid() == 0:
            os.fchown(fd, info.uid, info.gid)
        os.fchmod(fd, info.mode & 0o775)  # as saved, never world-writable or setuid
    finally:
        os.close(fd)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
