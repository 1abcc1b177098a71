#!/usr/bin/env python3
"""Install harborctl from this wheelhouse, offline:  python3 install.py

    python3 install.py [--prefix /opt/harborctl] [--bin-dir /usr/local/bin]

Copied into every wheelhouse by scripts/wheelhouse (as install.py). It checks that the
Python running it is the one the wheels were built for (exit 14 otherwise, nothing
written) and every file against SHA256SUMS (exit 1 on a mismatch), makes a venv WITHOUT pip
(Debian's python3 has no ensurepip unless python3-venv is installed), installs pip from its
own wheel in the archive, installs harborctl with ``pip install --no-index --find-links``
(no package index is ever asked), and links ``harborctl`` into the bin folder. Running it
again with a newer wheelhouse upgrades the same venv in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRONG_PLATFORM = 14  # harborctl's "environment" exit code


def fail(message: str, code: int) -> None:
    print(f"install.py: {message}", file=sys.stderr)
    sys.exit(code)


def check_platform(target: dict[str, str]) -> None:
    """Refuse before writing anything when the wheels cannot run on this interpreter."""
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if have != target["python"]:
        fail(f"this wheelhouse is for Python {target['python']}, but {sys.executable} is "
             f"Python {have}: run it with python{target['python']}, or build a wheelhouse "
             f"for this host with `scripts/wheelhouse --python {have}`", WRONG_PLATFORM)
    if platform.machine() != target["arch"]:
        fail(f"this wheelhouse is for {target['arch']}, this machine is "
             f"{platform.machine()}: build one with `scripts/wheelhouse --arch "
             f"{platform.machine()}`", WRONG_PLATFORM)
    # The C library this process runs on (platform.libc_ver() reads the executable's needs).
    libc, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    need = tuple(int(p) for p in target["glibc"].split("."))
    have_glibc = tuple(int(p) for p in version.split(".")[:2]) if version else (0, 0)
    if libc != "glibc" or have_glibc < need:
        fail(f"this wheelhouse needs glibc >= {target['glibc']}, this system has "
             f"{libc or 'no glibc'} {version}".rstrip(), WRONG_PLATFORM)


def check_sums() -> None:
    for line in (HERE / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        want, rel = line.split("  ", 1)
        digest = hashlib.sha256((HERE / rel).read_bytes()).hexdigest()
        if digest != want:
            fail(f"{rel} does not match SHA256SUMS: the archive is damaged; copy it again", 1)


def run(argv: list[str]) -> None:
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        fail(f"`{' '.join(argv)}` failed with exit code {proc.returncode}", 1)


def link(target: Path, bin_dir: Path) -> Path:
    """``bin_dir/harborctl`` -> ``target``, replaced atomically; never over a real file."""
    dest = bin_dir / "harborctl"
    if dest.exists() and not dest.is_symlink():
        fail(f"{dest} exists and is not a link: move it away, then run install.py again", 1)
    bin_dir.mkdir(parents=True, exist_ok=True)
    tmp = bin_dir / ".harborctl.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description="Install harborctl from this wheelhouse")
    parser.add_argument("--prefix", type=Path, default=Path("/opt/harborctl"),
                        help="the venv to create or upgrade (default /opt/harborctl)")
    parser.add_argument("--bin-dir", type=Path, default=Path("/usr/local/bin"),
                        help="where the harborctl link goes (default /usr/local/bin)")
    args = parser.parse_args()
    target = json.loads((HERE / "TARGET.json").read_text(encoding="utf-8"))
    check_platform(target)
    check_sums()
    wheels = HERE / "wheels"
    prefix = args.prefix.resolve()
    python = prefix / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", "--without-pip", str(prefix)])
    offline = ["--no-index", "--find-links", str(wheels), "--disable-pip-version-check",
               "--no-cache-dir", "--quiet"]
    pip_wheel = next(wheels.glob(f"pip-{target['pip']}-*.whl"))
    # pip runs from inside its own wheel to install itself into the venv.
    run([str(python), str(pip_wheel / "pip"), "install", *offline, f"pip=={target['pip']}"])
    run([str(python), "-m", "pip", "install", *offline, "--upgrade",
         f"harborctl=={target['harborctl']}"])
    dest = link(prefix / "bin" / "harborctl", args.bin_dir)
    print(f"harborctl {target['harborctl']} installed in {prefix}; {dest} -> "
          f"{prefix / 'bin' / 'harborctl'}")


if __name__ == "__main__":
    main()
