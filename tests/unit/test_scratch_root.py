"""Which folders the restore drill's postgres may pass through (``scratch.passable``).

A root drill runs its scratch server as postgres, in a folder under the temp dir: a TMPDIR
below a folder closed to postgres (root's 0700 home) made initdb fail. Real folders, real
owners and modes (as root); the user is a uid no account has.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.backup.scratch import passable
from tests.bed.fixtures import unavailable

UID, GID = 54321, 54322  # nobody's: only the mode bits of "other" or of its own class apply


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder anyone may pass through (pytest's tmp_path lies under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="passable-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_open_path_is_passable_and_a_0700_parent_closes_it(base: Path) -> None:
    inner = base / "home" / "tmp"
    inner.mkdir(parents=True)
    (base / "home").chmod(0o755)
    assert passable(inner, UID, {GID})
    (base / "home").chmod(0o700)
    assert not passable(inner, UID, {GID})
    (base / "home").chmod(0o711)  # pass through, not list: enough
    assert passable(inner, UID, {GID})


def test_the_class_of_the_user_decides_not_the_most_open_bit(base: Path) -> None:
    if os.geteuid() != 0:
        unavailable("chown to another user needs root")
    folder = base / "f"
    folder.mkdir()
    os.chown(folder, 0, GID)
    folder.chmod(0o710)  # its group may pass
    assert passable(folder, UID, {GID})
    assert not passable(folder, UID, {GID + 1})
    folder.chmod(0o701)  # "other" may, but the user is in the group, whose bit is unset
    assert not passable(folder, UID, {GID})
    os.chown(folder, UID, GID)
    folder.chmod(0o100)  # its owner may, and only the owner's bit counts
    assert passable(folder, UID, set())
    folder.chmod(0o011)
    assert not passable(folder, UID, {GID})


def test_a_missing_folder_or_a_file_is_not_passable(base: Path) -> None:
    assert not passable(base / "missing", UID, {GID})
    (base / "file").write_text("x")
    assert not passable(base / "file", UID, {GID})


def test_a_link_is_judged_by_where_it_leads(base: Path) -> None:
    closed = base / "closed"
    (closed / "in").mkdir(parents=True)
    closed.chmod(0o700)
    (base / "link").symlink_to(closed / "in")
    assert not passable(base / "link", UID, {GID})
    closed.chmod(0o755)
    assert passable(base / "link", UID, {GID})
