"""Staged host files swap in as one unit and come back out exactly as they were."""

from __future__ import annotations

from pathlib import Path

from harbor_ops.backup.hostfiles import Staged, previous_path, staging_path


def _site(tmp_path: Path) -> tuple[Staged, Path, Path]:
    secret = tmp_path / "data" / "secret"
    (secret / "keys").mkdir(parents=True)
    (secret / "keys" / "secretkey").write_text("old key")
    cert = tmp_path / "tls" / "harbor.crt"  # the site names it; it does not exist yet
    cert.parent.mkdir()
    (staging_path(secret) / "keys").mkdir(parents=True)
    (staging_path(secret) / "keys" / "secretkey").write_text("new key")
    staging_path(cert).write_text("new cert")
    return Staged({"data_volume/secret": secret, "certs/0-harbor.crt": cert}), secret, cert


def _all(tmp_path: Path) -> dict[str, str]:
    return {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*")
            if p.is_file()}


def test_undo_puts_back_what_was_there_and_removes_what_was_not(tmp_path: Path) -> None:
    staged, secret, cert = _site(tmp_path)
    before = {k: v for k, v in _all(tmp_path).items() if "harborctl" not in k}
    staged.swap_in()
    assert (secret / "keys" / "secretkey").read_text() == "new key"
    assert cert.read_text() == "new cert"
    staged.undo()
    assert _all(tmp_path) == before
    assert not cert.exists()


def test_finish_keeps_the_new_files_and_nothing_else(tmp_path: Path) -> None:
    staged, secret, cert = _site(tmp_path)
    staged.swap_in()
    staged.finish()
    assert _all(tmp_path) == {"data/secret/keys/secretkey": "new key",
                              "tls/harbor.crt": "new cert"}
    assert not previous_path(secret).exists() and not staging_path(cert).exists()
