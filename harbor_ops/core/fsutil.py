"""Atomic file writes: temp file in the target folder, fsync, rename, fsync the folder.

One writer for the whole project: :func:`atomic_write` for one file, :func:`atomic_write_all`
for a set that belongs together (render's config files), which stages EVERY file before it
replaces any, so a failed write (full disk, file size limit) leaves all targets as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: One planned write: target path, content, file mode.
Planned = tuple[Path, bytes | str, int]


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644,
                 keep_previous: bool = False) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half.

    With ``keep_previous`` the file being replaced is kept as ``<name>.prev``.
    """
    atomic_write_all([(Path(path), data, mode)], keep_previous=keep_previous)


def atomic_write_all(planned: Sequence[Planned], *, keep_previous: bool = False) -> None:
    """Stage every file (written and fsynced beside its target), then rename each into place.

    An OSError while staging removes what was staged and propagates: no target changed.
    With ``keep_previous`` each replaced file is kept as ``<name>.prev`` (a hard link to the
    old inode, so the target never goes missing, and the old mode is kept).
    """
    staged: list[tuple[Path, str]] = []
    try:
        for target, data, mode in planned:
            staged.append((Path(target), _stage(Path(target), data, mode)))
    except BaseException:
        for _, tmp in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    for target, tmp in staged:
        if keep_previous and target.exists():
            _keep_previous(target)
        os.replace(tmp, target)
    for folder in dict.fromkeys(t.parent for t, _ in staged):
        fsync_dir(folder)


def _stage(target: Path, data: bytes | str, mode: int) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _keep_previous(target: Path) -> None:
    prev = target.with_name(target.name + ".prev")
    tmp = target.with_name(f".{target.name}.prev.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)  # the old inode, with its mode: no copy, no window
    except OSError:
        shutil.copy2(target, tmp)
    os.replace(tmp, prev)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
