"""`harborctl preflight` and `harborctl install`."""

from __future__ import annotations

from pathlib import Path

import click

from harbor_ops.cli.options import (
    accept_new_host_keys_option,
    config_option,
    emit,
    inventory_option,
    output_option,
)

_BUNDLE_HELP = "The offline installer, harbor-offline-installer-vX.Y.Z.tgz."
_SSH_CONFIG_HELP = "An ssh client config for the hosts (e.g. a test bed's); default: ~/.ssh/config."


@click.command("preflight")
@config_option
@click.option("--bundle", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=_BUNDLE_HELP)
@click.option("--skip", "skip", multiple=True, metavar="CHECK",
              help="Skip a named check (repeatable).")
@inventory_option
@click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help=_SSH_CONFIG_HELP)
@accept_new_host_keys_option
@output_option
@click.pass_context
def preflight_cmd(ctx: click.Context, config: Path, bundle: Path | None, skip: tuple[str, ...],
                  inventory: Path | None, ssh_config: Path | None, accept_new_host_keys: bool,
                  output: str) -> None:
    """Run named, skippable checks on the target host(s); exit 4 when one fails.

    Nothing is changed anywhere: this is the first step of `harborctl install`.
    """
    from harbor_ops.install.run import failed_checks
    from harbor_ops.preflight.run import run_preflight
    from harbor_ops.site.load import load_site

    site = load_site(config)
    report = run_preflight(site, bundle=bundle, skip=list(skip), inventory=inventory,
                           ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys)
    emit(report, output)
    if failed_checks(report):
        ctx.exit(4)


@click.command("install")
@click.option("--bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help=_BUNDLE_HELP)
@config_option
@click.option("--harbor-version", default=None,
              help="Install this release instead of the site file's harbor.version "
                   "(one stop of an upgrade plan).")
@inventory_option
@click.option("--check", "--dry-run", "check", is_flag=True,
              help="Show what would change on each host (Ansible check mode with diff); "
                   "change nothing.")
@click.option("--skip-check", "skip_checks", multiple=True, metavar="CHECK",
              help="Skip a named preflight check (repeatable).")
@click.option("--forks", type=click.IntRange(1, 100), default=None,
              help="Hosts installed in parallel (default: all, at most 20).")
@click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help=_SSH_CONFIG_HELP)
@accept_new_host_keys_option
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the full Ansible log (default: ~/.local/state/harborctl/logs).")
@output_option
def install_cmd(bundle: Path, config: Path, harbor_version: str | None,
                inventory: Path | None, check: bool,
                skip_checks: tuple[str, ...], forks: int | None, ssh_config: Path | None,
                accept_new_host_keys: bool, log_dir: Path | None, output: str) -> None:
    """Install Harbor from an offline bundle on the site's hosts, through Ansible.

    Preflight runs first and refuses bad input before any host is touched. Progress
    goes to stderr, one line per step and host; a second run changes nothing.
    """
    from harbor_ops.install.run import default_log_dir, install
    from harbor_ops.site.load import load_site

    site = load_site(config, version=harbor_version)
    for warning in site.warnings:
        click.echo(f"warning: {warning}", err=True)
    emit(install(site, bundle=bundle, inventory=inventory, check=check,
                 skip_checks=skip_checks, forks=forks, ssh_config=ssh_config,
                 accept_new_host_keys=accept_new_host_keys,
                 log_dir=log_dir or default_log_dir(), schedule_root=Path("/"),
                 progress=lambda line: click.echo(line, err=True)), output)
