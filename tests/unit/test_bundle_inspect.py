"""Bundle inspection on real (small) gzip tarballs built with Harbor's layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from packaging.version import Version

from harbor_ops.core.errors import UsageError
from harbor_ops.releases import bundle

LAYOUT = ("install.sh", "prepare", "common.sh", "harbor.yml.tmpl", "LICENSE")


def _images(size: int = 200_000) -> bytes:
    return gzip.compress(os.urandom(size), compresslevel=1)


def make_bundle(path: Path, version: str = "2.15.2", *, files=LAYOUT, images: bytes | None = None,
                extra: dict[str, bytes] | None = None, image_name: str | None = None,
                compress: bool = True) -> Path:
    members = {f"harbor/{n}": f"#!/bin/sh\n# {n}\n".encode() for n in files}
    if image_name != "":
        members[image_name or f"harbor/harbor.v{version}.tar.gz"] = (
            _images() if images is None else images)
    members.update(extra or {})
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        d = tarfile.TarInfo("harbor")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def test_good_bundle_reports_version_size_and_sha(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "harbor-offline-installer-v2.15.2.tgz")
    info = bundle.inspect_bundle(p)
    assert info.ok, info.problems
    assert info.version == Version("2.15.2")
    assert info.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert info.size == p.stat().st_size
    assert info.image_tarball == "harbor/harbor.v2.15.2.tar.gz"
    assert info.image_tarball_size > 100_000
    assert not info.warnings


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_bundle_is_detected(tmp_path: Path, keep: float) -> None:
    good = make_bundle(tmp_path / "good.tgz").read_bytes()
    p = tmp_path / "harbor-offline-installer-v2.15.2.tgz"
    p.write_bytes(good[: int(len(good) * keep)])
    info = bundle.inspect_bundle(p)
    assert not info.ok
    assert "truncated" in info.problems[0] or "corrupt" in info.problems[0]


def test_bundle_missing_only_its_gzip_trailer_is_truncated(tmp_path: Path) -> None:
    """tar's end-of-archive is inside; only the CRC/length trailer is cut off."""
    good = make_bundle(tmp_path / "good.tgz").read_bytes()
    p = tmp_path / "cut.tgz"
    p.write_bytes(good[:-6])
    info = bundle.inspect_bundle(p)
    assert not info.ok and "truncated" in info.problems[0]


def test_corrupted_byte_is_detected(tmp_path: Path) -> None:
    raw = bytearray(make_bundle(tmp_path / "good.tgz").read_bytes())
    mid = len(raw) // 2
    raw[mid] ^= 0xFF
    raw[mid + 1] ^= 0xFF
    p = tmp_path / "corrupt.tgz"
    p.write_bytes(bytes(raw))
    info = bundle.inspect_bundle(p)
    assert not info.ok
    assert "corrupt" in info.problems[0] or "truncated" in info.problems[0]


def test_wrong_layout_names_missing_files(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "b.tgz", files=("install.sh", "LICENSE"))
    info = bundle.inspect_bundle(p)
    assert not info.ok
    assert "harbor/prepare" in info.problems[0] and "harbor/common.sh" in info.problems[0]


def test_online_installer_is_refused(tmp_path: Path) -> None:
    info = bundle.inspect_bundle(make_bundle(tmp_path / "b.tgz", image_name=""))
    assert any("online installer" in p for p in info.problems)
    assert info.version is None


def test_member_outside_harbor_dir_is_refused(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "b.tgz", extra={"../evil": b"x"})
    assert any("outside harbor/" in p for p in bundle.inspect_bundle(p).problems)


def test_plain_tar_and_text_are_not_gzip(tmp_path: Path) -> None:
    plain = make_bundle(tmp_path / "plain.tgz", compress=False)
    assert "not a gzip file" in bundle.inspect_bundle(plain).problems[0]
    text = tmp_path / "notes.tgz"
    text.write_text("hello\n")
    assert "not a gzip file" in bundle.inspect_bundle(text).problems[0]


def test_gzip_that_is_not_a_tar_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "x.tgz"
    p.write_bytes(gzip.compress(b"just text, no tar headers here" * 50))
    info = bundle.inspect_bundle(p)
    assert not info.ok


def test_image_tarball_must_be_gzip(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "b.tgz", images=b"plain bytes" * 100)
    assert any("not gzip-compressed" in x for x in bundle.inspect_bundle(p).problems)


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in bundle.inspect_bundle(tmp_path / "nope.tgz").problems[0]


def test_renamed_file_warns(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "harbor-offline-installer-v2.14.0.tgz", version="2.15.2")
    info = bundle.inspect_bundle(p)
    assert info.ok and info.version == Version("2.15.2")
    assert "named v2.14.0" in info.warnings[0]


def test_verify_bundle_raises_naming_both_versions(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "harbor-offline-installer-v2.14.4.tgz", version="2.14.4")
    assert bundle.verify_bundle(p, expected_version="2.14.4").version == Version("2.14.4")
    with pytest.raises(UsageError) as exc:
        bundle.verify_bundle(p, expected_version="2.15.2")
    assert "2.14.4" in str(exc.value) and "2.15.2" in str(exc.value)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(UsageError, match="truncated|corrupt"):
        bundle.verify_bundle(p)


@pytest.mark.parametrize(("kind", "expected"), [
    (tarfile.SYMTYPE, "symbolic link to '/etc/shadow'"),
    (tarfile.LNKTYPE, "hard link to '/etc/shadow'"),
    (tarfile.CHRTYPE, "device"),
    (tarfile.BLKTYPE, "device"),
    (tarfile.FIFOTYPE, "FIFO"),
])
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes, expected: str) -> None:
    p = make_bundle(tmp_path / "harbor-offline-installer-v2.15.2.tgz")
    with tarfile.open(p, "r:gz") as raw:
        members = [(m, raw.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                   for m in raw.getmembers()]
    special = tarfile.TarInfo("harbor/common.d")
    special.type = kind
    special.linkname = "/etc/shadow"
    with tarfile.open(p, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
        tar.addfile(special)
    problems = bundle.inspect_bundle(p).problems
    assert problems == [f"member 'harbor/common.d' is a {expected}; a Harbor installer holds "
                        "only files and folders (refusing to unpack it)"], problems


@pytest.mark.parametrize("name", ["/harbor/install.sh", "harbor/../../etc/cron.d/x"])
def test_absolute_and_dotdot_members_are_refused(tmp_path: Path, name: str) -> None:
    p = make_bundle(tmp_path / "b.tgz", extra={name: b"x"})
    assert any("outside harbor/" in x for x in bundle.inspect_bundle(p).problems)


def test_cached_inspection_reads_a_file_once_and_again_after_a_change(tmp_path: Path) -> None:
    p = make_bundle(tmp_path / "harbor-offline-installer-v2.15.2.tgz")
    cache = tmp_path / "cache"
    first = bundle.inspect_bundle_cached(p, cache)
    assert first.ok and not cache.exists()  # changed just now: not remembered yet
    first = bundle.inspect_bundle_cached(p, cache, settle_s=0)
    assert first.ok and first.sha256 and len(list(cache.iterdir())) == 1
    again = bundle.inspect_bundle_cached(p, cache)
    assert (again.sha256, again.version, again.members) == (first.sha256, first.version,
                                                           first.members)
    p.write_bytes(p.read_bytes()[:-100])  # truncated in place: a new identity, read again
    assert not bundle.inspect_bundle_cached(p, cache, settle_s=0).ok
    assert len(list(cache.iterdir())) == 1  # a bad bundle is never remembered
