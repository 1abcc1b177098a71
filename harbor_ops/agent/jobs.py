"""The agent's jobs: each takes the site, calls a core function, returns numbers to record.

A job raises a HarborctlError on failure; the agent records the message and counts it.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harbor_ops.core.errors import BackupError, HarborctlError, LockHeld, RemoteError
from harbor_ops.hosts import health as probe
from harbor_ops.site.checks import size_bytes
from harbor_ops.site.model import HostEntry, Site

HEALTH_TIMEOUT = 10.0
BACKUP_ATTEMPTS = 3
BACKUP_RETRY_SECONDS = (30.0, 120.0)
# Tests (and impatient operators) shorten the waits: "0.5,1" -> (0.5, 1.0).
BACKUP_RETRY_ENV = "HARBORCTL_BACKUP_RETRY_SECONDS"
# A host whose job lock is held (an upgrade, a restore, a backup from elsewhere) is tried
# again after the other hosts' jobs, every BUSY_PAUSE_SECONDS, at most BUSY_ATTEMPTS tries in
# all and none begun later than BUSY_WINDOW_SECONDS after the job began: an upgrade's window
# or another backup ends within minutes, and the nightly run must end the same night.
BUSY_ATTEMPTS = 4
BUSY_PAUSE_SECONDS = 300.0
BUSY_WINDOW_SECONDS = 1800.0
# "pause,window" in seconds, e.g. "0.5,20" (tests).
BUSY_RETRY_ENV = "HARBORCTL_BUSY_RETRY_SECONDS"
# Set by the agent on SIGTERM: retry waits end at once and the job gives up cleanly.
STOP = threading.Event()


def health(site: Site) -> dict[str, Any]:
    """Ask Harbor's /api/v2.0/health at the site's real URL (TLS verified when Harbor
    serves HTTPS); unhealthy components are named in the error."""
    doc = probe.check(probe.endpoint(site.harbor), timeout=HEALTH_TIMEOUT)
    return {"components": len(doc.get("components", []))}


def certificates(site: Site) -> dict[str, Any]:
    """Days left on every certificate the site names (Harbor's own and the front's)."""
    from cryptography import x509

    paths = []
    https = site.harbor.get("https") or {}
    if https.get("certificate"):
        paths.append(Path(https["certificate"]))
    if site.front is not None and site.front.tls is not None:
        paths.append(site.front.tls.certificate)
    if not paths:
        return {}
    now = datetime.now(UTC)
    least = None
    for path in paths:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise HarborctlError(f"certificate {path} cannot be read: {exc}") from None
        days = (cert.not_valid_after_utc - now).days
        least = days if least is None else min(least, days)
    assert least is not None
    if least < 0:
        raise HarborctlError(f"a certificate has expired ({-least} days ago)")
    return {"cert_days_left": least}


def disk_and_logs(site: Site) -> dict[str, Any]:
    """Data disk usage against the threshold; log files beyond twice the rotate size."""
    data = Path(str(site.harbor.get("data_volume", "/data")))
    probe = data
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    percent = round(100 * usage.used / usage.total, 1) if usage.total else 0.0
    local = ((site.harbor.get("log") or {}).get("local") or {})
    location = Path(str(local.get("location", "/var/log/harbor")))
    limit = 2 * size_bytes(str(local.get("rotate_size", "200M")))
    big = sorted(p.name for p in location.glob("*.log") if p.is_file() and
                 p.stat().st_size > limit) if location.is_dir() else []
    detail = {"data_disk_used_percent": percent, "oversized_logs": len(big)}
    problems = []
    if percent >= site.agent.disk_threshold_percent:
        problems.append(f"data disk {probe} is {percent}% full "
                        f"(threshold {site.agent.disk_threshold_percent}%)")
    if big:
        problems.append(f"log files above twice the rotate size in {location}: {', '.join(big)}")
    if problems:
        raise HarborctlError("; ".join(problems))
    return detail


def upgrade_check(site: Site) -> dict[str, Any]:
    """Is this release still supported; which bundles on disk are reachable, by which path."""
    from harbor_ops.releases import planner, versions

    current = site.release
    supported = current.minor in versions.supported_minors()
    detail: dict[str, Any] = {"supported": int(supported), "upgrade_path_hops": 0}
    bundle_dir = site.agent.bundle_dir or site.install.bundle_dir
    names = [p.name for p in bundle_dir.glob("harbor-offline-installer-v*.tgz")] if (
        bundle_dir.is_dir()) else []
    newer = sorted(v for v in planner.bundle_versions(names) if v > current.version)
    if newer:
        p = planner.plan(current=str(current.version), target=str(newer[-1]), bundles=names)
        detail["upgrade_path_hops"] = len(p.stops)
        detail["upgrade_missing_bundles"] = len(p.missing_bundles)
    if not supported:
        raise HarborctlError(f"Harbor {current.version} is outside Harbor's support window "
                             f"({', '.join(versions.supported_minors())}); run "
                             "`harborctl upgrade plan`")
    return detail


class HostsFailed(HarborctlError):
    """Some hosts of a fleet job failed; ``detail`` still reports every host."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        super().__init__(message)
        self.detail = detail


def backup(site: Site) -> dict[str, Any]:
    """The nightly backup: this host, or every host of the inventory from the controller."""
    from harbor_ops.backup.site_ops import create_for_site, prune_for_site
    from harbor_ops.hosts.joblock import is_local

    if not all(is_local(h) for h in site.hosts):
        return _fleet(site, "backup", _backup_host)
    result = _retried(lambda: create_for_site(site))
    pruned = prune_for_site(site)
    return _backup_numbers(result, pruned)


def _retried(create: Any) -> Any:
    """A backup retried within bounds when the database or the host does not answer."""
    last: HarborctlError | None = None
    waits = _retry_seconds()
    for attempt in range(BACKUP_ATTEMPTS):
        try:
            return create()
        except (BackupError, RemoteError) as exc:
            last = exc
            pause = waits[min(attempt, len(waits) - 1)]
            if attempt + 1 < BACKUP_ATTEMPTS and STOP.wait(pause):
                break
    assert last is not None
    raise last


def _backup_host(site: Site, entry: HostEntry, *, first: bool = True) -> dict[str, Any]:
    from harbor_ops.backup.fleet import create_on_host, prune_on_host

    jitter = site.backup.jitter_minutes * 60
    if first and jitter and STOP.wait(random.uniform(0, jitter)):  # each host its own start
        raise HarborctlError("the agent is stopping")
    result = _retried(lambda: create_on_host(site, entry))
    return _backup_numbers(result, len(prune_on_host(site, entry).deleted))


def _fleet(site: Site, job: str, one: Any) -> dict[str, Any]:
    """``one(site, host)`` on every host, ``backup.parallel`` at a time; per-host detail.

    A host found busy is tried again after the others (:func:`_retry_busy`), so its wait
    never holds a place another host's job could use.
    """
    from harbor_ops.backup.fleet import run_each

    began = time.monotonic()
    result = run_each(job, site.hosts, lambda e: one(site, e), parallel=site.backup.parallel)
    tries = _retry_busy(site, job, one, result.outcomes, began)
    hosts = {o.host: {"ok": o.ok, "error": o.error, **(o.result or {}),
                      **({"busy_tries": tries[o.host]} if o.host in tries else {})}
             for o in result.outcomes}
    detail = {"hosts": hosts, "hosts_failed": len(result.failed),
              "hosts_ok": len(hosts) - len(result.failed)}
    if result.failed:
        raise HostsFailed(f"{job} failed on {', '.join(result.failed)}: "
                          + "; ".join(str(hosts[h]["error"]) for h in result.failed), detail)
    return detail


def _retry_busy(site: Site, job: str, one: Any, outcomes: list[Any],
                began: float) -> dict[str, int]:
    """Try the hosts whose job lock was held again, within the busy bounds (the module's
    ``BUSY_*``); ``outcomes`` is updated in place. Returns each busy host's number of tries.
    A host still busy at the end keeps the holder's message, and the bounds are added."""
    from harbor_ops.backup.fleet import run_each

    pause, window = _busy_bounds()
    tries: dict[str, int] = {}
    for _ in range(BUSY_ATTEMPTS - 1):
        busy = {o.host: i for i, o in enumerate(outcomes)
                if not o.ok and o.exit_code == LockHeld.exit_code}
        for host in busy:
            tries[host] = tries.get(host, 1)
        if not busy or time.monotonic() - began + pause > window or STOP.wait(pause):
            break
        again = run_each(job, [e for e in site.hosts if e.name in busy],
                         lambda e: one(site, e, first=False), parallel=site.backup.parallel)
        for o in again.outcomes:
            outcomes[busy[o.host]] = o
            tries[o.host] += 1
    for o in outcomes:
        if not o.ok and o.exit_code == LockHeld.exit_code and o.host in tries:
            n = tries[o.host]
            o.error = (f"{o.error} (still busy after {n} {'try' if n == 1 else 'tries'} over "
                       f"{time.monotonic() - began:.0f} s; a busy host is tried at most "
                       f"{BUSY_ATTEMPTS} times, none later than {window:.0f} s into the job)")
    return tries


def _busy_bounds() -> tuple[float, float]:
    """(pause between tries, window) from :data:`BUSY_RETRY_ENV`, else the defaults."""
    raw = os.environ.get(BUSY_RETRY_ENV, "")
    try:
        pause, window = (float(x) for x in raw.split(","))
    except ValueError:
        return BUSY_PAUSE_SECONDS, BUSY_WINDOW_SECONDS
    if pause < 0 or window < 0:
        return BUSY_PAUSE_SECONDS, BUSY_WINDOW_SECONDS
    return pause, window


def _backup_numbers(result: Any, pruned: int) -> dict[str, Any]:
    m = result.manifest
    seconds = (datetime.fromisoformat(m.finished_at) - datetime.fromisoformat(m.started_at))
    return {"backup_size_bytes": result.size,
            "backup_duration_seconds": round(seconds.total_seconds(), 3),
            "backups_pruned": pruned}


def _retry_seconds() -> tuple[float, ...]:
    raw = os.environ.get(BACKUP_RETRY_ENV, "")
    try:
        waits = tuple(float(x) for x in raw.split(",") if x.strip())
    except ValueError:
        waits = ()
    return waits if waits and all(w >= 0 for w in waits) else BACKUP_RETRY_SECONDS


def drill(site: Site) -> dict[str, Any]:
    """The weekly restore drill: a real restore of the newest backup into a scratch DB."""
    from harbor_ops.backup.site_ops import verify_latest_for_site
    from harbor_ops.hosts.joblock import is_local

    if not all(is_local(h) for h in site.hosts):
        return _fleet(site, "drill", _drill_host)
    return verify_latest_for_site(site)


def _drill_host(site: Site, entry: HostEntry, *, first: bool = True) -> dict[str, Any]:
    from harbor_ops.backup.fleet import verify_on_host

    del first  # the drill has no jitter of its own
    result = verify_on_host(site, entry)
    return {"drill_rows": sum(result.row_counts.values()),
            "drill_duration_seconds": result.duration_seconds}


JOBS = {
    "backup": backup,
    "drill": drill,
    "upgrade_check": upgrade_check,
    "health": health,
    "certificates": certificates,
    "disk_and_logs": disk_and_logs,
}
