"""Preflight authenticates the bundle when the site names a keyring (install.bundle_keyring).

Real gpg: the test makes two signing keys in a private GNUPGHOME, exports the trusted one
as the site's keyring, and signs bundles the way Harbor publishes them (a detached,
armored ``harbor-offline-installer-vX.Y.Z.tgz.asc``). What a user sees is preflight's
``bundle`` check: pass naming the signer, or fail saying unsigned / another key / changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harbor_ops.preflight.run import CHECKS, run_preflight
from harbor_ops.releases.signature import status_verdict
from harbor_ops.site.load import load_site_text
from tests.bed.fixtures import unavailable
from tests.unit.test_bundle_inspect import make_bundle

pytestmark = pytest.mark.integration

NAME = "harbor-offline-installer-v2.15.2.tgz"


class Signer:
    """A signing key in its own GNUPGHOME (never the user's)."""

    def __init__(self, home: Path, uid: str) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self._gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys").stdout
        self.fingerprint = next(line.split(":")[9] for line in listing.splitlines()
                                if line.startswith("fpr:"))

    def _gpg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--no-tty",
                               "--pinentry-mode", "loopback", *args], capture_output=True,
                              text=True, check=True, timeout=120)

    def export(self, path: Path) -> Path:
        self._gpg("--armor", "--output", str(path), "--export", self.fingerprint)
        return path

    def sign(self, bundle: Path) -> Path:
        sig = bundle.with_name(bundle.name + ".asc")
        sig.unlink(missing_ok=True)
        self._gpg("--passphrase", "", "--armor", "--detach-sign", "--output", str(sig),
                  str(bundle))
        return sig

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True, check=False, timeout=30)


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Signer, Signer]]:
    if shutil.which("gpg") is None:
        unavailable("gpg is not installed (see .ci/provision)")
    base = tmp_path_factory.mktemp("gpg")
    made = (Signer(base / "harbor", "Harbor Release Test <release@harbor.test>"),
            Signer(base / "other", "Someone Else <else@example.test>"))
    try:
        yield made
    finally:
        for s in made:
            s.close()


def _bundle_check(tmp_path: Path, bundle: Path, keyring: Path | None) -> tuple[str, str]:
    install = {"bundle_keyring": str(keyring)} if keyring else {}
    site = load_site_text(yaml.safe_dump({
        "harbor": {"version": "2.15.2", "hostname": "harbor.test", "data_volume": "/data",
                   "harbor_admin_password_env": "X", "database": {"password_env": "Y"}},
        "install": install}), base_dir=tmp_path)
    report = run_preflight(site, bundle=bundle, skip=[c for c in CHECKS if c != "bundle"])
    (result,) = [r for rs in report.results.values() for r in rs if r.name == "bundle"]
    return result.verdict, result.reason


def test_a_bundle_signed_by_the_sites_key_passes(signers: tuple[Signer, Signer],
                                                 tmp_path: Path) -> None:
    harbor, _ = signers
    bundle = make_bundle(tmp_path / NAME)
    harbor.sign(bundle)
    verdict, reason = _bundle_check(tmp_path, bundle, harbor.export(tmp_path / "harbor.asc"))
    assert verdict == "pass" and f"signed by {harbor.fingerprint}" in reason, reason


def test_unsigned_other_key_and_changed_bundles_are_refused(signers: tuple[Signer, Signer],
                                                            tmp_path: Path) -> None:
    harbor, other = signers
    keyring = harbor.export(tmp_path / "harbor.asc")
    bundle = make_bundle(tmp_path / NAME)
    verdict, reason = _bundle_check(tmp_path, bundle, keyring)
    assert verdict == "fail" and f"unsigned: {NAME}.asc is missing" in reason, reason

    other.sign(bundle)
    verdict, reason = _bundle_check(tmp_path, bundle, keyring)
    assert verdict == "fail" and "not in install.bundle_keyring" in reason, reason
    assert other.fingerprint[-16:] in reason

    harbor.sign(bundle)
    data = bytearray(bundle.read_bytes())
    make_bundle(bundle)  # another bundle of the same name, same size class: not what was signed
    assert bundle.read_bytes() != bytes(data)
    verdict, reason = _bundle_check(tmp_path, bundle, keyring)
    assert verdict == "fail" and "does not match the bundle" in reason, reason

    # Without a keyring the same bundle only gets the integrity checks (as before).
    assert _bundle_check(tmp_path, bundle, None)[0] == "pass"


def test_the_users_own_keys_are_never_consulted(signers: tuple[Signer, Signer],
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """GNUPGHOME holding the other key must not make its signature acceptable."""
    harbor, other = signers
    monkeypatch.setenv("GNUPGHOME", str(other.home))
    bundle = make_bundle(tmp_path / NAME)
    other.sign(bundle)
    verdict, reason = _bundle_check(tmp_path, bundle, harbor.export(tmp_path / "harbor.asc"))
    assert verdict == "fail" and "not in install.bundle_keyring" in reason, reason
    assert os.environ["GNUPGHOME"] == str(other.home)


@pytest.mark.parametrize(("status", "ok"), [
    ("[GNUPG:] GOODSIG ABC x\n[GNUPG:] VALIDSIG FPR 2026-01-01\n", True),
    ("[GNUPG:] GOODSIG ABC x\n", False),
    ("[GNUPG:] BADSIG ABC x\n[GNUPG:] VALIDSIG FPR\n", False),
    ("[GNUPG:] ERRSIG ABC 22 8 00 1 9\n[GNUPG:] NO_PUBKEY ABC\n", False),
    ("", False),
])
def test_status_verdict(status: str, ok: bool) -> None:
    assert status_verdict(status).ok is ok
