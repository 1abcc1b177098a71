"""The agent's jobs: each takes the site, calls a core function, returns numbers to record.

A job raises a HarborctlError on failure; the agent records the message and counts it.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harbor_ops.core.errors import BackupError, HarborctlError, RemoteError
from harbor_ops.hosts import health as probe
from harbor_ops.site.checks import size_bytes
from harbor_ops.site.model import HostEntry, Site

HEALTH_TIMEOUT = 10.0
BACKUP_ATTEMPTS = 3
BACKUP_RETRY_SECONDS = (30.0, 120.0)
# Tests (and impatient operators) shorten the waits: "0.5,1" -> (0.5, 1.0).
BACKUP_RETRY_ENV = "HARBORCTL_BACKUP_RETRY_SECONDS"
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


def _backup_host(site: Site, entry: HostEntry) -> dict[str, Any]:
    from harbor_ops.backup.fleet import create_on_host, prune_on_host

    jitter = site.backup.jitter_minutes * 60
    if jitter and STOP.wait(random.uniform(0, jitter)):  # each host its own start
        raise HarborctlError("the agent is stopping")
    result = _retried(lambda: create_on_host(site, entry))
    return _backup_numbers(result, len(prune_on_host(site, entry).deleted))


def _fleet(site: Site, job: str, one: Any) -> dict[str, Any]:
    """``one(site, host)`` on every host, ``backup.parallel`` at a time; per-host detail."""
    from harbor_ops.backup.fleet import run_each

    result = run_each(job, site.hosts, lambda e: one(site, e), parallel=site.backup.parallel)
    hosts = {o.host: {"ok": o.ok, "error": o.error, **(o.result or {})}
             for o in result.outcomes}
    detail = {"hosts": hosts, "hosts_failed": len(result.failed),
              "hosts_ok": len(hosts) - len(result.failed)}
    if result.failed:
        raise HostsFailed(f"{job} failed on {', '.join(result.failed)}: "
                          + "; ".join(str(hosts[h]["error"]) for h in result.failed), detail)
    return detail


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


def _drill_host(site: Site, entry: HostEntry) -> dict[str, Any]:
    from harbor_ops.backup.fleet import verify_on_host

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
