"""Inspect a Harbor offline-installer bundle before anything is copied or unpacked.

A bundle is trusted only after it has been read through to its last byte: a truncated
download is a valid gzip *prefix*, and ``tarfile`` happily lists the members it saw before
the cut. One streaming pass therefore does everything at once: SHA-256 of the file, gzip
decompression (its CRC and length are checked at the end of the stream), the tar member
walk, and Harbor's layout (harbor-facts §11.1)::

    harbor/{install.sh, prepare, common.sh, harbor.yml.tmpl, LICENSE, harbor.vX.Y.Z.tar.gz}

The release is read from the image tarball's name, the one name Harbor's Makefile derives
from the version tag; the outer file name is only compared with it (a renamed file warns).

That pass costs seconds per GB, on every install. :func:`inspect_bundle_cached` remembers a
clean result per file identity (device, inode, size, mtime and ctime, which the kernel sets
on every change and no user can set back), so a re-run on the same bundle reads nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import tarfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from harbor_ops.core.errors import UsageError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.hashing import HashingReader, sha256_bytes

CHUNK = 1 << 20
REQUIRED = ("harbor/install.sh", "harbor/prepare", "harbor/common.sh", "harbor/harbor.yml.tmpl",
            "harbor/LICENSE")
_IMAGE_TARBALL = re.compile(r"^harbor/harbor\.v(\d+\.\d+\.\d+)\.tar\.gz$")
_FILE_VERSION = re.compile(r"v(\d+\.\d+\.\d+)\.(?:tgz|tar\.gz)$")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class BundleInfo:
    """What one pass over a bundle found; ``problems`` empty means usable."""

    path: Path
    size: int = 0
    sha256: str | None = None
    version: Version | None = None
    image_tarball: str | None = None
    image_tarball_size: int = 0
    members: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256,
                "version": str(self.version) if self.version else None,
                "image_tarball": self.image_tarball,
                "image_tarball_size": self.image_tarball_size,
                "problems": list(self.problems), "warnings": list(self.warnings)}


def version_from_filename(name: str) -> Version | None:
    m = _FILE_VERSION.search(name)
    return Version(m.group(1)) if m else None


def inspect_bundle(path: Path) -> BundleInfo:
    """Read ``path`` through once; never raises for a bad bundle, reports it in ``problems``."""
    path = Path(path)
    info = BundleInfo(path=path)
    if not path.is_file():
        info.problems.append(f"{path} does not exist or is not a regular file")
        return info
    info.size = path.stat().st_size
    try:
        with path.open("rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            if head != _GZIP_MAGIC:
                info.problems.append(f"{path.name} is not a gzip file (Harbor ships the offline "
                                     "installer as a .tgz)")
                return info
            reader = HashingReader(raw)
            _walk(reader, info)
            reader.drain()
            info.sha256 = reader.hexdigest()
    except OSError as exc:
        info.problems.append(f"cannot read {path}: {exc.strerror or exc}")
        return info
    _check_layout(info)
    return info


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device"
    return "FIFO" if member.isfifo() else "special file"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/harborctl/bundles (else ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "harborctl" / "bundles"


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|" \
           f"{st.st_ctime_ns}"


def inspect_bundle_cached(path: Path, cache_dir: Path | None = None, *,
                          settle_s: float = 2.0) -> BundleInfo:
    """:func:`inspect_bundle`, read from the cache when this very file was inspected clean.

    A result is remembered only when the file did not change while it was read and its last
    change is ``settle_s`` old: the kernel's clock for ctime ticks coarsely, so a file changed
    again within the same tick would keep its identity (git's "racily clean" rule).
    """
    path = Path(path)
    try:
        identity = _identity(path)
    except OSError:
        return inspect_bundle(path)
    entry = (cache_dir or default_cache_dir()) / (
        sha256_bytes(identity.encode()) + ".json")
    try:
        known = json.loads(entry.read_text(encoding="utf-8"))
        return BundleInfo(path=path, size=int(known["size"]), sha256=str(known["sha256"]),
                          version=Version(known["version"]),
                          image_tarball=str(known["image_tarball"]),
                          image_tarball_size=int(known["image_tarball_size"]),
                          members=[str(m) for m in known["members"]],
                          warnings=[str(w) for w in known["warnings"]])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    info = inspect_bundle(path)
    settled = False
    with contextlib.suppress(OSError):
        settled = (_identity(path) == identity
                   and time.time() - path.stat().st_ctime >= settle_s)
    if info.ok and info.version is not None and settled:
        record = {**info.to_dict(), "members": info.members}
        # A cache we cannot write only costs the next run its time.
        with contextlib.suppress(OSError):
            atomic_write(entry, json.dumps(record) + "\n", mode=0o600)
    return info


def _walk(reader: HashingReader, info: BundleInfo) -> None:
    """Decompress and walk every member; record a corrupt/truncated stream as a problem."""
    try:
        with gzip.GzipFile(fileobj=reader, mode="rb") as gz:  # type: ignore[call-overload]
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    _member(tar, member, info)
            while gz.read(CHUNK):  # past tar's end-of-archive: reach the gzip CRC trailer
                pass
    except EOFError:
        info.problems.append(f"{info.path.name} is truncated (the gzip stream ends early): "
                             "download or copy it again")
    except (gzip.BadGzipFile, zlib.error, tarfile.TarError) as exc:
        info.problems.append(f"{info.path.name} is corrupt ({exc}): download or copy it again")


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, info: BundleInfo) -> None:
    name = member.name.removeprefix("./")
    info.members.append(name)
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or (parts and parts[0] != "harbor"):
        info.problems.append(f"member {member.name!r} lies outside harbor/ (not a Harbor "
                             "installer; refusing to unpack it)")
        return
    if not (member.isfile() or member.isdir()):
        info.problems.append(f"member {name!r} is a {_kind(member)}; a Harbor installer holds "
                             "only files and folders (refusing to unpack it)")
        return
    m = _IMAGE_TARBALL.match(name)
    if m and member.isfile():
        fh = tar.extractfile(member)
        head = fh.read(2) if fh else b""
        if head != _GZIP_MAGIC:
            info.problems.append(f"{name} is not gzip-compressed images")
        if fh:  # read through: the outer stream is decompressed (and checked) as we go
            while fh.read(CHUNK):
                pass
        if info.version is not None and info.version != Version(m.group(1)):
            info.problems.append(f"two image tarballs: v{info.version} and v{m.group(1)}")
        info.version = Version(m.group(1))
        info.image_tarball = name
        info.image_tarball_size = member.size


def _check_layout(info: BundleInfo) -> None:
    if info.problems:
        return
    present = set(info.members)
    missing = [n for n in REQUIRED if n not in present]
    if missing:
        info.problems.append("not Harbor's installer layout: missing " + ", ".join(missing))
    if info.image_tarball is None:
        info.problems.append("no harbor/harbor.vX.Y.Z.tar.gz image tarball: this is an online "
                             "installer or not a Harbor bundle; use "
                             "harbor-offline-installer-vX.Y.Z.tgz")
    extra = sorted(n for n in present - set(REQUIRED)
                   if n != "harbor" and n != info.image_tarball)
    if extra:
        info.warnings.append("unexpected members: " + ", ".join(extra[:5])
                             + (" …" if len(extra) > 5 else ""))
    named = version_from_filename(info.path.name)
    if named is not None and info.version is not None and named != info.version:
        info.warnings.append(f"file is named v{named} but contains Harbor {info.version}")


def verify_bundle(path: Path, *, expected_version: str | Version | None = None) -> BundleInfo:
    """:func:`inspect_bundle`, raising UsageError (``--bundle``) when it is not usable."""
    info = inspect_bundle(path)
    problems = list(info.problems)
    if not problems and expected_version is not None:
        want = Version(str(expected_version))
        if info.version != want:
            problems.append(f"it holds Harbor {info.version} but the site file says "
                            f"harbor.version {want}")
    if problems:
        raise UsageError(f"--bundle {path}: " + "; ".join(problems))
    return info
