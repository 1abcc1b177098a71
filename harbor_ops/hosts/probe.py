"""The fact probe that preflight runs ON each target host; prints one JSON object.

Why a module of its own: its source text is sent to the host and run by ``python3 -``
(:func:`harbor_ops.hosts.facts.probe_source` appends the ``main(...)`` call with the
arguments), over one SSH channel or locally, so nothing
is left behind on the host. Hence the rules: standard library only, Python 3.7+ (what a
managed host may have), no import of harbor_ops, and no parsing: it collects raw text
(``ss``, ``/proc/net/tcp``, ``docker ps``) and facts.py parses it, testably, on the controller.
It lives in the package so it is linted and type-checked like the rest, and
:mod:`harbor_ops.hosts.compose` runs the same Compose probes on the controller itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_HELD: list[int] = []  # the window lock, held (shared) until this probe ends


class WindowBusy(Exception):
    """The wait for the upgrade window lock ran out."""


def run(argv: list[str], timeout: int = 60) -> dict[str, Any]:
    """A command's exit code, stdout and the tail of stderr; never raises."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()[-400:]}
    except FileNotFoundError:
        return {"rc": 127, "out": "", "err": "not found"}
    except subprocess.TimeoutExpired:
        return {"rc": 124, "out": "", "err": f"timed out after {timeout}s"}


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def machine(data_volume: str) -> dict[str, Any]:
    """CPU count, memory, and the free space where the data volume is (or will be)."""
    try:
        nproc: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    m = re.search(r"^MemTotal:\s+(\d+) kB", read("/proc/meminfo") or "", re.M)
    p = data_volume
    while not os.path.exists(p):
        p = os.path.dirname(p) or "/"
    st = os.statvfs(p)
    return {"hostname": os.uname()[1], "nproc": nproc,
            "mem_total_kb": int(m.group(1)) if m else None,
            "disk": {"path": p, "free": st.f_bavail * st.f_frsize,
                     "total": st.f_blocks * st.f_frsize}}


def database(data_volume: str) -> dict[str, Any]:
    """The layout of <data_volume>/database: which PostgreSQL data directories are there."""
    db = os.path.join(data_volume, "database")
    info: dict[str, Any] = {"path": db, "exists": os.path.isdir(db), "entries": [],
                            "pg_dirs": [], "root_pg_version": False, "size": 0,
                            "readable": True}
    if not info["exists"]:
        return info
    try:
        info["entries"] = sorted(os.listdir(db))
    except OSError:
        info["readable"] = False
    info["root_pg_version"] = os.path.isfile(os.path.join(db, "PG_VERSION"))
    info["pg_dirs"] = [e for e in info["entries"] if re.match(r"^pg\d+$", e)
                       and os.path.isfile(os.path.join(db, e, "PG_VERSION"))]

    def unreadable(_: OSError) -> None:
        info["readable"] = False

    for root, _dirs, files in os.walk(db, onerror=unreadable):
        for name in files:
            with contextlib.suppress(OSError):
                info["size"] += os.lstat(os.path.join(root, name)).st_blocks * 512
    return info


def tool_paths() -> dict[str, str | None]:
    """Where docker and docker-compose are: the boot unit and cron line name them in full."""
    return {tool: shutil.which(tool) for tool in ("docker", "docker-compose")}


def docker() -> dict[str, Any]:
    """Docker and Compose versions, the running containers, Harbor's schema version."""
    # Independent commands at once: docker-compose v1 alone is a slow Python start-up.
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = {key: pool.submit(run, argv) for key, argv in (
            ("docker", ["docker", "version", "--format", "{{.Server.Version}}"]),
            ("compose_v2", ["docker", "compose", "version", "--short"]),
            ("compose_v1", ["docker-compose", "version", "--short"]),
            ("ps", ["docker", "ps", "--format", "{{.Names}}\t{{.Image}}\t{{.Ports}}"]))}
    out: dict[str, Any] = {key: job.result() for key, job in jobs.items()}
    ps = out.pop("ps")
    out["paths"] = tool_paths()
    out["containers"] = None
    if out["docker"]["rc"] != 0:
        return out
    out["containers"] = ps["out"] if ps["rc"] == 0 else None
    if out["containers"] and re.search(r"^harbor-db\t", out["containers"], re.M):
        out["schema"] = run(["docker", "exec", "harbor-db", "psql", "-U", "postgres", "-d",
                             "registry", "-tAc", "select version, dirty from schema_migrations"])
    return out


def installs(install_dir: str) -> dict[str, Any]:
    """What an earlier install left: the install folder and Nginx files naming Harbor."""
    try:
        entries = sorted(os.listdir(install_dir))
    except OSError:
        entries = []
    cur = os.path.join(install_dir, "current")
    act = os.path.join(install_dir, "harbor")
    nginx: list[str] = []
    for d in ("/etc/nginx/conf.d", "/etc/nginx/sites-enabled"):
        with contextlib.suppress(OSError):
            nginx += [os.path.join(d, n) for n in os.listdir(d) if "harbor" in n]
    return {"install_entries": entries,
            "install_current": (os.path.basename(os.path.realpath(cur))
                                if os.path.islink(cur) else None),
            "install_active": (os.path.basename(os.path.realpath(act))
                               if os.path.islink(act) else None),
            "nginx_harbor_confs": nginx}


def tree_size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def window(path: str, wait: float) -> dict[str, Any]:
    """Wait, at most ``wait`` s, until no upgrade-window helper holds ``path``; then hold it
    (shared) until this probe ends, so what the probe reads is the helper's last word.

    Why: after ``kill -9`` of harborctl the helper on the host finishes its step in flight
    (and one more may be under way when the kill lands); a re-run must not decide from a
    journal the helper still writes to. No file: no helper ran since the host booted (the
    file lives under /run). A file that cannot be opened counts as held: never guess."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {"held": False, "waited": 0.0}
    except OSError as exc:
        return {"held": True, "holder": f"cannot open it: {exc}", "waited": 0.0}
    t0 = time.monotonic()

    def expire(_signum: int, _frame: object) -> None:
        raise WindowBusy()

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(wait, 0.01))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except WindowBusy:
        os.close(fd)
        return {"held": True, "holder": (read(path) or "").strip()[:300],
                "waited": round(wait, 1)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    _HELD.append(fd)
    return {"held": False, "waited": round(time.monotonic() - t0, 1)}


def collect(args: dict[str, Any]) -> dict[str, Any]:
    """Every fact preflight reads, keyed as facts.py and the checks expect them."""
    out: dict[str, Any] = {"probe": 1}
    if args.get("window_lock"):  # first: everything below is read after the helper ended
        out["window"] = window(args["window_lock"], float(args.get("window_wait") or 0))
    out.update(machine(args["data_volume"]))
    out["database"] = database(args["data_volume"])
    out.update(docker())
    out["ss"] = run(["ss", "-ltnpH"])
    out["proc_net_tcp"] = (read("/proc/net/tcp") or "") + (read("/proc/net/tcp6") or "")
    out["getent"] = run(["getent", "hosts", args["hostname"]]) if args["hostname"] else None
    out.update(installs(args["install_dir"]))
    # For upgrade apply: the sizes a hop's snapshot copies, and the host's upgrade journal.
    out["data_sizes"] = {n: tree_size(os.path.join(args["data_volume"], n))
                         for n in ("redis", "secret")}
    if args.get("journal") and not (out.get("window") or {}).get("held"):
        out["upgrade_journal"] = (read(args["journal"]) or "")[-262144:]
    return out


def main(args_json: str) -> None:
    """Entry point of the sent script: the caller appends ``main('<json>')``."""
    print(json.dumps(collect(json.loads(args_json))))
