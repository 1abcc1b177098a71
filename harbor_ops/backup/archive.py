"""The backup container: one uncompressed tar file, written as a stream.

Members are compressed streams whose size is unknown until they end, so each member's
512-byte tar header is written as a placeholder, the data streamed after it, and the
header rewritten in place once the size is known (GNU format: fixed-size headers,
base-256 sizes above 8 GiB). Any ``tar`` can list and extract the result.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from harbor_ops.backup.manifest import MANIFEST_MEMBER, Manifest, Member

BLOCK = 512
CHUNK = 1 << 20


class MemberSink:
    """A writable stream that hashes and counts what it passes to the archive file."""

    def __init__(self, f: BinaryIO, on_write: Callable[[int], None] | None) -> None:
        self._f = f
        self._on_write = on_write
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._f.write(view)
        self.sha.update(view)
        self.size += len(view)
        if self._on_write is not None:
            self._on_write(len(view))
        return len(view)

    def flush(self) -> None:
        self._f.flush()


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
        info = tarfile.TarInfo(self._name)
        info.size = sink.size
        info.mode = 0o600
        info.mtime = int(time.time())
        header = info.tobuf(format=tarfile.GNU_FORMAT)
        assert len(header) == BLOCK, "member names must be short"
        self._f.seek(self._header_at)
        self._f.write(header)
        self._f.seek(end)
        member = Member(self._name, sink.size, sink.sha.hexdigest())
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


def read_manifest(path: Path) -> Manifest:
    """The manifest of a finished backup (raises OSError/ValueError/KeyError if unreadable)."""
    with tarfile.open(path, mode="r:") as tar:
        f = tar.extractfile(MANIFEST_MEMBER)
        if f is None:
            raise KeyError(MANIFEST_MEMBER)
        return Manifest.from_json(f.read())


def iter_member(path: Path, name: str) -> Iterator[bytes]:
    """The raw (still compressed) bytes of one member, in chunks."""
    with tarfile.open(path, mode="r:") as tar:
        f = tar.extractfile(name)
        if f is None:
            raise KeyError(name)
        while chunk := f.read(CHUNK):
            yield chunk


def check_members(path: Path, manifest: Manifest) -> list[str]:
    """Problems found comparing every member's size and SHA-256 with the manifest."""
    problems: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            present = {m.name: m for m in tar.getmembers()}
            for expected in manifest.members:
                info = present.get(expected.name)
                if info is None:
                    problems.append(f"{expected.name}: missing")
                    continue
                f = tar.extractfile(info)
                assert f is not None
                sha = hashlib.sha256()
                size = 0
                while chunk := f.read(CHUNK):
                    sha.update(chunk)
                    size += len(chunk)
                if size != expected.size:
                    problems.append(f"{expected.name}: {size} bytes, manifest says "
                                    f"{expected.size}")
                elif sha.hexdigest() != expected.sha256:
                    problems.append(f"{expected.name}: SHA-256 differs from the manifest")
    except (OSError, tarfile.TarError) as exc:
        problems.append(f"archive unreadable: {exc}")
    return problems


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()
