"""`harborctl upgrade plan` (read-only, kubeadm-style) and `harborctl versions`.

The commands only parse options, call the planner and print; the text layouts below are
presentation, the decisions are all in :mod:`harbor_ops.releases.planner`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from harbor_ops.cli.options import (
    accept_new_host_keys_option,
    config_option,
    dry_run_option,
    emit,
    output_option,
    ssh_config_option,
)
from harbor_ops.core.errors import UsageError
from harbor_ops.releases import planner
from harbor_ops.releases.versions import LAYOUTS
from harbor_ops.upgrade.reconnect import Bounds
from harbor_ops.upgrade.steps import HOP_STEPS

if TYPE_CHECKING:
    from harbor_ops.upgrade.apply import ApplyResult, HostOutcome, Options

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ByteSize(click.ParamType[int]):
    """A size such as ``12G``, ``512MiB`` or ``1048576`` (bytes), in powers of 1024."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size; use bytes or a number with K, M, G or T "
                      "(e.g. 12G)", param, ctx)
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@click.group("upgrade")
def upgrade_group() -> None:
    """Plan upgrades along the only safe path, apply them with rollback, show where they are."""


@upgrade_group.command("plan")
@click.option("--from", "current", metavar="X.Y.Z",
              help="The installed Harbor (default: harbor.version of the site file).")
@click.option("--to", "target", metavar="X.Y.Z", required=True, help="The Harbor to reach.")
@click.option("--data-layout", type=click.Choice(LAYOUTS), default=None,
              help="What /data/database holds (PG_VERSION at its root = 9.6, else the pgNN "
                   "directory); default: what --from writes.")
@click.option("--db-size", "db_size", type=ByteSize(), default=None,
              help="Size of /data/database, to compute the free disk each hop needs.")
@config_option
@output_option
def plan_cmd(current: str | None, target: str, data_layout: str | None, db_size: int | None,
             config: Path, output: str) -> None:
    """Show every stop on the safe path to --to, and what each hop changes. Changes nothing."""
    if current is None:
        current = _site_version(config)
    result = planner.plan(current=current, target=target, data_layout=data_layout,
                          db_size_bytes=db_size)
    emit(result, output, format_plan)


def _site_version(config: Path) -> str:
    """The installed version as the site file states it (only when --from is absent)."""
    try:
        from harbor_ops.site.load import load_site
    except ImportError:  # pragma: no cover - config.py ships with the package
        raise UsageError("--from is required (no site file support in this build)") from None
    if not config.exists():
        raise UsageError(f"--from is required: no site file {config} to read harbor.version "
                         "from", hint="pass --from X.Y.Z or -c SITE")
    return str(load_site(config).release.version)


def _options(bundle_dir: Path | None, ssh_config: Path | None, log_dir: Path | None,
             backup_dir: Path | None, health_retries: int = 60,
             accept_new_host_keys: bool = False, reconnect: Bounds | None = None) -> Options:
    from harbor_ops.install.run import default_log_dir
    from harbor_ops.upgrade.apply import Options

    logs = log_dir or default_log_dir()
    return Options(bundle_dir=bundle_dir, ssh_config=ssh_config, log_dir=logs,
                   backup_dir=backup_dir or logs.parent / "upgrade-backups",
                   health_retries=health_retries, accept_new_host_keys=accept_new_host_keys,
                   reconnect=reconnect or Bounds())


_F = TypeVar("_F", bound=Callable[..., Any])


def _host_options(f: _F) -> _F:
    f = click.option("--host", "host", metavar="NAME", default=None,
                     help="Only this host of the site file (default: all of them).")(f)
    return accept_new_host_keys_option(ssh_config_option(f))


@upgrade_group.command("apply")
@click.option("--to", "to", metavar="X.Y.Z", default=None,
              help="Must equal harbor.version of the site file (the target).")
@config_option
@_host_options
@click.option("--bundle-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with harbor-offline-installer-vX.Y.Z.tgz for every stop.")
@click.option("--backup-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the per-hop verified backups go on this machine "
                   "(default: beside the logs, upgrade-backups/<host>).")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the full Ansible logs (default: ~/.local/state/harborctl/logs).")
@click.option("--health-retries", type=click.IntRange(1, 720), default=60, show_default=True,
              help="Health-gate attempts, 5 s apart, after each start.")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Hosts upgraded at the same time; a failure on one starts no new host.")
@dry_run_option
@click.option("--yes", is_flag=True, help="Do not ask before the first downtime.")
@output_option
def apply_cmd(to: str | None, config: Path, host: str | None, ssh_config: Path | None,
              accept_new_host_keys: bool, bundle_dir: Path | None, backup_dir: Path | None,
              log_dir: Path | None, health_retries: int, parallel: int, dry_run: bool, yes: bool,
              output: str) -> None:
    """Upgrade every host (or --host) to harbor.version of the site file, hop by hop.

    Refuses before anything changes; per hop: verified backup, images loaded while the
    old release serves, a short downtime window, a health gate, and an automatic rollback
    of version AND data on failure. Exit 11: a hop failed and the host was rolled back;
    exit 12: the rollback failed (a person is needed); exit 15: a host stayed unreachable
    mid-hop (run again once it answers). Safe to run again after a crash.
    """
    from harbor_ops.upgrade.apply import apply
    from harbor_ops.upgrade.learning import load_site_learning
    from harbor_ops.upgrade.reconnect import bounds_from_env

    opts = _options(bundle_dir, ssh_config, log_dir, backup_dir, health_retries,
                    accept_new_host_keys, reconnect=bounds_from_env())
    site, learned = load_site_learning(config, bundle_dir)
    if not dry_run and not yes:
        plan = apply(site, to=to, host=host, opts=opts, dry_run=True, learned=learned)
        if plan.error is not None:
            emit(plan, output, format_apply)
            raise plan.error
        if output == "text":
            click.echo(format_apply(plan), err=True)
        if not [o for o in plan.hosts if o.outcome != "up_to_date"]:
            emit(plan, output, format_apply)
            return
        click.confirm("Harbor will be stopped for each hop; continue?", abort=True, err=True)
    result = apply(site, to=to, host=host, opts=opts, dry_run=dry_run, parallel=parallel,
                   learned=learned, progress=lambda line: click.echo(line, err=True))
    emit(result, output, format_apply)
    if result.error is not None:
        raise result.error


@upgrade_group.command("status")
@config_option
@_host_options
@click.option("--bundle-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the bundles are, to learn a release newer than harborctl knows.")
@output_option
def status_cmd(config: Path, host: str | None, ssh_config: Path | None,
               accept_new_host_keys: bool, bundle_dir: Path | None, output: str) -> None:
    """Where each host stands: installed release, data layout, the last run's hop and step."""
    from harbor_ops.upgrade.apply import status
    from harbor_ops.upgrade.learning import load_site_learning

    site, learned = load_site_learning(config, bundle_dir)
    opts = _options(bundle_dir, ssh_config, None, None,
                    accept_new_host_keys=accept_new_host_keys)
    emit(status(site, host=host, opts=opts, learned=learned), output, format_apply)


@click.command("versions")
@output_option
def versions_cmd(output: str) -> None:
    """List the Harbor releases harborctl knows, with data layout and support status."""
    emit(planner.overview(), output, format_overview)


# --------------------------------------------------------------------------- text forms


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def _support(plan: planner.Plan, minor: str) -> str:
    if minor in plan.supported_minors:
        return "supported"
    return f"OUT of support (supported: {', '.join(plan.supported_minors)})"


def format_plan(plan: planner.Plan) -> str:
    cur, tgt = plan.current, plan.target
    lines = [
        "Harbor upgrade plan (read-only)",
        "",
        f"  current      {cur}   {_support(plan, cur.minor)}",
        f"  data layout  {plan.data_layout}: {planner.describe_layout(plan.data_layout)}",
        f"  target       {tgt}   {_support(plan, tgt.minor)}",
    ]
    if not plan.hops:
        lines += ["", f"Already at target: Harbor {tgt} is installed; nothing to do."]
        return "\n".join(lines)
    path = " -> ".join(str(r) for r in (cur, *plan.stops))
    lines += [f"  stops        {', '.join(str(s) for s in plan.stops)}   ({len(plan.hops)} "
              f"hop{'s' if len(plan.hops) > 1 else ''})",
              f"  path         {path}"]
    if plan.missing_bundles:
        lines.append(f"  bundles      missing for {', '.join(plan.missing_bundles)}")
    for hop in plan.hops:
        lines += ["", f"Hop {hop.number}/{len(plan.hops)}: {hop.source} -> {hop.target}"]
        lines += [f"  {k:<20} {v}" for k, v in _hop_rows(hop)]
    lines += ["", (f"Next: with harbor.version {plan.stops[-1]} in the site file, every hop "
                   "(verified backup, health gate, automatic rollback):"), "",
              f"    {plan.next_command}", ""]
    return "\n".join(lines)


def _hop_rows(hop: planner.Hop) -> list[tuple[str, str]]:
    y, req = hop.yml, hop.requirements
    rows = [("PostgreSQL", hop.postgresql),
            ("schema migrations", f"{hop.source.schema_version} -> "
                                  f"{hop.target.schema_version} (run by harbor-core at start)")]
    rows.append(("harbor.yml", f"_version {y.from_version} -> {y.to_version}"
                 if y.from_version != y.to_version else f"_version stays {y.to_version}"))
    rows += [("  renamed", f"{old} -> {new} (at {since})") for old, new, since in y.renamed]
    if y.removed:
        rows.append(("  removed keys", ", ".join(y.removed)))
    if y.added:
        rows.append(("  new keys", ", ".join(y.added)))
    rows += [("  default changed", f"{k}: {old!r} -> {new!r}")
             for k, old, new in y.defaults_changed]
    rows += [("  note", n) for n in y.notes]
    rows.append(("removed components", ", ".join(hop.removed_components) or "none"))
    if hop.flags_stop_working:
        rows.append(("install.sh flags", "no longer accepted: "
                     + ", ".join(hop.flags_stop_working)))
    compose = f"compose v2 >= {req['compose_v2_documented_min']}" if req[
        "compose_v2_documented_min"] else "no compose v2"
    if req["compose_v1_documented_min"]:
        compose += (f" or docker-compose v1 >= {req['compose_v1_documented_min']} "
                    f"(works from {req['compose_v1_effective_min']})")
    rows.append(("Docker", f">= {req['docker_documented_min']} documented "
                           f"(install.sh checks only {req['docker_enforced_min']})"))
    rows.append(("Compose", compose))
    images = f"~{_gib(hop.disk_extra_bytes)} for the images"
    disk = (f"{hop.disk_db_factor:.1f} x size of /data/database (pg_upgrade copy) + {images}"
            if hop.disk_db_factor else f"{images} (no database copy)")
    if hop.disk_needed_bytes is not None:
        disk += f" = {_gib(hop.disk_needed_bytes)}"
    rows.append(("free disk", disk))
    if hop.bundle:
        rows.append(("bundle", hop.bundle))
    rows.append(("command", hop.command))
    return rows


def format_overview(ov: planner.ReleaseOverview) -> str:
    header = ("RELEASES", "DB LAYOUT", "POSTGRESQL", "CONVERTS", "harbor.yml", "UPGRADE FROM",
              "SUPPORT")
    rows = [header]
    for first, last in ov.groups():
        span = str(first) if first == last else f"{first} … {last}"
        rows.append((span, first.data_layout, first.pg_major, first.converts_from or "-",
                     first.yml_version, f">= {planner.oldest_from(first)}",
                     "supported" if first.minor in ov.supported_minors else "end of life"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out += ["", f"Supported minors: {', '.join(ov.supported_minors)}. A hop needs both the "
            "UPGRADE FROM rule and a DB layout the target uses or converts: see "
            "`harborctl upgrade plan`."]
    return "\n".join(out)


def format_apply(result: ApplyResult) -> str:
    head = "Harbor upgrade " + ("plan (nothing changed)" if result.dry_run else "apply")
    lines = [f"{head}: target {result.target}"]
    lines += [f"  {x['said']}" for x in result.learned]
    for o in result.hosts:
        lines += ["", *_host(o)]
    return "\n".join(lines)


def _host(o: HostOutcome) -> list[str]:
    p = o.plan
    lines = [f"{p.host}: {o.outcome}, on Harbor {o.on_release or 'unknown'} "
             f"(read from {p.installed_from or 'nothing'}), data {p.data_layout or 'none'}"]
    if p.state.run:
        lines.append(f"  journal: run {p.state.run}, hop {p.state.hop} {p.state.source} -> "
                     f"{p.state.target}, step {p.state.step} ({p.state.event}), "
                     f"{p.state.outcome}")
        if p.decision.action != "fresh":
            lines.append(f"  next run: {p.decision.action} {', '.join(p.decision.steps)} "
                         f"({p.decision.reason})")
    lines += [f"  REFUSED {r}" for r in p.refusals]
    for h in p.hops:
        lines.append(f"  hop {h.number}: {h.source} -> {h.target}  PostgreSQL {h.postgresql}; "
                     f"schema {h.source.schema_version} -> {h.target.schema_version}")
        left = p.left_out.get(str(h.target))
        if left:
            lines.append(f"    harbor.yml for {h.target} leaves out (valid at the target): "
                         + ", ".join(left))
    if p.hops and not o.hops:
        lines.append("  steps per hop: " + ", ".join(s.name for s in HOP_STEPS))
    for run in o.hops:
        down = run["downtime_seconds"]
        lines.append(f"  hop {run['hop']} {run['from']} -> {run['to']}: {run['outcome']}, "
                     f"downtime {'-' if down is None else f'{down:.1f} s'}")
        lines += [f"    {t['step']:<12} {t['phase']:<9} "
                  f"{'-' if t['seconds'] is None else format(t['seconds'], '.1f') + ' s':>8}  "
                  f"{'ok' if t['ok'] else 'FAILED' if t['ok'] is False else 'unfinished'}"
                  for t in run["steps"]]
    if o.message:
        lines.append(f"  {o.message}")
    return lines
