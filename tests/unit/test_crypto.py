"""age encryption of backups: the standard ``age`` tool reads what harborctl writes, and
harborctl reads what ``age`` writes; a missing or wrong identity is a clear error."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pyrage
import pytest

from harbor_ops.backup import crypto
from harbor_ops.core.errors import BackupError, ConfigError
from harbor_ops.core.hashing import sha256_file
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


def test_encrypt_file_leaves_only_the_age_file(tmp_path: Path) -> None:
    enc = _keys(tmp_path)
    plain = tmp_path / "harbor-h-20261201T000000.000Z.hbk"
    plain.write_bytes(b"secret key bytes" * 1000)
    target, digest, size = crypto.encrypt_file(plain, enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["identity.txt", target.name])
    assert target.stat().st_mode & 0o777 == 0o600
    assert sha256_file(target) == digest and target.stat().st_size == size
    if shutil.which("age"):  # the disaster path: no harborctl, only the standard tool
        out = subprocess.run(["age", "-d", "-i", str(enc.identity_file), str(target)],
                             capture_output=True, check=True).stdout
        assert out == b"secret key bytes" * 1000


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
