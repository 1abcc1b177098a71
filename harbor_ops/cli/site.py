"""`harborctl init` and `harborctl render`."""

from __future__ import annotations

from pathlib import Path

import click

from harbor_ops.cli.options import config_option, dry_run_option, emit, output_option


@click.command("init")
@config_option
@click.option("--harbor-version", default=None, help="Harbor release (default: the newest known).")
@click.option("--hostname", default=None, help="The name clients use to reach Harbor.")
@click.option("--force", is_flag=True, help="Replace an existing site file.")
@dry_run_option
@output_option
def init_cmd(config: Path, harbor_version: str | None, hostname: str | None, force: bool,
             dry_run: bool, output: str) -> None:
    """Write a commented site file with safe defaults.

    Secrets are never taken from arguments: the file names environment variables
    (or files) that hold them.
    """
    from harbor_ops.site.init import init_site

    emit(init_site(path=config, version=harbor_version, hostname=hostname, force=force,
                   dry_run=dry_run), output)


@click.command("render")
@config_option
@click.option("--harbor-version", default=None,
              help="Render for this Harbor release (default: the site file's harbor.version).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write harbor.yml and the host files into.")
@dry_run_option
@output_option
def render_cmd(config: Path, harbor_version: str | None, output_dir: Path, dry_run: bool,
               output: str) -> None:
    """Render harbor.yml, logrotate, Nginx front, systemd units and cron for one release.

    Every file is validated before it replaces the old one; the summary shows what
    changed (secret values masked).
    """
    from harbor_ops.render.engine import render_site
    from harbor_ops.site.load import load_site

    site = load_site(config, version=harbor_version)
    for warning in site.warnings:
        click.echo(f"warning: {warning}", err=True)
    emit(render_site(site, output_dir=output_dir, dry_run=dry_run), output)
