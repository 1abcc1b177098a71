"""Private work folders (0700, in the temp dir) that a killed run does not leave behind.

``install`` and ``upgrade apply`` render ``harbor.yml`` (passwords, the secret key's
neighbours) into such a folder for the length of a playbook run and delete it in a
``finally``; ``kill -9`` skips every ``finally``. So each folder carries an owner file,
``.harborctl-owner``: the pid, start time and boot id of the run that made it, and a flock
on it that the run holds while it lives (and the ansible-playbook it starts inherits, so a
playbook still ending keeps its folder too). Every new folder first sweeps the stale ones:
a folder is removed only when all of this holds, anything else is left alone:

- its name starts with ``harborctl-``, it is a real folder (never a link, never followed),
  owned by this user, mode 0700;
- it holds a regular owner file, owned by this user, whose flock is free (no live holder);
- the file names a process that is gone (no such pid, another start time, another boot).

A folder without a readable owner record (made by an older harborctl, or one whose maker
was killed before it wrote the record) is never removed: nothing proves it is a dead run's.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "harborctl-"
OWNER_FILE = ".harborctl-owner"
_MAX_RECORD = 4096
_MAX_ENTRIES = 10_000  # the temp dir's entries looked at by one sweep


@dataclass(frozen=True)
class WorkDir:
    """A private folder and the descriptor of its held owner lock (to pass to children)."""

    path: Path
    lock_fd: int


@contextmanager
def private_workdir(kind: str) -> Iterator[WorkDir]:
    """A new ``harborctl-<kind>-XXXX`` folder (0700) in the temp dir, deleted on exit.

    The stale folders of dead runs are swept first (see the module's docstring).
    """
    sweep_stale()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-"))
    fd = -1
    try:
        # Lock before the record is written: a sweep that finds a record finds it locked.
        fd = os.open(path / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps(_me()).encode())
        yield WorkDir(path, fd)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd >= 0:
            os.close(fd)


def sweep_stale(root: Path | None = None) -> list[str]:
    """Remove the folders of dead runs in ``root`` (default: the temp dir); their names."""
    removed: list[str] = []
    try:
        rfd = os.open(root or tempfile.gettempdir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        with os.scandir(rfd) as it:
            entries = list(itertools.islice(it, _MAX_ENTRIES))
        for entry in entries:
            if entry.name.startswith(PREFIX) and _remove_if_stale(rfd, entry):
                removed.append(entry.name)
    except OSError:
        pass
    finally:
        os.close(rfd)
    return removed


def _remove_if_stale(rfd: int, entry: os.DirEntry[str]) -> bool:
    try:
        st = entry.stat(follow_symlinks=False)
        if not _private_dir(st):
            return False
        dfd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=rfd)
    except OSError:
        return False
    try:
        if not os.path.samestat(os.fstat(dfd), st):  # swapped since the look
            return False
        try:
            mfd = os.open(OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                          | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return False  # no owner record: not provably a dead run's folder
        try:
            mst = os.fstat(mfd)
            if not stat.S_ISREG(mst.st_mode) or mst.st_uid != os.geteuid():
                return False
            try:
                fcntl.flock(mfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its run (or its playbook) still lives
            record = _parse(os.read(mfd, _MAX_RECORD))
            if record is None or _alive(record):
                return False
            # Removed while the lock is held, by name under the temp dir, never following
            # a link (rmtree's fd-based walk); another run's new folder has another name.
            shutil.rmtree(entry.name, dir_fd=rfd)
            return True
        finally:
            os.close(mfd)
    except OSError:
        return False
    finally:
        os.close(dfd)


def _private_dir(st: os.stat_result) -> bool:
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o700)


def _me() -> dict[str, object]:
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "boot": _boot_id()}


def _parse(raw: bytes) -> dict[str, object] | None:
    try:
        record = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    return record


def _alive(record: dict[str, object]) -> bool:
    """Is the process the record names still running (same pid, start time and boot)?"""
    if record.get("boot") != _boot_id():
        return False
    pid = record["pid"]
    assert isinstance(pid, int)
    start = _start_time(pid)
    return start is not None and start == record.get("start")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""
