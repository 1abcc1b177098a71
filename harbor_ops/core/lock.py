"""One harborctl job at a time (backup, restore, install, upgrade) on a host.

The lock is ``fcntl.flock`` on a file: the kernel drops it when the holder dies, even
by ``kill -9``, so a lock left behind by a crash is recovered by the next run without
guessing from PIDs. The holder's PID and job name are written into the file only so
that a refused second job can say who is busy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from harbor_ops.core.errors import LockHeld, UsageError

DEFAULT_LOCK_PATH = Path("/run/harborctl.lock")
LOCK_ENV = "HARBORCTL_LOCK_FILE"


def default_lock_path() -> Path:
    """The host-wide lock file (``$HARBORCTL_LOCK_FILE`` overrides it, e.g. in tests)."""
    return Path(os.environ.get(LOCK_ENV) or DEFAULT_LOCK_PATH)


def holder(path: Path) -> str:
    """Who holds (or last held) the lock, as written by :func:`job_lock`."""
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def file_lock(path: Path, *, holder_line: str, busy: str, mode: int = 0o600
              ) -> Iterator[Path]:
    """Hold an exclusive flock on ``path`` for the block; raise LockHeld(``busy``) when held.

    The file is opened with ``O_NOFOLLOW``: the lock lives in a folder others may write
    (/run, a status folder), and a symbolic link planted there must not make a root job
    truncate the file it points at.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"the lock file {path} is a symbolic link: refused",
                             hint="remove the link; harborctl creates the lock file itself"
                             ) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(f"{busy} ({holder(path)}; lock {path})",
                           hint="wait for it to finish; a crashed job frees the lock "
                           "by itself") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder_line}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def job_lock(path: Path | None = None, *, job: str) -> AbstractContextManager[Path]:
    """Hold the host-wide job lock for the block; raise LockHeld (exit 7) when busy."""
    lock_path = Path(path) if path is not None else default_lock_path()
    return file_lock(lock_path, busy="another harborctl job holds the lock",
                     holder_line=f"pid={os.getpid()} job={job} since={int(time.time())}")
