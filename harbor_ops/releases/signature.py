"""Is the offline installer signed by a key the site trusts? (``install.bundle_keyring``)

Harbor publishes ``harbor-offline-installer-vX.Y.Z.tgz.asc`` beside each bundle. A
checksum only proves the download is complete; the signature proves who made it. The
check runs ``gpg --verify`` in a throw-away home that holds ONLY the site's keyring
(never the user's keys, never a key server), and reads gpg's machine-readable status
lines: a valid signature by a key of that keyring passes; no ``.asc``, another key,
or a signature over other bytes fails with a message saying which.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GPG_TIMEOUT = 600.0  # gpg hashes the whole bundle (a few GB at most)


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    detail: str


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".asc")


def status_verdict(status: str) -> SignatureCheck:
    """Pure: gpg's ``--status-fd`` lines to a verdict (VALIDSIG is the only pass)."""
    words = [line.split()[1:] for line in status.splitlines() if line.startswith("[GNUPG:] ")]
    by_kind = {w[0]: w[1:] for w in words if w}
    if "BADSIG" in by_kind:
        return SignatureCheck(False, "the signature does not match the bundle (it was "
                              "changed after signing, or the .asc is another bundle's)")
    if "NO_PUBKEY" in by_kind or "ERRSIG" in by_kind:
        key = (by_kind.get("NO_PUBKEY") or by_kind.get("ERRSIG") or ["?"])[0]
        return SignatureCheck(False, f"signed by key {key}, which is not in "
                              "install.bundle_keyring")
    if "VALIDSIG" in by_kind and "GOODSIG" in by_kind:
        return SignatureCheck(True, f"signed by {by_kind['VALIDSIG'][0]}")
    return SignatureCheck(False, "gpg found no valid signature")


def verify_signature(bundle: Path, keyring: Path) -> SignatureCheck:
    """Verify ``<bundle>.asc`` against ``keyring`` only; never raises for a bad bundle."""
    gpg = shutil.which("gpg")
    if gpg is None:
        return SignatureCheck(False, "gpg is not installed (apt install gpg) and "
                              "install.bundle_keyring asks for a signature check")
    sig = signature_path(bundle)
    if not sig.is_file():
        return SignatureCheck(False, f"the bundle is unsigned: {sig.name} is missing beside it")
    home = Path(tempfile.mkdtemp(prefix="harborctl-gpg-"))  # 0700, only the site's keys
    try:
        base = [gpg, "--homedir", str(home), "--batch", "--no-tty", "--no-auto-key-locate",
                "--no-auto-key-retrieve"]
        imported = subprocess.run([*base, "--import", str(keyring)], capture_output=True,
                                  text=True, timeout=60, check=False)
        if imported.returncode != 0:
            return SignatureCheck(False, f"install.bundle_keyring {keyring} holds no usable "
                                  "OpenPGP public key")
        checked = subprocess.run([*base, "--status-fd", "1", "--verify", str(sig), str(bundle)],
                                 capture_output=True, text=True, timeout=GPG_TIMEOUT,
                                 check=False)
    except subprocess.TimeoutExpired:
        return SignatureCheck(False, f"gpg --verify took longer than {GPG_TIMEOUT:.0f} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    verdict = status_verdict(checked.stdout)
    if verdict.ok and checked.returncode != 0:
        return SignatureCheck(False, f"gpg --verify exited with {checked.returncode}")
    return verdict
