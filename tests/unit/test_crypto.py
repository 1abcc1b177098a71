"""age encryption of backups: the standard ``age`` tool reads what harborctl writes, and
harborctl reads what ``age`` writes; a missing or wrong identity is a clear error."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
from pathlib import Path

import pyrage
import pytest

from harbor_ops.backup import crypto
from harbor_ops.core.errors import BackupError, ConfigError
from harbor_ops.site.model import Encryption


def _keys(tmp_path: Path) -> Encryption:
    ident = pyrage.x25519.Identity.generate()
    f = tmp_path / "identity.txt"
    f.write_text(f"# created for a test\n{ident}\n")
    f.chmod(0o600)
    return Encryption(recipients=(str(ident.to_public()),), identity_file=f)


def test_round_trip_streams_and_reports_the_hash_of_what_it_wrote(tmp_path: Path) -> None:
    enc = _keys(tmp_path)
    data = os.urandom(3 << 20)
    out = io.BytesIO()
    digest, size = crypto.encrypt_stream(io.BytesIO(data), out, enc)
    assert size == len(out.getvalue()) and data not in out.getvalue()
    assert digest == __import__("hashlib").sha256(out.getvalue()).hexdigest()
    back = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(out.getvalue()), back, enc, "x")
    assert back.getvalue() == data


def test_writer_and_reader_stream_piece_by_piece(tmp_path: Path) -> None:
    """What is written in pieces decrypts whole (by harborctl and by the age tool);
    a reader closed early stops the decryption; a cut-short file is an error."""
    enc = _keys(tmp_path)
    data = os.urandom(3 << 20)
    target = tmp_path / "b.age"
    with open(target, "wb") as f, crypto.EncryptingWriter(f, crypto.recipients(enc)) as w:
        for i in range(0, len(data), 100_000):
            w.write(data[i:i + 100_000])
    assert data[:64] not in target.read_bytes()
    with crypto.open_decrypted(target, enc) as r:
        assert r.read() == data
    with crypto.open_decrypted(target, enc) as r:
        assert r.read(10) == data[:10]  # then closed: the decrypting thread ends
    if shutil.which("age"):  # the disaster path: no harborctl, only the standard tool
        out = subprocess.run(["age", "-d", "-i", str(enc.identity_file), str(target)],
                             capture_output=True, check=True).stdout
        assert out == data
    target.write_bytes(target.read_bytes()[:-100])
    with crypto.open_decrypted(target, enc) as r, pytest.raises(BackupError, match="cut-short"):
        while r.read(1 << 16):
            pass


def test_a_failing_destination_keeps_its_own_error(tmp_path: Path) -> None:
    """A full disk under the encryptor stays a full disk (the engine says "no space")."""
    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    w = crypto.EncryptingWriter(Full(), crypto.recipients(_keys(tmp_path)))
    with pytest.raises(OSError) as exc:
        for _ in range(200):
            w.write(b"x" * 65536)
        w.close()
    assert exc.value.errno == errno.ENOSPC


@pytest.mark.parametrize("identity", [None, "other"])
def test_no_or_wrong_identity_is_a_clear_error(tmp_path: Path, identity: str | None) -> None:
    enc = _keys(tmp_path)
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(b"x" * 100), out, enc)
    if identity is None:
        other = Encryption(recipients=enc.recipients)
        match = "is encrypted and no identity can decrypt it"
    else:
        (tmp_path / "o").mkdir()
        other = _keys(tmp_path / "o")
        match = "cannot decrypt b.age"
    with pytest.raises(BackupError, match=match):
        crypto.decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), other, "b.age")


def test_a_bad_recipient_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an age recipient"):
        crypto.recipients(Encryption(recipients=("age1notakey",)))
