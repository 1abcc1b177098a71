"""The agent's schedule policy (pure), status, metrics and single-instance lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from harbor_ops.agent import loop as agent
from harbor_ops.core.errors import HarborctlError, LockHeld
from harbor_ops.site.load import load_site_text

NIGHTLY = agent.JobSpec("backup", at="02:30")
WEEKLY = agent.JobSpec("drill", at="04:30", weekday="sunday")
HOURLY = agent.JobSpec("disk", interval=timedelta(hours=1))
BERLIN = ZoneInfo("Europe/Berlin")
T = datetime(2026, 11, 25, 12, 0, tzinfo=BERLIN)  # a Wednesday


@pytest.mark.parametrize("spec,last,now,due", [
    (NIGHTLY, None, T, True),  # never ran: catch up once
    (NIGHTLY, T.replace(hour=2, minute=31), T, False),  # ran last night
    (NIGHTLY, T.replace(hour=2, minute=31) - timedelta(days=1), T, True),  # missed last night
    (NIGHTLY, T.replace(hour=2, minute=31), T + timedelta(hours=14, minutes=30), True),
    (NIGHTLY, T.replace(hour=2, minute=31), T + timedelta(hours=14, minutes=29), False),
    (WEEKLY, T - timedelta(days=3), T, False),  # ran Sunday, next Sunday not yet
    (WEEKLY, T - timedelta(days=3), T + timedelta(days=4, hours=-7, minutes=30), True),
    (HOURLY, T - timedelta(minutes=59), T, False),
    (HOURLY, T - timedelta(minutes=60), T, True),
    (HOURLY, None, T, True),
])
def test_due_jobs_table(spec: agent.JobSpec, last: datetime | None, now: datetime,
                        due: bool) -> None:
    assert (agent.due_jobs((spec,), {spec.name: last}, now) == [spec.name]) is due


def _utc(y: int, mo: int, d: int, h: int, mi: int) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


# Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
@pytest.mark.parametrize("spec,last,now,due", [
    # autumn: the wall clock goes back an hour; intervals are real time
    (HOURLY, _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 1, 10), False),  # 02:30 -> 02:10
    (HOURLY, _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 1, 31), True),  # 02:30 -> 02:31
    # spring: 01:55 CET -> 03:01 CEST is six minutes, not 66
    (HOURLY, _utc(2026, 3, 29, 0, 55), _utc(2026, 3, 29, 1, 1), False),
    # the nightly 02:30 runs once on the night 02:30 happens twice ...
    (NIGHTLY, _utc(2026, 10, 24, 0, 31), _utc(2026, 10, 25, 0, 30), True),
    (NIGHTLY, _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 25, 1, 35), False),
    # ... and just after the gap on the night it does not happen at all
    (NIGHTLY, _utc(2026, 3, 28, 1, 31), _utc(2026, 3, 29, 1, 29), False),
    (NIGHTLY, _utc(2026, 3, 28, 1, 31), _utc(2026, 3, 29, 1, 30), True),
    # the day after the change, 02:30 is local wall time again (00:30 UTC in summer)
    (NIGHTLY, _utc(2026, 3, 29, 1, 30), _utc(2026, 3, 30, 0, 29), False),
    (NIGHTLY, _utc(2026, 3, 29, 1, 30), _utc(2026, 3, 30, 0, 30), True),
])
def test_due_jobs_across_daylight_saving_changes(spec: agent.JobSpec, last: datetime,
                                                 now: datetime, due: bool) -> None:
    assert (agent.due_jobs((spec,), {spec.name: last}, now, BERLIN) == [spec.name]) is due


def test_jitter_applies_to_every_tick_of_the_day_alike() -> None:
    spec = agent.JobSpec("backup", at="02:30", jitter_minutes=30, jitter_seed="harbor.test")
    last = T.replace(hour=3)
    nxt = agent.next_due(spec, last, last)
    base = (last + timedelta(days=1)).replace(hour=2, minute=30)
    assert base <= nxt < base + timedelta(minutes=30) and nxt != base
    assert agent.next_due(spec, last, last + timedelta(hours=5)) == nxt  # deterministic
    assert agent.due_jobs((spec,), {"backup": last}, nxt - timedelta(seconds=1)) == []
    assert agent.due_jobs((spec,), {"backup": last}, nxt) == ["backup"]
    other = agent.JobSpec("backup", at="02:30", jitter_minutes=30, jitter_seed="other.test")
    days = [agent.next_due(other, T + timedelta(days=i), T + timedelta(days=i)) for i in range(5)]
    assert len({d.time() for d in days}) > 1  # a different offset each day


def test_next_due_weekday_lands_on_that_weekday() -> None:
    nxt = agent.next_due(WEEKLY, T, T)
    assert nxt.weekday() == 6 and (nxt.hour, nxt.minute) == (4, 30) and nxt > T


def _site(tmp_path: Path) -> object:
    text = textwrap.dedent(f"""\
        harbor:
          version: 2.15.2
          hostname: harbor.test
          harbor_admin_password_env: A
          database: {{password_env: B}}
          data_volume: {tmp_path}/data
          log: {{local: {{location: {tmp_path}/logs, rotate_size: 1k}}}}
        agent:
          status_file: {tmp_path}/state/status.json
          metrics_dir: {tmp_path}/metrics
          bundle_dir: {tmp_path}/bundles
        """)
    return load_site_text(text, base_dir=tmp_path)


def test_jobs_are_recorded_in_status_and_metrics(tmp_path: Path) -> None:
    site = _site(tmp_path)

    def fails(_site: object) -> dict[str, object]:
        raise HarborctlError("database refused the connection")

    a = agent.Agent(site, jobs={"backup": lambda s: {"size_bytes": 1234}, "drill": fails,
                                "upgrade_check": lambda s: {}, "health": lambda s: {},
                                "certificates": lambda s: {}, "disk_and_logs": lambda s: {}})
    ran = a.run_due()
    assert set(ran) == {"backup", "drill", "upgrade_check", "health", "certificates",
                        "disk_and_logs"}
    status = json.loads((tmp_path / "state/status.json").read_text())
    assert status["jobs"]["backup"]["result"] == "ok"
    assert status["jobs"]["drill"]["result"] == "failed"
    assert status["jobs"]["drill"]["error"] == "database refused the connection"
    assert status["jobs"]["drill"]["next_run"]
    prom = (tmp_path / "metrics/harborctl.prom").read_text()
    assert "harborctl_backup_last_success_timestamp_seconds " in prom
    assert 'harborctl_job_success{job="drill"} 0' in prom
    assert 'harborctl_job_failures_total{job="drill"} 1' in prom
    assert "harborctl_backup_size_bytes 1234" in prom
    # Nothing is due right after: a second tick runs nothing.
    assert agent.Agent(site, jobs=a.jobs).run_due() == []


def test_real_disk_and_log_job_flags_oversized_logs(tmp_path: Path) -> None:
    from harbor_ops.agent import jobs as agent_jobs

    site = _site(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/core.log").write_bytes(b"x" * 4096)  # > 2 x 1k
    (tmp_path / "logs/proxy.log").write_bytes(b"x" * 100)
    with pytest.raises(HarborctlError, match="core.log"):
        agent_jobs.disk_and_logs(site)


def test_upgrade_check_reads_bundles_and_support(tmp_path: Path) -> None:
    from harbor_ops.agent import jobs as agent_jobs

    site = _site(tmp_path)
    (tmp_path / "bundles").mkdir()
    assert agent_jobs.upgrade_check(site)["upgrade_path_hops"] == 0
    old = load_site_text(
        f"harbor: {{version: 2.10.3, hostname: harbor.test, harbor_admin_password_env: A,"
        f" database: {{password_env: B}}}}\nagent: {{bundle_dir: {tmp_path}/bundles}}\n")
    (tmp_path / "bundles/harbor-offline-installer-v2.14.4.tgz").write_bytes(b"")
    with pytest.raises(HarborctlError, match="outside Harbor's support window"):
        agent_jobs.upgrade_check(old)


def test_a_second_agent_is_refused(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from harbor_ops.agent.loop import single_instance
            with single_instance(Path({str(status)!r})):
                print("locked", flush=True)
                sys.stdin.read()
            """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid={holder.pid}"), agent.single_instance(status):
            pass
    finally:
        holder.communicate(input="", timeout=10)
    with agent.single_instance(status):
        pass  # released when the holder exits


def test_run_forever_stops_on_sigterm(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yml"
    site_file.write_text(textwrap.dedent(f"""\
        harbor:
          version: 2.15.2
          hostname: harbor.test
          harbor_admin_password_env: A
          database: {{password_env: B}}
          data_volume: {tmp_path}/data
        backup:
          dir: {tmp_path}/backups
        agent:
          status_file: {tmp_path}/state/status.json
        """))
    proc = subprocess.Popen([sys.executable, "-m", "harbor_ops.cli.main", "agent", "run", "-c",
                             str(site_file)], stderr=subprocess.PIPE, text=True)
    status = tmp_path / "state/status.json"
    deadline = time.monotonic() + 120  # bounded: a loaded machine starts Python slowly
    while not status.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    assert status.exists()
    proc.terminate()
    _, err = proc.communicate(timeout=120)  # a hang guard, generous for a loaded machine
    assert proc.returncode == 0, err
    assert "stopped" in err
