"""`harborctl agent run|once|status`."""

from __future__ import annotations

from pathlib import Path

import click

from harbor_ops.cli.options import config_option, emit, output_option


@click.group("agent")
def agent_group() -> None:
    """The scheduled agent: nightly backup, weekly restore drill, health, certificates,
    disk and log growth, upgrade-matrix check; writes a status file and metrics."""


@agent_group.command("run")
@config_option
@click.option("--max-seconds", type=float, default=None, hidden=True,
              help="Stop after this long (for tests).")
def run_cmd(config: Path, max_seconds: float | None) -> None:
    """Run in the foreground until SIGTERM (one instance at a time)."""
    from harbor_ops.agent.loop import run_forever
    from harbor_ops.site.load import load_site

    run_forever(load_site(config), max_seconds=max_seconds,
                log=lambda line: click.echo(line, err=True))


@agent_group.command("once")
@config_option
@output_option
def once_cmd(config: Path, output: str) -> None:
    """One timer tick: run every job that is due, then exit."""
    from harbor_ops.agent.loop import run_once
    from harbor_ops.site.load import load_site

    emit(run_once(load_site(config)), output, text=_status_text)


@agent_group.command("status")
@config_option
@output_option
def status_cmd(config: Path, output: str) -> None:
    """Show the last run, result and next run of each job."""
    from harbor_ops.agent.loop import load_host_status, load_status
    from harbor_ops.site.load import load_site

    site = load_site(config)
    records = load_status(site.agent.status_file)
    hosts = load_host_status(site.agent.status_file)
    emit({"jobs": {n: vars(r) for n, r in records.items()},
          "hosts": {h: {n: vars(r) for n, r in recs.items()} for h, recs in hosts.items()}},
         output, text=_status_text)


def _status_text(doc: dict) -> str:  # type: ignore[type-arg]
    jobs = doc.get("jobs", {})
    if not jobs:
        return "no job has run yet"
    rows = [f"{'job':<15} {'result':<7} {'last run':<26} {'next run':<26} error"]
    for name, rec in sorted(jobs.items()):
        rows.append(f"{name:<15} {rec.get('result', ''):<7} {rec.get('last_run') or '-':<26} "
                    f"{rec.get('next_run') or '-':<26} {rec.get('error') or ''}")
    for host, recs in sorted((doc.get("hosts") or {}).items()):
        for name, rec in sorted(recs.items()):
            rows.append(f"{host + ':' + name:<15} {rec.get('result', ''):<7} "
                        f"{rec.get('last_run') or '-':<26} {rec.get('next_run') or '-':<26} "
                        f"{rec.get('error') or ''}")
    return "\n".join(rows)
