"""The backup container: one uncompressed tar file, written as a stream.

Members are compressed streams whose size is unknown until they end, so each member's
512-byte tar header is written as a placeholder, the data streamed after it, and the
header rewritten in place once the size is known (GNU format: fixed-size headers,
base-256 sizes above 8 GiB). Any ``tar`` can list and extract the result.

A sealed backup (``.hbk.age``, the controller's copies of SSH hosts) is the same tar
inside an age stream, read here as a stream: every reader walks the members in order, so
one function serves both, and the key that opens a sealed one is the run's
(:func:`decrypting`), never a plain copy on disk.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

import zstandard

from harbor_ops.backup import crypto
from harbor_ops.backup.manifest import FILES_MEMBER, MANIFEST_MEMBER, Manifest, Member
from harbor_ops.core.hashing import HashingWriter, sha256_stream
from harbor_ops.site.model import Encryption

BLOCK = 512
CHUNK = 1 << 20


class MemberSink(HashingWriter):
    """What a member's data is written to: the archive file, hashed and counted."""


class ArchiveWriter:
    """Append members to an open, seekable file; :meth:`finish` ends the tar stream."""

    def __init__(self, f: BinaryIO, *, on_write: Callable[[int], None] | None = None) -> None:
        self._f = f
        self._on_write = on_write
        self.members: list[Member] = []

    def begin(self, name: str) -> MemberSink:
        self._header_at = self._f.tell()
        self._f.write(b"\0" * BLOCK)
        self._name = name
        return MemberSink(self._f, self._on_write)

    def end(self, sink: MemberSink) -> Member:
        sink.flush()
        pad = (-sink.size) % BLOCK
        self._f.write(b"\0" * pad)
        end = self._f.tell()
        self._f.seek(self._header_at)
        self._f.write(member_header(self._name, sink.size))
        self._f.seek(end)
        member = Member(self._name, sink.size, sink.hexdigest())
        self.members.append(member)
        return member

    def add_bytes(self, name: str, data: bytes) -> Member:
        sink = self.begin(name)
        sink.write(data)
        return self.end(sink)

    def finish(self) -> None:
        self._f.write(b"\0" * (2 * BLOCK))
        self._f.flush()
        os.fsync(self._f.fileno())


def member_header(name: str, size: int) -> bytes:
    """The 512-byte tar header of a plain 0600 member of ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(time.time())
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    assert len(header) == BLOCK, "member names must be short"
    return header


def is_sealed(path: Path) -> bool:
    """Is ``path`` a sealed (age-encrypted) backup?"""
    return path.name.endswith(crypto.SUFFIX)


_KEYS: ContextVar[Encryption | None] = ContextVar("harborctl_backup_keys", default=None)


@contextmanager
def decrypting(enc: Encryption | None) -> Iterator[None]:
    """Sealed backups read inside this block are opened with ``enc``'s identity.

    The key belongs to the run (the site's ``backup.encryption``), not to each of the
    dozen readers a verify or restore goes through: the entry points set it once.
    """
    token = _KEYS.set(enc)
    try:
        yield
    finally:
        _KEYS.reset(token)


def can_decrypt() -> bool:
    """Does this run hold an identity for sealed backups?"""
    enc = _KEYS.get()
    return enc is not None and enc.identity_file is not None


@contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    """The backup's tar, random access for a plain file, a stream for a sealed one."""
    if not is_sealed(path):
        with tarfile.open(path, mode="r:") as tar:
            yield tar
        return
    with crypto.open_decrypted(path, _KEYS.get()) as plain, \
            tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
        yield tar


def _find(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    for info in tar:
        if info.name == name:
            f = tar.extractfile(info)
            if f is not None:
                return f
    raise KeyError(name)


def read_manifest(path: Path) -> Manifest:
    """The manifest of a finished backup (raises OSError/ValueError/KeyError if unreadable)."""
    with _open(path) as tar:
        return Manifest.from_json(_find(tar, MANIFEST_MEMBER).read())


def iter_member(path: Path, name: str) -> Iterator[bytes]:
    """The raw (still compressed) bytes of one member, in chunks."""
    with _open(path) as tar:
        f = _find(tar, name)
        while chunk := f.read(CHUNK):
            yield chunk


def check_members(path: Path, manifest: Manifest) -> list[str]:
    """Problems found comparing every member's size and SHA-256 with the manifest."""
    problems: list[str] = []
    expected = {m.name: m for m in manifest.members}
    seen: set[str] = set()
    try:
        with _open(path) as tar:
            for info in tar:
                want = expected.get(info.name)
                f = tar.extractfile(info) if want is not None else None
                if want is None or f is None:
                    continue
                seen.add(info.name)
                digest, size = sha256_stream(f)
                if size != want.size:
                    problems.append(f"{want.name}: {size} bytes, manifest says {want.size}")
                elif digest != want.sha256:
                    problems.append(f"{want.name}: SHA-256 differs from the manifest")
    except (OSError, tarfile.TarError) as exc:
        problems.append(f"archive unreadable: {exc}")
    problems += [f"{name}: missing" for name in expected if name not in seen]
    return problems


def member_problem(info: tarfile.TarInfo, prefixes: Iterable[str]) -> str | None:
    """Why one member of files.tar.zst must not be restored (None: it may).

    Only plain files and folders, with relative names free of ``..``, under one of the
    manifest's own arcnames: a link, device or pipe could point a later write anywhere,
    and a name could climb out of its destination.
    """
    name = info.name
    if not (info.isreg() or info.isdir()):
        kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
                tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                tarfile.FIFOTYPE: "a named pipe"}.get(info.type, "not a plain file")
        return f"member {name!r} is {kind}"
    parts = PurePosixPath(name).parts
    if name.startswith("/") or not parts:
        return f"member {name!r} has an absolute or empty name"
    if ".." in parts or any(ord(c) < 32 for c in name) or "\\" in name:
        return f"member {name!r} climbs out of its folder or has control characters"
    clean = "/".join(p for p in parts if p != ".")
    if not any(clean == p or clean.startswith(p + "/") for p in prefixes):
        return f"member {name!r} is not under a file the manifest lists"
    return None


def file_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes] | None]]:
    """Members of files.tar.zst in order, streamed (each file's data readable in turn)."""
    with _open(path) as outer:
        raw = _find(outer, FILES_MEMBER)
        with zstandard.ZstdDecompressor().stream_reader(raw) as z, \
                tarfile.open(fileobj=z, mode="r|") as tar:
            for info in tar:
                yield info, tar.extractfile(info) if info.isreg() else None


def files_problems(path: Path, manifest: Manifest) -> list[str]:
    """Every member of files.tar.zst that a restore would refuse (see member_problem)."""
    if manifest.member(FILES_MEMBER) is None:
        return []
    prefixes = [e.arcname for e in manifest.files]
    problems: list[str] = []
    try:
        for info, _data in file_members(path):
            problem = member_problem(info, prefixes)
            if problem:
                problems.append(problem)
    except (OSError, KeyError, tarfile.TarError, zstandard.ZstdError) as exc:
        problems.append(f"{FILES_MEMBER} unreadable: {exc}")
    return problems
