"""`harborctl backup ...`: thin commands over :mod:`harbor_ops.backup`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harbor_ops.cli.options import (
    accept_new_host_keys_option,
    config_option,
    dry_run_option,
    emit,
    hosts_option,
    output_option,
    ssh_config_option,
)


def _progress(output: str) -> Any:
    if output == "json":
        return None
    return lambda msg: click.echo(f"... {msg}", err=True)


def _emit(result: Any, output: str, one: Any) -> None:
    """One host's result as before; with --all a report per host, then exit 6 if any failed."""
    from harbor_ops.backup.fleet import FleetResult

    if not isinstance(result, FleetResult):
        emit(result, output, one)
        return
    emit(result, output, lambda r: "\n".join(
        f"{o.host}: " + (one(o.result).replace("\n", "\n  ") if o.ok else f"FAILED: {o.error}")
        for o in r.outcomes))
    result.raise_for_failures()


@click.group("backup")
def backup_group() -> None:
    """Create, list, verify, restore and prune backups of every Harbor host.

    Backups are taken from the machine harborctl runs on: a local host directly, an SSH
    host of the site's inventory over SSH (its backups in <backup.dir>/<host>/).
    """


@backup_group.command("create")
@config_option
@hosts_option
@ssh_config_option
@accept_new_host_keys_option
@dry_run_option
@output_option
def create_cmd(config: Path, host: str | None, all_hosts: bool, ssh_config: Path | None,
               accept_new_host_keys: bool, dry_run: bool, output: str) -> None:
    """Dump Harbor's database and save its secret key, harbor.yml and certificates.

    When space is short, old backups are pruned by the keep policy first (never the
    newest verified one); with backup.remote set, the backup is copied off-host and
    checked there.
    """
    from harbor_ops.backup.fleet import create_backups
    from harbor_ops.site.load import load_site

    result = create_backups(load_site(config), host=host, all_hosts=all_hosts,
                            ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
                            dry_run=dry_run, progress=_progress(output))
    _emit(result, output, lambda r: (
        f"would write {r.path} ({r.notes[0]})" if r.dry_run else
        f"{r.path}  {r.size} bytes  schema {r.manifest.schema_version}  "
        f"rows {sum(r.manifest.row_counts.values())}" + _ways(r.db_access)))


def _ways(db_access: dict[str, str]) -> str:
    """How the tools reached an SSH host's harbor-db, one line per way ("" for none)."""
    by_way: dict[str, list[str]] = {}
    for tool, way in sorted(db_access.items()):
        by_way.setdefault(way, []).append(tool)
    return "".join(f"\n  {', '.join(tools)} ran in harbor-db through {way}"
                   for way, tools in by_way.items())


@backup_group.command("list")
@config_option
@hosts_option
@output_option
def list_cmd(config: Path, host: str | None, all_hosts: bool, output: str) -> None:
    """Complete backups, newest first, with their verification state."""
    from harbor_ops.backup.fleet import list_on_host, on_hosts
    from harbor_ops.site.load import load_site

    site = load_site(config)
    result = on_hosts(site, "backup list", lambda e: list_on_host(site, e), host=host,
                      all_hosts=all_hosts)
    _emit(result, output, _table)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no backups"
    lines = [f"{'NAME':<48} {'SIZE':>12} {'HARBOR':<8} {'PG':<4} VERIFIED"]
    for r in rows:
        state = {True: "yes", False: "FAILED", None: "no"}[r["verified"]]
        if r["problem"]:
            state = f"DAMAGED ({r['problem']})"
        lines.append(f"{r['name']:<48} {r['size']:>12} {r['harbor_version'] or '-':<8} "
                     f"{r['pg_major'] or '-':<4} {state}")
    return "\n".join(lines)


@backup_group.command("verify")
@click.argument("name", required=False)
@click.option("--no-drill", is_flag=True, help="Check the checksums only, skip the restore.")
@config_option
@hosts_option
@ssh_config_option
@accept_new_host_keys_option
@output_option
def verify_cmd(name: str | None, no_drill: bool, config: Path, host: str | None,
               all_hosts: bool, ssh_config: Path | None, accept_new_host_keys: bool,
               output: str) -> None:
    """Check checksums, then restore into a scratch PostgreSQL (default: newest backup)."""
    from harbor_ops.backup.fleet import on_hosts, verify_on_host
    from harbor_ops.site.load import load_site

    site = load_site(config)
    result = on_hosts(site, "backup verify", lambda e: verify_on_host(
        site, e, name=name, restore_drill=not no_drill, ssh_config=ssh_config,
        accept_new_host_keys=accept_new_host_keys, progress=_progress(output)),
        host=host, all_hosts=all_hosts, name=name, parallel=site.backup.parallel)
    _emit(result, output, lambda r: f"{r.name}: verified ({r.duration_seconds} s, "
         f"rows {sum(r.row_counts.values())})"
         + (f"\n  restore drill in {r.drilled_in}" if r.drilled_in else ""))


@backup_group.command("restore")
@click.argument("name", required=False)
@click.option("--latest", is_flag=True, help="The newest verified backup.")
@click.option("--yes", is_flag=True, help="Do not ask for a typed confirmation.")
@click.option("--force", is_flag=True, help="Restore a backup that failed its checks.")
@click.option("--force-version", is_flag=True,
              help="Restore a backup whose PostgreSQL major or Harbor version does not fit.")
@config_option
@click.option("--host", "host", default=None, metavar="NAME",
              help="The host of the site's inventory to restore (default: the only one).")
@ssh_config_option
@accept_new_host_keys_option
@dry_run_option
@output_option
def restore_cmd(name: str | None, latest: bool, yes: bool, force: bool, force_version: bool,
                config: Path, host: str | None, ssh_config: Path | None,
                accept_new_host_keys: bool, dry_run: bool, output: str) -> None:
    """Stop Harbor, restore database, secret key, harbor.yml and certificates, start it."""
    from harbor_ops.backup.fleet import restore_choice, restore_on_host
    from harbor_ops.core.errors import Aborted
    from harbor_ops.site.load import load_site

    site = load_site(config)
    entry, path = restore_choice(site, host=host, name=name, latest=latest)
    if not (yes or dry_run):
        typed = click.prompt(f"This replaces Harbor's database and secret key on {entry.name} "
                             f"with {path.name}.\nType the backup name to continue",
                             default="", show_default=False)
        if typed.strip() != path.name:
            raise Aborted("restore not confirmed; nothing was changed")
    result = restore_on_host(site, entry, path, ssh_config=ssh_config,
                             accept_new_host_keys=accept_new_host_keys, force=force,
                             force_version=force_version, dry_run=dry_run,
                             progress=_progress(output))
    emit(result, output, lambda r: "\n".join(
        [f"{'would restore' if r.dry_run else 'restored'} {r.name} into {r.target}",
         *[f"  {f}" for f in r.files], *[f"  warning: {w}" for w in r.warnings]])
        + _ways(r.db_access))


@backup_group.command("prune")
@config_option
@hosts_option
@dry_run_option
@output_option
def prune_cmd(config: Path, host: str | None, all_hosts: bool, dry_run: bool,
              output: str) -> None:
    """Delete backups the keep policy does not keep; never the newest verified one."""
    from harbor_ops.backup.fleet import on_hosts, prune_on_host
    from harbor_ops.site.load import load_site

    site = load_site(config)
    result = on_hosts(site, "backup prune", lambda e: prune_on_host(site, e, dry_run=dry_run),
                      host=host, all_hosts=all_hosts)
    verb = "would delete" if dry_run else "deleted"
    _emit(result, output, lambda r: "\n".join(
        [*[f"{verb} {n}" for n in r.deleted], *[f"kept {n} ({why})" for n, why in r.kept.items()]]
        ) or "nothing to prune")


@backup_group.command("push")
@click.argument("name", required=False)
@config_option
@hosts_option
@accept_new_host_keys_option
@output_option
def push_cmd(name: str | None, config: Path, host: str | None, all_hosts: bool,
             accept_new_host_keys: bool, output: str) -> None:
    """Copy a backup (default: the newest) to backup.remote, checked by SHA-256 there."""
    from harbor_ops.backup.fleet import on_hosts, push_on_host
    from harbor_ops.site.load import load_site

    site = load_site(config)
    result = on_hosts(site, "backup push", lambda e: push_on_host(
        site, e, name=name, accept_new_host_keys=accept_new_host_keys),
                      host=host, all_hosts=all_hosts, name=name)
    _emit(result, output, lambda r: "\n".join(
        [f"{r.name} {'already at' if r.already_there else 'copied to'} {r.destination} "
         f"({r.size} bytes, sha256 {r.sha256[:12]}..., {r.seconds} s)",
         *[f"pruned there: {n}" for n in r.pruned]]))


@backup_group.command("pull")
@click.argument("name", required=False)
@config_option
@accept_new_host_keys_option
@output_option
def pull_cmd(name: str | None, config: Path, accept_new_host_keys: bool, output: str) -> None:
    """Bring a copy back from backup.remote (default: this host's newest), for a restore.

    An encrypted (.age) copy is decrypted with backup.encryption.identity_file as it
    streams down, and kept only once its manifest and every checksum are proven.
    """
    from harbor_ops.backup.site_ops import pull_for_site
    from harbor_ops.site.load import load_site

    result = pull_for_site(load_site(config), name, accept_new_host_keys=accept_new_host_keys)
    emit(result, output, lambda r: f"{r.path}  {r.size} bytes from {r.source}"
         + (" (decrypted)" if r.decrypted else ""))
