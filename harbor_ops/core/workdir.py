"""Private work folders (0700, in the temp dir) that a killed run does not leave behind.

``install`` and ``upgrade apply`` render ``harbor.yml`` (passwords, the secret key's
neighbours) into such a folder for the length of a playbook run and delete it in a
``finally``; ``kill -9`` skips every ``finally``. So each folder carries an owner file,
``.harborctl-owner``: the pid, start time and boot id of the run that made it, and a flock
on it that the run holds while it lives (and the ansible-playbook it starts inherits, so a
playbook still ending keeps its folder too). Every new folder first sweeps the stale ones:
a folder is removed only when all of this holds, anything else is left alone:

- its name starts with ``harborctl-``, it is a real folder (never a link, never followed),
  owned by this user, mode 0700 (or 0711, a ``shared`` folder: see below);
- it holds a regular owner file, owned by this user, whose flock is free (no live holder);
- the file names a process that is gone (no such pid, another start time, another boot).

A folder without a readable owner record (made by an older harborctl, or one whose maker
was killed before it wrote the record) is never removed: nothing proves it is a dead run's.

A run may also record the processes it started that live in the folder and would outlive it
(:meth:`WorkDir.adopt`: the restore drill's scratch PostgreSQL, whose data is a whole copy of
Harbor's database). Before a stale folder is removed, each of them that still runs (same pid,
start time and boot) is sent its recorded signal and given up to ``CHILD_EXIT_SECONDS`` to end.
A ``shared`` folder (0711) lets another user (``postgres``) reach a subfolder of its own by
name; nobody else can list it.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PREFIX = "harborctl-"
OWNER_FILE = ".harborctl-owner"
_MAX_RECORD = 4096
_MAX_ENTRIES = 10_000  # the temp dir's entries looked at by one sweep
_MAX_CHILDREN = 8
CHILD_EXIT_SECONDS = 10.0
# The signals a recorded process may be ended with (a record is data: never any other).
CHILD_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGQUIT": signal.SIGQUIT}


@dataclass(frozen=True)
class WorkDir:
    """A private folder and the descriptor of its held owner lock (to pass to children)."""

    path: Path
    lock_fd: int

    def adopt(self, pid: int, end_with: str = "SIGTERM") -> None:
        """Record ``pid`` (a process started by this run) to be ended with ``end_with`` if
        this run dies and a later sweep removes the folder."""
        if end_with not in CHILD_SIGNALS:
            raise ValueError(f"end_with: {end_with!r} is not one of {sorted(CHILD_SIGNALS)}")
        record = _parse(os.pread(self.lock_fd, _MAX_RECORD, 0)) or _me()
        known = record.get("children")
        children = [c for c in known if isinstance(c, dict)] if isinstance(known, list) else []
        children.append({"pid": pid, "start": _start_time(pid), "signal": end_with})
        _write_record(self.lock_fd, {**record, "children": children[-_MAX_CHILDREN:]})


@contextmanager
def private_workdir(kind: str, *, root: Path | None = None,
                    shared: bool = False) -> Iterator[WorkDir]:
    """A new ``harborctl-<kind>-XXXX`` folder (0700; 0711 when ``shared``) in ``root`` (the
    temp dir by default), deleted on exit.

    The stale folders of dead runs in the same place are swept first (see the module's
    docstring).
    """
    sweep_stale(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-", dir=root))
    fd = -1
    try:
        if shared:
            os.chmod(path, 0o711)
        # Lock before the record is written: a sweep that finds a record finds it locked.
        fd = os.open(path / OWNER_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_record(fd, _me())
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
            _end_children(record)
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


def owner_token() -> str:
    """This run as one word (machine, boot, pid, start time), for things that are not
    folders, e.g. a container's label; :func:`token_is_dead` judges it later."""
    me = _me()
    return f"{_machine_id()}:{me['boot']}:{me['pid']}:{me['start']}"


def token_is_dead(token: str) -> bool:
    """Is the run ``token`` names provably gone? False for another machine's run (its
    processes are not ours to judge) and for anything that is not such a token."""
    parts = token.split(":")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return False
    machine, boot, pid, start = parts
    if not machine or machine != _machine_id():
        return False
    return not _alive({"pid": int(pid), "start": int(start), "boot": boot})


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _private_dir(st: os.stat_result) -> bool:
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) in (0o700, 0o711))


def _write_record(fd: int, record: dict[str, object]) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _end_children(record: dict[str, object]) -> None:
    """Signal each recorded process of a dead run that still runs; wait (bounded) for them."""
    if record.get("boot") != _boot_id():
        return  # another boot: none of them runs
    children = record.get("children")
    ended: list[tuple[int, int]] = []
    for child in children[:_MAX_CHILDREN] if isinstance(children, list) else []:
        if not isinstance(child, dict):
            continue
        pid, start, name = child.get("pid"), child.get("start"), child.get("signal")
        if not (isinstance(pid, int) and pid > 1 and isinstance(start, int)
                and name in CHILD_SIGNALS):
            continue
        if not _running(pid, start):
            continue  # gone, or the pid is another process's now
        try:
            os.kill(pid, CHILD_SIGNALS[str(name)])
        except OSError:
            continue
        ended.append((pid, start))
    deadline = time.monotonic() + CHILD_EXIT_SECONDS
    while ended and time.monotonic() < deadline:
        ended = [(pid, start) for pid, start in ended if _running(pid, start)]
        if ended:
            time.sleep(0.05)


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


def _running(pid: int, start: int) -> bool:
    """The process ``pid`` that started at ``start`` still runs (not ended, not a zombie)."""
    fields = _stat_fields(pid)
    return len(fields) > 19 and fields[0] != "Z" and fields[19] == str(start)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (state first); [] when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return []
    return text.rsplit(")", 1)[-1].split()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""
