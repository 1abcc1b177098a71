"""`harborctl doctor`, `harborctl trust` and `harborctl support-bundle`."""

from __future__ import annotations

from pathlib import Path

import click

from harbor_ops.cli.options import (
    accept_new_host_keys_option,
    config_option,
    dry_run_option,
    emit,
    output_option,
    ssh_config_option,
)


@click.command("doctor")
@config_option
@click.option("--url", default=None, help="The registry URL clients use (default: the site's "
              "external_url).")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Judge TLS trust with this CA file (as a client given it).")
@click.option("--username", default=None, help="Log in as this user (token, push probe).")
@click.option("--password-env", default=None, metavar="VAR",
              help="Read the password from this environment variable.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Read the password from this file.")
@click.option("--push-probe/--no-push-probe", default=True, show_default=True,
              help="With credentials: push, pull back and delete a scratch image.")
@click.option("--image", default=None, metavar="REPO:TAG",
              help="Also check that every blob of this image is in the storage.")
@click.option("--probe-repository", default="library/harborctl-doctor", show_default=True,
              help="Scratch repository of the push probe (the user needs push rights).")
@click.option("--resolve", multiple=True, metavar="NAME:ADDRESS",
              help="Connect to ADDRESS for NAME (keeps NAME for TLS and Host); repeatable.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds for each network step.")
@click.option("--docker-certs-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, hidden=True)
@output_option
def doctor_cmd(config: Path, url: str | None, ca: Path | None, username: str | None,
               password_env: str | None, password_file: Path | None, push_probe: bool,
               image: str | None, probe_repository: str, resolve: tuple[str, ...],
               timeout: float, docker_certs_dir: Path | None, output: str) -> None:
    """Check a registry from this client's side; each problem with evidence and its fix.

    Exit 0 when nothing worse than a warning was found, 13 on any error finding.
    """
    from harbor_ops.core.errors import DoctorProblems
    from harbor_ops.doctor.run import doctor

    site = None
    if url is None:  # the site file only when it names the URL: --url alone loads less
        from harbor_ops.site.load import load_site

        site = load_site(config)
    report = doctor(site=site, url=url, ca=ca, username=username, password_env=password_env,
                    password_file=password_file, push_probe=push_probe, image=image,
                    probe_repository=probe_repository, resolve=resolve, timeout=timeout,
                    docker_certs_dir=docker_certs_dir)
    emit(report, output)
    if report.has_errors:
        ids = sorted({f.id for f in report.findings if f.severity == "error"})
        raise DoctorProblems(", ".join(ids))


@click.command("support-bundle")
@config_option
@click.option("--output-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The archive to write (default: ./harbor-support-<host>-<time>.tar.gz).")
@click.option("--log-lines", type=int, default=200, show_default=True,
              help="Last lines of each Harbor log to include.")
@output_option
def support_bundle_cmd(config: Path, output_file: Path | None, log_lines: int,
                       output: str) -> None:
    """Write one archive (mode 0600) for a maintainer: versions, configs, container state,
    log tails, health, disk use, agent status, last doctor result; no secret in it.
    """
    from harbor_ops.doctor.bundle import support_bundle
    from harbor_ops.site.load import load_site

    emit(support_bundle(load_site(config), output_file=output_file, log_lines=log_lines),
         output)


@click.command("trust")
@config_option
@click.option("--url", default=None, help="The registry URL clients use (default: the site's "
              "external_url); names the host:port folder.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="The CA file (default: the last certificate of the site's "
              "chain, else Harbor's /api/v2.0/systeminfo/getcert).")
@click.option("--clients", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Ansible inventory of the client hosts (default: the site's "
              "hosts:).")
@click.option("--os-store", is_flag=True, help="Also add the CA to each host's OS trust store.")
@ssh_config_option
@accept_new_host_keys_option
@dry_run_option
@output_option
def trust_cmd(config: Path, url: str | None, ca: Path | None, clients: Path | None,
              os_store: bool, ssh_config: Path | None, accept_new_host_keys: bool,
              dry_run: bool, output: str) -> None:
    """Put the registry's CA where docker, containerd and podman/skopeo look for it, on
    every client host, through Ansible. A second run changes nothing.
    """
    from harbor_ops.doctor.trust import trust
    from harbor_ops.site.load import load_site

    # the site is optional when --url and --clients say it all
    site = load_site(config) if config.exists() or url is None or clients is None else None
    emit(trust(site, url=url, ca=ca, clients=clients, ssh_config=ssh_config,
               accept_new_host_keys=accept_new_host_keys, dry_run=dry_run, os_store=os_store,
               progress=lambda line: click.echo(line, err=True)), output)
