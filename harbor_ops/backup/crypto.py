"""Backups that leave the Harbor host are encrypted in the age format (pyrage).

A backup holds Harbor's secret key, harbor.yml and the TLS private key. Copies kept on
the Harbor host itself may stay plain (they sit next to the data they protect); every
copy kept anywhere else is encrypted, on the machine running harborctl, before a byte
leaves it: :func:`encrypt_stream` reads the plain backup and writes the age file
straight to its destination (no plaintext temp file). In a disaster a person decrypts
with the standard tool: ``age -d -i identity.txt harbor-....hbk.age > harbor-....hbk``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

from harbor_ops.core.errors import BackupError, ConfigError
from harbor_ops.core.fsutil import fsync_dir
from harbor_ops.core.hashing import HashingWriter
from harbor_ops.site.model import Encryption

SUFFIX = ".age"
_log = logging.getLogger("harborctl")


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
        raise BackupError(f"{what} is encrypted and no identity can decrypt it",
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


def encrypt_file(plain: Path, enc: Encryption) -> tuple[Path, str, int]:
    """``<backup>.age`` beside a finished backup, then the plain file removed.

    For copies that are not on the Harbor host (the controller's backups of remote hosts):
    the age file appears atomically (written as ``.partial``, fsynced, renamed) and the
    plain backup and its ``.partial`` never outlive the call. Returns (path, SHA-256, size)
    of the age file, the checksum its later copies are proven by.
    """
    target = plain.with_name(plain.name + SUFFIX)
    partial = target.with_name(target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst, open(plain, "rb") as src:
            digest, size = encrypt_stream(src, dst, enc)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, target)
        fsync_dir(target.parent)
    finally:
        partial.unlink(missing_ok=True)
        plain.unlink(missing_ok=True)
    return target, digest, size


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
