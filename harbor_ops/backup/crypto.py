"""Backups that leave the Harbor host are encrypted in the age format (pyrage).

A backup holds Harbor's secret key, harbor.yml and the TLS private key. Copies kept on
the Harbor host itself may stay plain (they sit next to the data they protect); every
copy kept anywhere else is encrypted, on the machine running harborctl, before a byte
leaves it: :func:`encrypt_stream` reads the plain backup and writes the age file
straight to its destination (no plaintext temp file); :class:`EncryptingWriter` and
:class:`DecryptingReader` do the same for a stream written (or read) piece by piece (the
controller's sealed backups of SSH hosts, :mod:`harbor_ops.backup.sealed`). In a
disaster a person decrypts with the standard tool:
``age -d -i identity.txt harbor-....hbk.age > harbor-....hbk``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

from harbor_ops.core.errors import BackupError, ConfigError
from harbor_ops.core.hashing import HashingWriter
from harbor_ops.site.model import Encryption

SUFFIX = ".age"
_log = logging.getLogger("harborctl")


class NoIdentity(BackupError):
    """A sealed copy met a run without its identity: the run's setup is missing a key,
    the backup is not bad (verify records nothing about it)."""


def recipients(enc: Encryption) -> list[Any]:
    """The age recipients a copy is encrypted to (``recipient`` and ``recipients_file``)."""
    import pyrage

    lines = list(enc.recipients)
    if enc.recipients_file is not None:
        lines += _key_lines(enc.recipients_file)
    try:
        return [pyrage.x25519.Recipient.from_str(line) for line in lines]
    except pyrage.RecipientError as exc:
        raise ConfigError([f"backup.encryption: not an age recipient ({exc})"]) from None


def identities(enc: Encryption | None, what: str) -> list[Any]:
    """The age identities that decrypt ``what``; a clear error when there are none."""
    import pyrage

    if enc is None or enc.identity_file is None:
        raise NoIdentity(f"{what} is encrypted and no identity can decrypt it",
                          hint="set backup.encryption.identity_file to the age identity "
                          "(AGE-SECRET-KEY-...) whose recipient it was encrypted to")
    try:
        return [pyrage.x25519.Identity.from_str(line)
                for line in _key_lines(enc.identity_file)]
    except pyrage.IdentityError:
        raise BackupError(f"{enc.identity_file} holds no age identity") from None


def _key_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def encrypt_stream(src: BinaryIO, dst: BinaryIO, enc: Encryption) -> tuple[str, int]:
    """Encrypt ``src`` into ``dst`` as it streams; (SHA-256, size) of the age file written.

    The one function every off-host copy goes through (``backup push``, the controller's
    copies of remote hosts), so the checksum a copy is later proven by is the checksum of
    exactly the bytes that left.
    """
    import pyrage

    sink = HashingWriter(dst)
    try:
        pyrage.encrypt_io(src, sink, recipients(enc))
    except pyrage.EncryptError as exc:
        raise BackupError(f"encrypting the backup failed: {exc}") from None
    return sink.hexdigest(), sink.size


def decrypt_stream(src: BinaryIO, dst: BinaryIO, enc: Encryption | None, what: str) -> None:
    """Decrypt the age stream ``src`` into ``dst`` (authenticated chunk by chunk)."""
    import pyrage

    keys = identities(enc, what)
    try:
        pyrage.decrypt_io(src, dst, keys)
    except pyrage.DecryptError as exc:
        raise BackupError(f"cannot decrypt {what}: {exc}",
                          hint="is backup.encryption.identity_file the identity of a "
                          "recipient it was encrypted to?") from None


def warn_plain(where: str) -> None:
    """Say loudly that a copy outside the Harbor host holds Harbor's secrets in the clear."""
    _log.warning("backup.encryption is not set: the copy on %s holds Harbor's secret key, "
                 "harbor.yml and TLS private key UNENCRYPTED; set backup.encryption "
                 "(age recipients) in the site file", where)


class _Recording:
    """``dst`` that remembers the OSError it raised (pyrage's encrypt_io hides its errno,
    and a full disk must stay a full disk)."""

    def __init__(self, dst: Any) -> None:
        self._dst = dst
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return int(self._dst.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._dst.flush()


class EncryptingWriter:
    """A writable stream whose bytes reach ``dst`` encrypted to ``keys`` (an age file).

    pyrage encrypts in one call that pulls from a reader; a thread runs that call on one
    end of a pipe while the caller writes into the other, so nothing but the pipe's
    buffer is ever held. :meth:`close` ends the age stream with its final, authenticated
    chunk (a stream cut short never decrypts).
    """

    def __init__(self, dst: Any, keys: list[Any]) -> None:
        """``dst``: anything with ``write`` and ``flush`` (a file, a hashing writer)."""
        import pyrage

        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(write_fd, "wb", buffering=1 << 16)
        self._dst = _Recording(dst)
        self._error: BaseException | None = None
        src = os.fdopen(read_fd, "rb")

        def run() -> None:
            with src:
                try:
                    pyrage.encrypt_io(src, self._dst, keys)
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    self._error = exc

        self._thread = threading.Thread(target=run, name="age-encrypt", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            self._pipe.write(data)
        except BrokenPipeError:  # the encrypting side stopped: say why
            self._thread.join()
            raise self._failure() from None
        return len(data)

    def flush(self) -> None:
        """Writes reach the encryptor as they come; the age file is complete at close."""

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._pipe.close()
        self._thread.join()
        if self._error is not None:
            raise self._failure()

    def _failure(self) -> BaseException:
        if self._dst.error is not None:
            return self._dst.error
        return BackupError(f"encrypting the backup failed: {self._error}")

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # the caller failed: end the thread, keep the caller's error
            with contextlib.suppress(BaseException):
                self.close()


class DecryptingReader:
    """A readable stream of the plain bytes of the age stream ``src`` (see
    :class:`EncryptingWriter`); a wrong identity or a damaged, cut-short file is a
    BackupError at the read that meets it. Closing it early stops the decryption."""

    def __init__(self, src: IO[bytes], keys: list[Any], what: str) -> None:
        import pyrage

        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(read_fd, "rb", buffering=1 << 16)
        self._what = what
        self._error: BaseException | None = None
        sink = os.fdopen(write_fd, "wb")

        def run() -> None:
            try:
                with sink:
                    pyrage.decrypt_io(src, sink, keys)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=run, name="age-decrypt", daemon=True)
        self._thread.start()

    def read(self, n: int = -1) -> bytes:
        data = self._pipe.read(n)
        if not data or n < 0:
            self._thread.join()
            if self._error is not None:
                raise BackupError(f"cannot decrypt {self._what}: {self._error}",
                                  hint="is backup.encryption.identity_file the identity of "
                                  "a recipient it was encrypted to? a damaged or cut-short "
                                  "file never decrypts") from None
        return data

    def close(self) -> None:
        self._pipe.close()  # the decrypting thread's next write fails: it ends
        self._thread.join()


@contextlib.contextmanager
def open_decrypted(path: Path, enc: Encryption | None) -> Iterator[DecryptingReader]:
    """The plain bytes of the age file ``path``, streamed (never on disk)."""
    keys = identities(enc, path.name)
    with open(path, "rb") as src:
        reader = DecryptingReader(src, keys, path.name)
        try:
            yield reader
        finally:
            reader.close()
