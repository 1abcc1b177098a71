"""The scheduled agent: nightly backup, weekly restore drill, checks, status and metrics.

It calls the same core functions as the CLI (:mod:`harbor_ops.agent.jobs`). One instance
runs at a time (an flock on ``<status file>.lock``). ``run_forever`` sleeps until the
next job is due (``schedule.idle_seconds``) instead of polling; SIGTERM lets the running
job finish, then exits. ``run_once`` is the timer/cron tick: it runs what is due
according to the status file (the pure :func:`due_jobs`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from harbor_ops.core.errors import HarborctlError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.lock import file_lock
from harbor_ops.site.checks import WEEKDAYS
from harbor_ops.site.model import Site


@dataclass(frozen=True)
class JobSpec:
    """When a job runs: every ``interval``, or daily at ``at`` (HH:MM, local), on ``weekday``."""

    name: str
    interval: timedelta | None = None
    at: str | None = None
    weekday: str | None = None


# Jobs that look at this machine's Harbor; a controller of SSH hosts only has none.
HOST_LOCAL_JOBS = ("health", "disk_and_logs")


def job_specs(site: Site) -> tuple[JobSpec, ...]:
    specs = (
        JobSpec("backup", at=site.backup.at),
        JobSpec("drill", at=_shift(site.backup.at, hours=2), weekday=site.agent.drill_weekday),
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


def next_due(spec: JobSpec, last_run: datetime | None, now: datetime) -> datetime:
    """Pure: when ``spec`` is next due, given its last run (naive local times)."""
    if spec.interval is not None:
        return now if last_run is None else last_run + spec.interval
    assert spec.at is not None
    hh, mm = (int(x) for x in spec.at.split(":"))
    anchor = last_run or (now - timedelta(days=8))
    candidate = anchor.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if candidate <= anchor:
        candidate += timedelta(days=1)
    if spec.weekday is not None:
        target = WEEKDAYS.index(spec.weekday.lower())
        while candidate.weekday() != target:
            candidate += timedelta(days=1)
    return candidate


def due_jobs(specs: tuple[JobSpec, ...], last_runs: dict[str, datetime | None],
             now: datetime) -> list[str]:
    """Pure: the names of jobs due at ``now`` (a missed nightly run is caught up once)."""
    return [s.name for s in specs if next_due(s, last_runs.get(s.name), now) <= now]


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

    def run_job(self, name: str) -> JobRecord:
        rec = self.records.setdefault(name, JobRecord())
        started = datetime.now().astimezone()
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
        rec.next_run = _iso(next_due(self.specs[name], started.replace(tzinfo=None),
                                     started.replace(tzinfo=None)))
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
        now = now or datetime.now()
        last = {n: (datetime.fromisoformat(r.last_run).replace(tzinfo=None) if r.last_run
                    else None) for n, r in self.records.items()}
        ran = []
        for name in due_jobs(tuple(self.specs.values()), last, now):
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
        scheduler = schedule.Scheduler()
        # A fleet's hosts each wait their own jitter inside the job.
        jitter = site.backup.jitter_minutes * 60 if has_local_host(site) else 0
        for spec in agent.specs.values():
            _schedule(scheduler, spec, agent, jitter, log)
        agent.save()  # the status file says the agent is up before the first job ends
        log(f"harborctl agent: started (pid {os.getpid()})")
        agent.run_due()  # catch up on anything missed while the agent was down
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


def _schedule(scheduler: Any, spec: JobSpec, agent: Agent, jitter: int,
              log: Callable[[str], None]) -> None:
    def job() -> None:
        if spec.at is not None and jitter and agent.stopping.wait(random.uniform(0, jitter)):
            return
        rec = agent.run_job(spec.name)
        log(f"harborctl agent: {spec.name} {rec.result} in {rec.duration_seconds}s"
            + (f": {rec.error}" if rec.error else ""))

    if spec.interval is not None:
        scheduler.every(int(spec.interval.total_seconds())).seconds.do(job)
    elif spec.weekday is not None:
        getattr(scheduler.every(), spec.weekday.lower()).at(spec.at).do(job)
    else:
        scheduler.every().day.at(spec.at).do(job)
