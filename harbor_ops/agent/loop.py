"""The scheduled agent: nightly backup, weekly restore drill, checks, status and metrics.

It calls the same core functions as the CLI (:mod:`harbor_ops.agent.jobs`). One instance
runs at a time (an flock on ``<status file>.lock``). ``run_forever`` sleeps until the
next job is due (``schedule.idle_seconds``) instead of polling; SIGTERM lets the running
job finish, then exits. ``run_once`` is the timer/cron tick: it runs what is due
according to the status file (the pure :func:`due_jobs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from harbor_ops.core.errors import HarborctlError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.lock import file_lock
from harbor_ops.site.checks import WEEKDAYS
from harbor_ops.site.model import Site

TICK_SECONDS = 30  # how often the foreground agent asks what is due


@dataclass(frozen=True)
class JobSpec:
    """When a job runs: every ``interval``, or daily at ``at`` (HH:MM local wall time), on
    ``weekday``, plus a per-day offset of up to ``jitter_minutes`` (the same on every tick of
    a day, derived from ``jitter_seed``, so many hosts do not start together)."""

    name: str
    interval: timedelta | None = None
    at: str | None = None
    weekday: str | None = None
    jitter_minutes: int = 0
    jitter_seed: str = ""

    def jitter(self, day: date) -> timedelta:
        if not self.jitter_minutes:
            return timedelta(0)
        digest = hashlib.sha256(f"{self.jitter_seed}|{self.name}|{day}".encode()).digest()
        return timedelta(seconds=int.from_bytes(digest[:8], "big") % (self.jitter_minutes * 60))


# Jobs that look at this machine's Harbor; a controller of SSH hosts only has none.
HOST_LOCAL_JOBS = ("health", "disk_and_logs")


def job_specs(site: Site) -> tuple[JobSpec, ...]:
    # A fleet's hosts each wait their own jitter inside the job.
    minutes = site.backup.jitter_minutes if has_local_host(site) else 0
    seed = site.hostname
    specs = (
        JobSpec("backup", at=site.backup.at, jitter_minutes=minutes, jitter_seed=seed),
        JobSpec("drill", at=_shift(site.backup.at, hours=2), weekday=site.agent.drill_weekday,
                jitter_minutes=minutes, jitter_seed=seed),
        JobSpec("upgrade_check", interval=timedelta(hours=24)),
        JobSpec("health", interval=timedelta(minutes=5)),
        JobSpec("certificates", interval=timedelta(hours=12)),
        JobSpec("disk_and_logs", interval=timedelta(hours=1)),
    )
    if has_local_host(site):
        return specs
    return tuple(s for s in specs if s.name not in HOST_LOCAL_JOBS)


def has_local_host(site: Site) -> bool:
    return any(h.connection == "local" for h in site.hosts)


def _shift(at: str, *, hours: int) -> str:
    h, m = (int(x) for x in at.split(":"))
    return f"{(h + hours) % 24:02d}:{m:02d}"


def local_zone() -> tzinfo:
    """This host's time zone WITH its daylight-saving rules ($TZ, else /etc/localtime).

    ``datetime.now().astimezone()`` only knows today's offset, which is what made daily
    times drift by an hour across a DST change."""
    name = os.environ.get("TZ", "").lstrip(":")
    try:
        if name:
            return ZoneInfo(name)
        with open("/etc/localtime", "rb") as fh:
            return ZoneInfo.from_file(fh)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return datetime.now().astimezone().tzinfo or UTC


def next_due(spec: JobSpec, last_run: datetime | None, now: datetime,
             tz: tzinfo | None = None) -> datetime:
    """Pure: when ``spec`` is next due, given its last run (time zone-aware datetimes).

    Intervals are absolute (UTC) time, so a clock going back an hour in autumn does not
    pause the health check; daily times are wall times in ``tz`` (default: ``now``'s zone):
    a time skipped in spring runs just after the gap, a repeated one runs once.
    """
    zone = tz or now.tzinfo or UTC
    if spec.interval is not None:
        return now if last_run is None else (last_run.astimezone(UTC) + spec.interval
                                             ).astimezone(zone)
    assert spec.at is not None
    hh, mm = (int(x) for x in spec.at.split(":"))
    anchor = (last_run or (now - timedelta(days=8))).astimezone(UTC)
    day = anchor.astimezone(zone).date() - timedelta(days=1)
    target = WEEKDAYS.index(spec.weekday.lower()) if spec.weekday else None
    for _ in range(16):
        wall = datetime.combine(day, dtime(hh, mm), tzinfo=zone)
        candidate = wall.astimezone(UTC) + spec.jitter(day)
        if candidate > anchor and (target is None or day.weekday() == target):
            return candidate.astimezone(zone)
        day += timedelta(days=1)
    raise AssertionError("unreachable: a weekday recurs within 8 days")


def due_jobs(specs: tuple[JobSpec, ...], last_runs: dict[str, datetime | None],
             now: datetime, tz: tzinfo | None = None) -> list[str]:
    """Pure: the names of jobs due at ``now`` (a missed nightly run is caught up once)."""
    return [s.name for s in specs if next_due(s, last_runs.get(s.name), now, tz) <= now]


# ------------------------------------------------------------------ status and metrics


@dataclass
class JobRecord:
    last_run: str | None = None
    last_success: str | None = None
    result: str = "never"  # ok | failed | never
    duration_seconds: float | None = None
    error: str | None = None
    next_run: str | None = None
    failures: int = 0
    detail: dict[str, Any] | None = None


HostRecords = dict[str, dict[str, JobRecord]]  # host -> job -> record


def load_status(path: Path) -> dict[str, JobRecord]:
    return _load(path)[0]


def load_host_status(path: Path) -> HostRecords:
    return _load(path)[1]


def _load(path: Path) -> tuple[dict[str, JobRecord], HostRecords]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}, {}
    fields = JobRecord.__dataclass_fields__

    def records(doc: dict[str, Any]) -> dict[str, JobRecord]:
        return {name: JobRecord(**{k: v for k, v in rec.items() if k in fields})
                for name, rec in doc.items()}
    return (records(raw.get("jobs", {})),
            {h: records(jobs) for h, jobs in (raw.get("hosts") or {}).items()})


def write_status(path: Path, jobs: dict[str, JobRecord],
                 hosts: HostRecords | None = None) -> None:
    doc: dict[str, Any] = {"updated": _iso(datetime.now().astimezone()), "pid": os.getpid(),
                           "jobs": {n: vars(r) for n, r in sorted(jobs.items())}}
    if hosts:
        doc["hosts"] = {h: {n: vars(r) for n, r in sorted(recs.items())}
                        for h, recs in sorted(hosts.items())}
    atomic_write(path, json.dumps(doc, indent=2) + "\n", mode=0o644)


def host_metrics(hosts: HostRecords) -> list[str]:
    """Per-host lines of fleet jobs, labelled ``host="h1"``."""
    rows = [(h, n, r) for h, recs in sorted(hosts.items()) for n, r in sorted(recs.items())]
    if not rows:
        return []
    lines = ["# HELP harborctl_host_job_success Whether a job's last run on a host succeeded.",
             "# TYPE harborctl_host_job_success gauge"]
    lines += [f'harborctl_host_job_success{{job="{n}",host="{h}"}} '
              f'{1 if r.result == "ok" else 0}' for h, n, r in rows if r.result != "never"]
    lines += ["# HELP harborctl_host_job_failures_total Failed runs on a host since its last "
              "success.", "# TYPE harborctl_host_job_failures_total gauge"]
    lines += [f'harborctl_host_job_failures_total{{job="{n}",host="{h}"}} {r.failures}'
              for h, n, r in rows]
    lines += ["# HELP harborctl_host_job_last_success_timestamp_seconds Last success of a job "
              "on a host.", "# TYPE harborctl_host_job_last_success_timestamp_seconds gauge"]
    lines += [f'harborctl_host_job_last_success_timestamp_seconds{{job="{n}",host="{h}"}} '
              f"{_epoch(r.last_success):.0f}" for h, n, r in rows if r.last_success]
    for h, n, r in rows:
        for key, value in sorted((r.detail or {}).items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                lines.append(f'harborctl_{n}_{key}{{host="{h}"}} {value}')
    return lines


def metrics_text(jobs: dict[str, JobRecord], hosts: HostRecords | None = None) -> str:
    """Prometheus textfile-collector format."""
    lines = [
        "# HELP harborctl_job_last_run_timestamp_seconds Last time a harborctl agent job ran.",
        "# TYPE harborctl_job_last_run_timestamp_seconds gauge",
    ]
    for name, rec in sorted(jobs.items()):
        if rec.last_run:
            lines.append(f'harborctl_job_last_run_timestamp_seconds{{job="{name}"}} '
                         f"{_epoch(rec.last_run):.0f}")
    lines += ["# HELP harborctl_job_success Whether the last run of a job succeeded.",
              "# TYPE harborctl_job_success gauge"]
    lines += [f'harborctl_job_success{{job="{n}"}} {1 if r.result == "ok" else 0}'
              for n, r in sorted(jobs.items()) if r.result != "never"]
    lines += ["# HELP harborctl_job_failures_total Failed runs of a job since the last success.",
              "# TYPE harborctl_job_failures_total gauge"]
    lines += [f'harborctl_job_failures_total{{job="{n}"}} {r.failures}'
              for n, r in sorted(jobs.items())]
    lines += ["# HELP harborctl_job_duration_seconds Duration of the last run of a job.",
              "# TYPE harborctl_job_duration_seconds gauge"]
    lines += [f'harborctl_job_duration_seconds{{job="{n}"}} {r.duration_seconds:.3f}'
              for n, r in sorted(jobs.items()) if r.duration_seconds is not None]
    backup = jobs.get("backup")
    if backup and backup.last_success:
        lines += ["# HELP harborctl_backup_last_success_timestamp_seconds Last successful backup.",
                  "# TYPE harborctl_backup_last_success_timestamp_seconds gauge",
                  f"harborctl_backup_last_success_timestamp_seconds "
                  f"{_epoch(backup.last_success):.0f}"]
    for rec_name, rec in sorted(jobs.items()):
        for key, value in sorted((rec.detail or {}).items()):
            if isinstance(value, int | float) and not isinstance(value, bool):
                metric = f"harborctl_{rec_name}_{key}"
                lines += [f"# TYPE {metric} gauge", f"{metric} {value}"]
    lines += host_metrics(hosts or {})
    return "\n".join(lines) + "\n"


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _aware(text: str | None, zone: tzinfo) -> datetime | None:
    """A status-file time; one written without an offset is read as local wall time."""
    if not text:
        return None
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=zone)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ------------------------------------------------------------------ running jobs


Job = Callable[[Site], dict[str, Any]]


class Agent:
    """Runs jobs, records their outcome in the status file and the metrics file."""

    def __init__(self, site: Site, jobs: dict[str, Job] | None = None) -> None:
        from harbor_ops.agent import jobs as agent_jobs

        self.site = site
        self.jobs = jobs if jobs is not None else agent_jobs.JOBS
        self.specs = {s.name: s for s in job_specs(site)}
        self.status_path = site.agent.status_file
        self.records, self.host_records = _load(self.status_path)
        self.stopping = threading.Event()
        self.zone = local_zone()

    def run_job(self, name: str) -> JobRecord:
        rec = self.records.setdefault(name, JobRecord())
        started = datetime.now(self.zone)
        t0 = time.monotonic()
        try:
            rec.detail = self.jobs[name](self.site)
            rec.result, rec.error, rec.failures = "ok", None, 0
            rec.last_success = _iso(started)
        except HarborctlError as exc:
            rec.result, rec.error, rec.failures = "failed", exc.message, rec.failures + 1
            rec.detail = getattr(exc, "detail", None)
        except Exception as exc:  # noqa: BLE001 - a job's bug must not stop the agent
            rec.result, rec.error = "failed", f"{type(exc).__name__}: {exc}"
            rec.failures += 1
        rec.duration_seconds = round(time.monotonic() - t0, 3)
        rec.last_run = _iso(started)
        rec.next_run = _iso(next_due(self.specs[name], started, started, self.zone))
        self._record_hosts(name, rec, started)
        self.save()
        return rec

    def _record_hosts(self, name: str, rec: JobRecord, started: datetime) -> None:
        """A fleet job's per-host outcome (``detail["hosts"]``) as per-host records."""
        per_host = (rec.detail or {}).pop("hosts", None)
        if not isinstance(per_host, dict):
            return
        for host, detail in per_host.items():
            hrec = self.host_records.setdefault(host, {}).setdefault(name, JobRecord())
            ok = bool(detail.pop("ok", False))
            hrec.error = detail.pop("error", None)
            hrec.last_run, hrec.next_run = rec.last_run, rec.next_run
            hrec.result = "ok" if ok else "failed"
            hrec.failures = 0 if ok else hrec.failures + 1
            hrec.detail = detail
            if ok:
                hrec.last_success = _iso(started)

    def save(self) -> None:
        write_status(self.status_path, self.records, self.host_records)
        if self.site.agent.metrics_dir is not None:
            atomic_write(self.site.agent.metrics_dir / "harborctl.prom",
                         metrics_text(self.records, self.host_records), mode=0o644)

    def run_due(self, now: datetime | None = None) -> list[str]:
        now = now or datetime.now(self.zone)
        last = {n: _aware(r.last_run, self.zone) for n, r in self.records.items()}
        ran = []
        for name in due_jobs(tuple(self.specs.values()), last, now, self.zone):
            if self.stopping.is_set():
                break
            self.run_job(name)
            ran.append(name)
        return ran


def single_instance(status_file: Path) -> AbstractContextManager[Path]:
    """Hold ``<status file>.lock`` for the agent's lifetime; a second agent is refused."""
    return file_lock(status_file.with_name(status_file.name + ".lock"), mode=0o644,
                     busy="another harborctl agent runs",
                     holder_line=f"pid={os.getpid()} job=agent since={int(time.time())}")


def run_once(site: Site) -> dict[str, Any]:
    """One timer tick: run every job that is due, then return the status."""
    with single_instance(site.agent.status_file):
        agent = Agent(site)
        ran = agent.run_due()
        return {"ran": ran, "jobs": {n: vars(r) for n, r in agent.records.items()},
                "hosts": {h: {n: vars(r) for n, r in recs.items()}
                          for h, recs in agent.host_records.items()}}


def run_forever(site: Site, *, max_seconds: float | None = None,
                log: Callable[[str], None] = print) -> None:
    """The foreground agent, driven by the ``schedule`` library."""
    import schedule

    with single_instance(site.agent.status_file):
        agent = Agent(site)
        from harbor_ops.agent import jobs as agent_jobs

        def stop(*_: object) -> None:
            agent.stopping.set()
            agent_jobs.STOP.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        # One decision for both paths: the timer's `agent once` and this loop run the same
        # pure due_jobs (zone-aware, jittered); `schedule` only wakes the loop each tick.
        scheduler = schedule.Scheduler()
        scheduler.every(TICK_SECONDS).seconds.do(_tick, agent, log)
        agent.save()  # the status file says the agent is up before the first job ends
        log(f"harborctl agent: started (pid {os.getpid()})")
        _tick(agent, log)  # catch up on anything missed while the agent was down
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while not agent.stopping.is_set():
            idle = scheduler.idle_seconds
            wait = 3600.0 if idle is None else max(0.0, idle)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            if agent.stopping.wait(wait):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            scheduler.run_pending()
        log("harborctl agent: stopped")


def _tick(agent: Agent, log: Callable[[str], None]) -> None:
    for name in agent.run_due():
        rec = agent.records[name]
        log(f"harborctl agent: {name} {rec.result} in {rec.duration_seconds}s"
            + (f": {rec.error}" if rec.error else ""))
