"""Crash-safe records of what the bed created, so ``python -m tests.bed down`` can undo it.

Records live in ``${HARBORCTL_TESTBED_STATE:-/run/harborctl-testbed}`` (a tmpfs on most
machines: namespaces, mounts and processes die with a reboot, and so do their records).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    path = Path(os.environ.get("HARBORCTL_TESTBED_STATE", "/run/harborctl-testbed"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a crash mid-write never leaves a record we cannot parse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return True
    return fields[0] == "Z"


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc), so we stop exactly what we started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def missing(paths: list[str]) -> list[str]:
    """Which of ``paths`` do not exist yet (so we know which ones a daemon will create)."""
    return [p for p in paths if not os.path.lexists(p)]


def rmdir_empty(paths: list[str]) -> None:
    """Remove directories a daemon created as a side effect, deepest first, only when empty."""
    for path in sorted(paths, key=lambda p: p.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def owner() -> dict[str, Any]:
    """Who holds a record: our PID plus its start time (PIDs get reused)."""
    return {"pid": os.getpid(), "start": _start_time(os.getpid())}


def owner_alive(record: dict[str, Any]) -> bool:
    """True while the process that wrote ``record`` still runs: its bed is not ours to clean."""
    who = record.get("owner") or {}
    pid = who.get("pid")
    return isinstance(pid, int) and pid_alive(pid) and _start_time(pid) == who.get("start")
