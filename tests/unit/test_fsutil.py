"""core.fsutil: the one atomic writer (single files and all-or-nothing sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harbor_ops.core.fsutil import atomic_write, atomic_write_all


def test_atomic_write_keeps_previous_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    atomic_write(target, "one\n", mode=0o600)
    atomic_write(target, b"two\n", mode=0o644, keep_previous=True)
    assert target.read_text() == "two\n"
    assert target.stat().st_mode & 0o777 == 0o644
    prev = tmp_path / "sub" / "f.txt.prev"
    assert prev.read_text() == "one\n" and prev.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt", "f.txt.prev"]


def test_atomic_write_all_replaces_nothing_when_one_file_cannot_be_staged(
        tmp_path: Path) -> None:
    first = tmp_path / "a.txt"
    first.write_text("old\n")
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a folder is needed\n")
    with pytest.raises(OSError):
        atomic_write_all([(first, "new\n", 0o644), (blocker / "b.txt", "x", 0o644)],
                         keep_previous=True)
    assert first.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "blocked"]
