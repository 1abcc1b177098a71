"""SHA-256, the one way harborctl hashes files and streams (bundles, backups, uploads)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO, Protocol

CHUNK = 1 << 20


class Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class HashingWriter:
    """A writable stream that hashes and counts what it passes on to ``dst``.

    ``dst`` None only hashes; ``on_write`` sees each write's size (a space guard, progress).
    """

    def __init__(self, dst: Writable | None = None,
                 on_write: Callable[[int], None] | None = None) -> None:
        self._dst = dst
        self._on_write = on_write
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if self._dst is not None:
            self._dst.write(data)  # type: ignore[arg-type]
        self.sha.update(view)
        self.size += len(view)
        if self._on_write is not None:
            self._on_write(len(view))
        return len(view)

    def flush(self) -> None:
        flush = getattr(self._dst, "flush", None)
        if flush is not None:
            flush()

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class HashingReader:
    """A read-only file wrapper that hashes every byte as it goes past."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def sha256_stream(f: IO[bytes]) -> tuple[str, int]:
    """(hex digest, size) of what is left to read in ``f``."""
    h = HashingWriter()
    while chunk := f.read(CHUNK):
        h.write(chunk)
    return h.hexdigest(), h.size


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
