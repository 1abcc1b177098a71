"""The `harborctl` command group: shared options, error handling, sub-commands.

Only this module turns a :class:`~harbor_ops.core.errors.HarborctlError` into a one-line
message and its exit code. Sub-command modules are imported lazily so that
``harborctl --help`` stays fast (no jinja2, yaml, ansible or paramiko at start-up).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

# command name -> (module, attribute, short help); loaded on first use.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("harbor_ops.cli.site", "init_cmd", "Write a commented site file with safe defaults."),
    "render": ("harbor_ops.cli.site", "render_cmd",
               "Render harbor.yml and the host files for one Harbor version."),
    "upgrade": ("harbor_ops.cli.upgrade", "upgrade_group",
                "Plan (and apply) upgrades along the only safe path."),
    "preflight": ("harbor_ops.cli.install", "preflight_cmd",
                  "Run named, skippable checks on the target host(s)."),
    "install": ("harbor_ops.cli.install", "install_cmd",
                "Install Harbor from an offline bundle through Ansible."),
    "backup": ("harbor_ops.cli.backup", "backup_group",
               "Create, list, verify, restore and prune backups."),
    "agent": ("harbor_ops.cli.agent", "agent_group",
              "The scheduled agent: nightly backup, drills, health, metrics."),
    "doctor": ("harbor_ops.cli.doctor", "doctor_cmd",
               "Check a registry from the client's side: each problem and its fix."),
    "support-bundle": ("harbor_ops.cli.doctor", "support_bundle_cmd",
                       "Write one archive for a maintainer, with every secret redacted."),
    "trust": ("harbor_ops.cli.doctor", "trust_cmd",
              "Put the registry's CA where every client runtime looks, on each client host."),
    "versions": ("harbor_ops.cli.upgrade", "versions_cmd",
                 "List the Harbor releases harborctl knows."),
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, spec in _COMMANDS.items() if _available(spec))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None or not _available(spec):
            return None
        module = importlib.import_module(spec[0])
        cmd: click.Command = getattr(module, spec[1])
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, _COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(spec: tuple[str, str, str]) -> bool:
    return importlib.util.find_spec(spec[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harborctl", prog_name="harborctl")
@click.option("--debug", is_flag=True, help="Show tracebacks for unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """harborctl: install, configure, check, back up Harbor and plan its upgrades.

    Exit codes: 0 ok, 1 unexpected error, 2 invalid input, 3 refused upgrade,
    4 preflight failed, 5 render failed, 6 remote failure, 7 busy (lock held),
    8 backup failed, 9 unhealthy, 10 aborted, 11 upgrade rolled back,
    12 rollback failed (a person is needed), 13 doctor found an error.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _warnings_to_stderr() -> None:
    """Core modules report what the user must know (an accepted host key) as warnings of
    the ``harborctl`` logger; they reach stderr as ``harborctl: warning: ...``."""
    import logging

    logger = logging.getLogger("harborctl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("harborctl: warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: run the group and map errors to exit codes."""
    from harbor_ops.core.errors import HarborctlError

    _warnings_to_stderr()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="harborctl", standalone_mode=False)
        if isinstance(rv, int) and rv != 0:  # ctx.exit(N) returns N without standalone mode
            sys.exit(rv)
        return rv
    except HarborctlError as exc:
        if debug:
            raise
        click.echo(f"harborctl: {exc.label}: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        stop = exc.__cause__  # click turns KeyboardInterrupt into Abort
        if isinstance(stop, KeyboardInterrupt) and hasattr(stop, "exit_code"):
            click.echo(f"harborctl: {stop}", err=True)  # a signal (core.signals)
            sys.exit(stop.exit_code)
        click.echo("harborctl: aborted", err=True)
        sys.exit(10)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("harborctl: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that catches everything
        if debug:
            raise
        click.echo(f"harborctl: unexpected error: {type(exc).__name__}: {exc} "
                   "(run with --debug for a traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
