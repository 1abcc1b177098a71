"""Backups of every host from the controller: host choice, per-host folders, per-host outcome."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from harbor_ops.agent import jobs
from harbor_ops.agent import loop as agent
from harbor_ops.backup import fleet
from harbor_ops.cli.main import cli
from harbor_ops.core.errors import BackupError, ConfigError, RemoteError, UsageError
from harbor_ops.hosts import joblock
from harbor_ops.site.load import load_site_text
from harbor_ops.site.model import Site


def _site_text(tmp_path: Path, hosts: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        harbor:
          version: 2.15.2
          hostname: harbor.test
          harbor_admin_password_env: A
          database: {{password_env: B}}
        backup:
          dir: {tmp_path}/backups
          jitter_minutes: 0
        {extra}
        agent:
          status_file: {tmp_path}/state/status.json
          metrics_dir: {tmp_path}/metrics
        hosts:
        """) + textwrap.indent(textwrap.dedent(hosts), "  ")


def _fleet(tmp_path: Path, n: int = 3, extra: str = "") -> Site:
    hosts = "".join(f"- {{name: h{i}, address: 10.200.99.{i}}}\n" for i in range(1, n + 1))
    return load_site_text(_site_text(tmp_path, hosts, extra), base_dir=tmp_path)


@pytest.mark.parametrize("n,host,all_hosts,want", [
    (1, None, False, ["h1"]),  # one host: the default
    (3, "h2", False, ["h2"]),
    (3, None, True, ["h1", "h2", "h3"]),
    (1, None, True, ["h1"]),
])
def test_select_hosts(tmp_path: Path, n: int, host: str | None, all_hosts: bool,
                      want: list[str]) -> None:
    site = _fleet(tmp_path, n)
    assert [h.name for h in fleet.select_hosts(site, host, all_hosts)] == want


@pytest.mark.parametrize("host,all_hosts,words", [
    (None, False, ["3 hosts", "h1, h2, h3", "--host NAME", "--all"]),
    ("h9", False, ["--host", "'h9'", "valid: h1, h2, h3"]),
    ("h1", True, ["--host and --all"]),
])
def test_select_hosts_refusals_name_what_is_valid(tmp_path: Path, host: str | None,
                                                  all_hosts: bool, words: list[str]) -> None:
    with pytest.raises(UsageError) as err:
        fleet.select_hosts(_fleet(tmp_path), host, all_hosts)
    assert all(w in err.value.message for w in words), err.value.message


def test_backups_live_per_host_on_the_controller(tmp_path: Path) -> None:
    site = _fleet(tmp_path, 2)
    assert fleet.backup_dir(site, site.hosts[1]) == tmp_path / "backups" / "h2"
    local = load_site_text(_site_text(tmp_path, "- {name: me, connection: local}\n"),
                           base_dir=tmp_path)
    assert fleet.backup_dir(local, local.hosts[0]) == tmp_path / "backups"  # as today
    assert joblock.host_lock(local.hosts[0]) is None
    assert joblock.host_lock(site.hosts[0]) != joblock.host_lock(site.hosts[1])


@pytest.mark.parametrize("extra,hosts,field", [
    ("", "- {name: ../etc, address: 10.200.99.1}\n", "hosts[0].name"),
    ("", "- {name: a/b, address: 10.200.99.1}\n", "hosts[0].name"),
])
def test_host_names_that_cannot_name_a_folder_are_refused(tmp_path: Path, extra: str,
                                                          hosts: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_site_text(_site_text(tmp_path, hosts, extra), base_dir=tmp_path)
    assert field in str(err.value)


def test_backup_parallel_must_be_positive(tmp_path: Path) -> None:
    text = _site_text(tmp_path, "- {name: h1, address: 10.200.99.1}\n").replace(
        "jitter_minutes: 0", "jitter_minutes: 0\n  parallel: 0")
    with pytest.raises(ConfigError) as err:
        load_site_text(text, base_dir=tmp_path)
    assert "backup.parallel" in str(err.value)
    assert _fleet(tmp_path).backup.parallel == 2  # the default


def test_run_each_bounds_parallelism_and_isolates_failures(tmp_path: Path) -> None:
    site = _fleet(tmp_path, 4)
    running, peak, cond = 0, 0, threading.Condition()

    def one(entry: Any) -> str:
        nonlocal running, peak
        with cond:
            running += 1
            peak = max(peak, running)
            cond.notify_all()
            # the first job waits (bounded) until a second one runs beside it, however
            # slowly the pool's threads start on a loaded machine
            cond.wait_for(lambda: peak >= 2, timeout=30)
        time.sleep(0.05)  # a chance for a third job to start, were the bound not kept
        with cond:
            running -= 1
        if entry.name == "h3":
            raise BackupError("pg_dump failed")
        if entry.name == "h4":
            raise OSError("Connection reset by peer")
        return entry.name

    result = fleet.run_each("backup create", site.hosts, one, parallel=2)
    assert peak == 2
    assert [o.host for o in result.outcomes] == ["h1", "h2", "h3", "h4"]
    assert result.failed == ["h3", "h4"]
    assert result.outcomes[2].error == "host h3: pg_dump failed"
    assert result.outcomes[2].exit_code == 8 and result.outcomes[3].exit_code == 6
    with pytest.raises(RemoteError) as err:
        result.raise_for_failures()
    assert err.value.exit_code == 6 and "h3, h4" in err.value.message
    doc = result.to_dict()
    assert doc["ok"] is False and [h["host"] for h in doc["hosts"]] == ["h1", "h2", "h3", "h4"]


def _write_site(tmp_path: Path, n: int) -> Path:
    hosts = "".join(f"- {{name: h{i}, address: 10.200.99.{i}}}\n" for i in range(1, n + 1))
    path = tmp_path / "harborctl.yml"
    path.write_text(_site_text(tmp_path, hosts))
    return path


def test_cli_needs_host_or_all_on_a_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("A", "x")
    monkeypatch.setenv("B", "y")
    config = _write_site(tmp_path, 3)
    for args in (["backup", "create"], ["backup", "list"], ["backup", "prune"],
                 ["backup", "verify"]):
        res = CliRunner().invoke(cli, [*args, "-c", str(config)])
        assert res.exit_code != 0 and isinstance(res.exception, UsageError), args
        assert "--host NAME" in res.exception.message


def test_cli_list_all_reports_per_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _write_site(tmp_path, 2)
    res = CliRunner().invoke(cli, ["backup", "list", "--all", "-o", "json", "-c", str(config)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [(h["host"], h["ok"], h["result"]) for h in doc["hosts"]] == [
        ("h1", True, []), ("h2", True, [])]
    res = CliRunner().invoke(cli, ["backup", "verify", "some-name", "--all", "-c", str(config)])
    assert isinstance(res.exception, UsageError) and "--host" in res.exception.message


def test_unreachable_host_fails_its_own_create(tmp_path: Path) -> None:
    """Nothing listens on that port: the host is named, and no backup is listed."""
    site = load_site_text(_site_text(tmp_path, "- {name: h1, address: 127.0.0.1, port: 9}\n"),
                          base_dir=tmp_path)
    entry = site.hosts[0]
    with pytest.raises(RemoteError) as err:
        fleet.create_on_host(site, entry, ssh_config=None)
    assert "host h1" in err.value.message
    assert fleet.list_on_host(site, entry) == []


def test_agent_records_each_host_and_labels_metrics(tmp_path: Path) -> None:
    site = _fleet(tmp_path, 3)

    def one(_site: Site, entry: Any) -> dict[str, Any]:
        if entry.name == "h2":
            raise RemoteError("host h2 (root@10.200.99.2:22) is unreachable: timed out")
        return {"backup_size_bytes": 100}

    runner = agent.Agent(site, jobs={"backup": lambda s: jobs._fleet(s, "backup", one)})
    rec = runner.run_job("backup")
    assert rec.result == "failed" and "h2" in (rec.error or "")
    status = json.loads(site.agent.status_file.read_text())
    assert status["hosts"]["h1"]["backup"]["result"] == "ok"
    assert status["hosts"]["h2"]["backup"]["result"] == "failed"
    assert "unreachable" in status["hosts"]["h2"]["backup"]["error"]
    assert status["jobs"]["backup"]["detail"] == {"hosts_failed": 1, "hosts_ok": 2}
    assert site.agent.metrics_dir is not None
    prom = (site.agent.metrics_dir / "harborctl.prom").read_text()
    assert 'harborctl_host_job_success{job="backup",host="h1"} 1' in prom
    assert 'harborctl_host_job_success{job="backup",host="h2"} 0' in prom
    assert 'harborctl_host_job_failures_total{job="backup",host="h2"} 1' in prom
    assert 'harborctl_backup_backup_size_bytes{host="h3"} 100' in prom
    assert agent.load_host_status(site.agent.status_file)["h2"]["backup"].failures == 1


def test_a_controller_of_ssh_hosts_runs_no_host_local_checks(tmp_path: Path) -> None:
    names = {s.name for s in agent.job_specs(_fleet(tmp_path, 2))}
    assert "backup" in names and "drill" in names
    assert not names & set(agent.HOST_LOCAL_JOBS)


def test_controller_schedule_runs_the_agent_for_ssh_hosts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harbor_ops.install.schedule import install_controller_schedule, needs_controller_schedule
    from harbor_ops.render.engine import render_site

    monkeypatch.setenv("A", "admin-pw")
    monkeypatch.setenv("B", "db-pw")
    site = _fleet(tmp_path, 2)
    assert needs_controller_schedule(site)
    local = load_site_text(_site_text(tmp_path, "- {name: me, connection: local}\n"),
                           base_dir=tmp_path)
    assert not needs_controller_schedule(local)
    render_site(site, output_dir=tmp_path / "rendered")
    written = install_controller_schedule(tmp_path / "rendered", tmp_path / "root")
    assert written == [str(tmp_path / "root/etc/cron.d/harborctl")]
    line = Path(written[0]).read_text().splitlines()[-1]
    assert " agent once -c " in line and " backup create" not in line
    assert Path(written[0]).stat().st_mode & 0o777 == 0o644


def test_ssh_source_refuses_arguments_that_would_split_the_remote_command() -> None:
    from harbor_ops.backup.ssh_host import SshDockerSource

    source = SshDockerSource(host="h1", client=None, sudo=True)
    assert source.argv("pg_dump", ["-Fc"])[:4] == ["sudo", "-n", "docker", "exec"]
    for bad in ("--snapshot=00000003-1; rm -rf /", "$(id)", "a b", "x\ny", "-Fc\n"):
        with pytest.raises(BackupError) as err:
            source.popen("pg_dump", [bad])  # refused before any channel is opened
        assert "host h1: refusing argument" in err.value.message


def test_drill_output_parsing() -> None:
    from harbor_ops.backup.ssh_drill import _parse_counts

    assert _parse_counts("artifact|240\nproject|13\n.schema|171\n", "h1") == (
        {"artifact": 240, "project": 13}, 171)
    with pytest.raises(BackupError):
        _parse_counts("", "h1")


def test_backup_compress_on_is_host_or_controller(tmp_path: Path) -> None:
    assert _fleet(tmp_path).backup.compress_on == "host"  # the default: the faster one
    ok = _site_text(tmp_path, "- {name: h1, address: 10.200.99.1}\n").replace(
        "jitter_minutes: 0", "jitter_minutes: 0\n  compress_on: controller")
    assert load_site_text(ok, base_dir=tmp_path).backup.compress_on == "controller"
    with pytest.raises(ConfigError) as err:
        load_site_text(ok.replace("compress_on: controller", "compress_on: both"),
                       base_dir=tmp_path)
    assert "backup.compress_on" in str(err.value) and "host or controller" in str(err.value)


@pytest.mark.parametrize("dump,zstd,rc", [
    ("printf 'a dump'", "zstd", 0),
    ("sh -c \"printf 'half a dump'; exit 3\"", "zstd", 3),  # pg_dump's failure is the pipe's status
    ("printf 'a dump'", "zstd-missing", 70),  # zstd's failure too, never a silent 0
])
def test_the_host_side_pipe_keeps_pg_dumps_exit_status(tmp_path: Path, dump: str, zstd: str,
                                                       rc: int) -> None:
    """The script the host runs (POSIX sh, no pipefail), here with this machine's sh and
    zstd standing in for the host's: the status is pg_dump's, and the stream is zstd."""
    import subprocess

    import zstandard

    from harbor_ops.backup.ssh_host import _PIPE

    script = _PIPE.format(dump=dump, level=1).replace("| zstd ", f"| {zstd} ")
    proc = subprocess.run(["sh", "-c", script], capture_output=True, timeout=30, check=False)
    assert proc.returncode == rc, proc.stderr
    if rc != 70:
        want = b"a dump" if rc == 0 else b"half a dump"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(proc.stdout) == want


def test_every_command_that_connects_over_ssh_takes_accept_new_host_keys() -> None:
    """One option, one policy (hosts.ssh): every command that opens an SSH connection."""
    import click

    connects = [("install",), ("preflight",), ("trust",), ("upgrade", "apply"),
                ("upgrade", "status"), *[("backup", c) for c in
                                         ("create", "verify", "restore", "push", "pull")]]
    for path in connects:
        command: Any = cli
        for word in path:
            assert isinstance(command, click.Group)
            command = command.get_command(click.Context(command), word)
        names = {p.name for p in command.params}
        assert "accept_new_host_keys" in names, path


def _busy_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bounds: str
                ) -> tuple[Site, list[tuple[str, bool]], Any]:
    """Three SSH hosts whose job is the real per-host job lock (the one a backup takes) and
    a record of each try: (host, first try of this run?)."""
    from harbor_ops.core.lock import LOCK_ENV, job_lock

    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "harborctl.lock"))
    monkeypatch.setenv(jobs.BUSY_RETRY_ENV, bounds)
    site = _fleet(tmp_path, 3, extra="  parallel: 2")
    tries: list[tuple[str, bool]] = []

    def one(_site: Site, entry: Any, first: bool = True) -> dict[str, Any]:
        tries.append((entry.name, first))
        with job_lock(joblock.host_lock(entry), job="backup create"):
            return {"backup_size_bytes": 1}

    return site, tries, one


def test_the_agent_tries_a_busy_host_again_after_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """h2's lock is held (an upgrade) during the first pass: h1 and h3 are backed up, then
    h2 is tried again and succeeds; its wait never held a place h3 needed."""
    from harbor_ops.core.lock import job_lock

    site, tries, one = _busy_fleet(tmp_path, monkeypatch, "0.1,60")
    upgrade = job_lock(joblock.host_lock(site.hosts[1]), job="upgrade apply")
    upgrade.__enter__()

    def freeing(s: Site, entry: Any, first: bool = True) -> dict[str, Any]:
        # The upgrade ends when the first pass is over, as the retry begins: released any
        # earlier (say when h3 ends), a slow thread could make h2's first try after it.
        if not first:
            upgrade.__exit__(None, None, None)
        return one(s, entry, first)

    runner = agent.Agent(site, jobs={"backup": lambda s: jobs._fleet(s, "backup", freeing)})
    rec = runner.run_job("backup")
    assert rec.result == "ok", rec.error
    assert sorted(tries[:3]) == [("h1", True), ("h2", True), ("h3", True)]
    assert tries[3:] == [("h2", False)]  # after every first try, and only h2
    status = json.loads(site.agent.status_file.read_text())
    assert status["hosts"]["h2"]["backup"]["result"] == "ok"
    assert status["hosts"]["h2"]["backup"]["detail"]["busy_tries"] == 2


def test_a_host_busy_beyond_the_bounds_fails_naming_the_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harbor_ops.core.lock import job_lock

    site, tries, one = _busy_fleet(tmp_path, monkeypatch, "0.05,60")
    with job_lock(joblock.host_lock(site.hosts[1]), job="upgrade apply"):
        rec = agent.Agent(site, jobs={"backup": lambda s: jobs._fleet(s, "backup", one)}
                          ).run_job("backup")
    assert rec.result == "failed"
    assert [h for h, _ in tries].count("h2") == jobs.BUSY_ATTEMPTS  # the count bound
    status = json.loads(site.agent.status_file.read_text())
    error = status["hosts"]["h2"]["backup"]["error"]
    assert "job=upgrade apply" in error and f"after {jobs.BUSY_ATTEMPTS} tries" in error
    assert {h: status["hosts"][h]["backup"]["result"] for h in ("h1", "h3")} == {
        "h1": "ok", "h3": "ok"}
    # the time bound: no try begins later than the window after the job began
    tries.clear()
    monkeypatch.setenv(jobs.BUSY_RETRY_ENV, "0.05,0")
    with job_lock(joblock.host_lock(site.hosts[1]), job="upgrade apply"):
        rec = agent.Agent(site, jobs={"backup": lambda s: jobs._fleet(s, "backup", one)}
                          ).run_job("backup")
    assert rec.result == "failed" and "after 1 try over" in (rec.error or "")
    assert [h for h, _ in tries].count("h2") == 1
