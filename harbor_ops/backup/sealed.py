"""Sealed backups: the controller's copies of SSH hosts, age-encrypted from the first byte.

Why this layout: a tar header carries its member's size, and the plain writer
(:class:`~harbor_ops.backup.archive.ArchiveWriter`) goes back to fill it in once pg_dump
has ended; an age stream cannot be gone back into. So each data member is first written,
compressed, into a spool: an unnamed file (``O_TMPFILE`` in the backup folder: no name
to find, gone with the process whatever kills it) encrypted to a key made for this run
and held only in memory, so not even the spool is readable after the run. Then, every
size known, the backup is written front to back into the age stream of the site's
recipients: the manifest first, then the files, then the dump (a reader finds the
manifest and the files without decrypting the dump). Decrypted, it is an ordinary backup
tar: ``age -d -i identity.txt X.hbk.age | tar -x`` reads it. Plain bytes of the dump and
of the secret key exist only in memory, a chunk at a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from harbor_ops.backup import archive, crypto
from harbor_ops.backup.manifest import (
    DB_MEMBER,
    FILES_MEMBER,
    MANIFEST_MEMBER,
    Manifest,
    Member,
    iso,
    utc_now,
)
from harbor_ops.core.errors import BackupError
from harbor_ops.core.hashing import HashingWriter, sha256_file
from harbor_ops.site.model import Encryption

Progress = Callable[[str], None]


class Members(Protocol):
    """What writes a backup's two data members (:class:`~harbor_ops.backup.engine.Dump`)."""

    def database(self, sink: HashingWriter) -> None: ...
    def host_files(self, sink: HashingWriter) -> None: ...


def write_sealed(partial: Path, dump: Members, manifest_base: dict[str, Any],
                 guard: Callable[[int], None], enc: Encryption, say: Progress) -> Manifest:
    """Write the sealed backup into ``partial``; its manifest. Read back before it returns:
    the file on disk hashes to exactly what was encrypted."""
    import pyrage

    keys = crypto.recipients(enc)  # a bad recipient fails before the dump
    run_key = pyrage.x25519.Identity.generate()
    with _spool(partial.parent) as db_spool, _spool(partial.parent) as files_spool:
        say("dumping the database (encrypted as it is written)")
        db = _spool_member(db_spool, DB_MEMBER, dump.database, run_key, guard)
        say("saving host files (encrypted as they are written)")
        files = _spool_member(files_spool, FILES_MEMBER, dump.host_files, run_key, guard)
        manifest = Manifest(**manifest_base, members=[db, files], finished_at=iso(utc_now()))
        say("sealing the backup to backup.encryption's recipients")
        digest = _assemble(partial, manifest, [(files, files_spool), (db, db_spool)],
                           run_key, keys, guard)
    if sha256_file(partial) != digest:
        raise BackupError(f"read-back of {partial.name} differs from what was written")
    return manifest


@contextmanager
def _spool(folder: Path) -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile(dir=folder) as f:
        yield f


def _spool_member(spool: IO[bytes], name: str, write: Callable[[HashingWriter], None],
                  run_key: Any, guard: Callable[[int], None]) -> Member:
    """One member's compressed bytes into ``spool``, sealed to the run's key; its
    size and SHA-256 (of the compressed bytes, as the manifest records them)."""
    with crypto.EncryptingWriter(spool, [run_key.to_public()]) as sealed:
        sink = HashingWriter(sealed, guard)
        write(sink)
    return Member(name, sink.size, sink.hexdigest())


def _assemble(partial: Path, manifest: Manifest, parts: list[tuple[Member, IO[bytes]]],
              run_key: Any, keys: list[Any], guard: Callable[[int], None]) -> str:
    """The backup tar, front to back, into the age stream of ``keys``; its SHA-256."""
    fd = os.open(partial, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        out = HashingWriter(f, guard)
        with crypto.EncryptingWriter(out, keys) as age:
            body = manifest.to_json()
            _member(age, MANIFEST_MEMBER, len(body), iter([body]))
            for member, spool in parts:
                spool.seek(0)
                plain = crypto.DecryptingReader(spool, [run_key], f"the spool of {member.name}")
                check = HashingWriter()
                try:
                    _member(age, member.name, member.size, _read(plain, check))
                finally:
                    plain.close()
                if (check.size, check.hexdigest()) != (member.size, member.sha256):
                    raise BackupError(f"the spool of {member.name} changed while the backup "
                                      "was sealed")
            age.write(b"\0" * (2 * archive.BLOCK))
        f.flush()
        os.fsync(f.fileno())
    return out.hexdigest()


def _member(age: crypto.EncryptingWriter, name: str, size: int,
            chunks: Iterator[bytes]) -> None:
    age.write(archive.member_header(name, size))
    for chunk in chunks:
        age.write(chunk)
    age.write(b"\0" * ((-size) % archive.BLOCK))


def _read(plain: crypto.DecryptingReader, check: HashingWriter) -> Iterator[bytes]:
    """The spool's plain chunks, hashed on the way (proof the spool is what was dumped)."""
    while chunk := plain.read(archive.CHUNK):
        check.write(chunk)
        yield chunk
