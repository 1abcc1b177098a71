"""Small subprocess helpers shared by the bed modules.

One place decides how commands are run, so that failures always carry the command and its
output (a test bed that fails silently costs more time than it saves).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence


class BedError(RuntimeError):
    """The test bed could not be brought into the requested state."""


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise ``BedError`` with that output on failure."""
    full_env = None if env is None else {**os.environ, **env}
    raw = subprocess.run(  # bytes in (tarballs), text out
        list(args),
        input=input,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    proc = subprocess.CompletedProcess(
        raw.args,
        raw.returncode,
        raw.stdout.decode(errors="replace"),
        raw.stderr.decode(errors="replace"),
    )
    if check and proc.returncode != 0:
        raise BedError(
            f"command failed ({proc.returncode}): {' '.join(args)}\n"
            f"stdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}"
        )
    return proc


def wait_for(
    probe: Callable[[], bool], *, what: str, timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``probe`` until it returns True; bounded in both time and number of attempts."""
    attempts = max(1, int(timeout / interval) + 1)
    deadline = time.monotonic() + timeout
    for _ in range(attempts):
        if probe():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise BedError(f"timed out after {timeout:.0f} s waiting for {what}")


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` in our mount namespace, deepest first (unmount order)."""
    prefix = os.path.realpath(prefix)
    found: list[str] = []
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(prefix: str) -> None:
    """Unmount everything below ``prefix``; fall back to a lazy unmount for busy mounts."""
    for _ in range(5):
        points = mounts_under(prefix)
        if not points:
            return
        for point in points:
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
    leftover = mounts_under(prefix)
    if leftover:
        raise BedError(f"could not unmount: {leftover}")
