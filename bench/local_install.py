"""bench_install's local-connection runs: harborctl installed ON the fresh host, then timed.

The single-host user runs harborctl on the Harbor host with ``connection: local`` (issue 13).
To time that beside the SSH install, harborctl is first brought into the host the air-gapped
way (the wheelhouse and its install.py; not timed), with the bundle and a site file whose
inventory is the default one (this host, local connection); then ``harborctl install`` runs
inside the host and is timed from outside, like the SSH one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.bed.hosts import Host

ROOT = Path(__file__).resolve().parent.parent
HOST_DIR = "root/bench"  # under the host's /
# The lock the agent's cron line takes with `flock -n` (templates/cron/harborctl.j2).
AGENT_LOCK = "/run/lock/harborctl-agent.lock"


def build_wheelhouse(out: Path) -> Path:
    """The offline archive for the bed hosts' python3 (scripts/wheelhouse, defaults)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/wheelhouse"), "--output",
                           str(out)], capture_output=True, text=True, timeout=1800,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"scripts/wheelhouse failed:\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip())


def prepare(host: Host, wheelhouse: Path, bundle: Path, site_text: str,
            secrets: dict[str, str]) -> float:
    """Carry the wheelhouse, bundle and site file in and install harborctl; seconds taken."""
    t0 = time.perf_counter()
    work = host.root_path / HOST_DIR
    (work / "secrets").mkdir(parents=True, mode=0o700)
    for name, value in secrets.items():
        (work / "secrets" / name).write_text(value + "\n")
        (work / "secrets" / name).chmod(0o600)
    (work / "harborctl.yml").write_text(site_text)
    shutil.copy(bundle, work / bundle.name)  # into the host's overlay: another file system
    shutil.copy(wheelhouse, work / wheelhouse.name)
    tree = wheelhouse.name.removesuffix(".tar.gz")
    _exec(host, f"tar xzf {wheelhouse.name} && python3 {tree}/install.py >/dev/null")
    return time.perf_counter() - t0


def timed_local_install(host: Host, bundle: Path, what: str) -> tuple[float, dict[str, Any]]:
    """``harborctl install`` inside the host; prints and returns its time and JSON result."""
    t0 = time.perf_counter()
    out = _exec(host, f"harborctl install --bundle {bundle.name} -o json")
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = json.loads(out)
    tally = result["hosts"]["localhost"]
    print(f"  {what:<34} {elapsed:7.1f} s  (local connection, {tally['changed']} change(s), "
          f"{tally['ok'] + tally['changed'] + tally['skipped']} task results)", flush=True)
    return elapsed, result


@contextmanager
def agent_held(host: Host) -> Iterator[None]:
    """Hold the agent's lock in ``host`` while the local runs are timed.

    The local install puts the agent's cron line on the host, and a fresh agent's first tick
    catches up the nightly backup (and the drill) at once, under the host's job lock: a
    re-run meeting it is refused as busy (exit 7), as designed. The bench times install,
    not the agent, so the ticks of these minutes find the lock taken and skip.
    """
    # setsid: its own process group, ended as one (the sleep holds the lock too).
    pid = _exec(host, f"mkdir -p /run/lock && (setsid flock {AGENT_LOCK} sleep 3600 "
                      ">/dev/null 2>&1 </dev/null & echo $!)").strip()
    if not pid.isdigit():
        sys.exit(f"on {host.name}: no pid for the agent lock holder: {pid!r}")
    try:
        yield
    finally:
        host.exec(f"kill -- -{pid}", check=False, timeout=60)  # flock and its sleep


def _exec(host: Host, command: str) -> str:
    proc = host.exec(f"cd /{HOST_DIR} && {command}", check=False, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"on {host.name}: `{command}` failed ({proc.returncode}):\n"
                 f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return proc.stdout
