"""Options shared by every command, defined once, and the one result printer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SITE = "harborctl.yml"


def config_option(f: F) -> F:
    return click.option(
        "-c", "--config", "config", type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_SITE, show_default=True, envvar="HARBORCTL_CONFIG",
        help="The site file.")(f)


def output_option(f: F) -> F:
    return click.option(
        "-o", "--output", "output", type=click.Choice(["text", "json"]), default="text",
        show_default=True, help="Output format.")(f)


def dry_run_option(f: F) -> F:
    return click.option("--dry-run", is_flag=True,
                        help="Show what would change; change nothing.")(f)


def inventory_option(f: F) -> F:
    return click.option(
        "-i", "--inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None, help="An Ansible inventory (default: the site file's hosts:).")(f)


def accept_new_host_keys_option(f: F) -> F:
    return click.option(
        "--accept-new-host-keys", is_flag=True,
        help="Accept a host key seen for the first time and record it in known_hosts "
             "(a changed key is always refused).")(f)


def emit(result: Any, output: str, text: Callable[[Any], str] | None = None) -> None:
    """Print a core result: JSON (``to_dict()`` or the object itself) or its text form."""
    if output == "json":
        data = result.to_dict() if hasattr(result, "to_dict") else result
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        click.echo(text(result) if text else str(result))


def hosts_option(f: F) -> F:
    """``--host NAME`` / ``--all``: which hosts of the site's inventory a command acts on."""
    f = click.option("--all", "all_hosts", is_flag=True,
                     help="Every host of the site's inventory (a report per host).")(f)
    return click.option("--host", "host", default=None, metavar="NAME",
                        help="One host of the site's inventory (default: the only one).")(f)


def ssh_config_option(f: F) -> F:
    return click.option(
        "--ssh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None, envvar="HARBORCTL_SSH_CONFIG",
        help="An ssh client config for the hosts; default: ~/.ssh/config.")(f)
