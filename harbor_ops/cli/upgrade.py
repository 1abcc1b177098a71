"""`harborctl upgrade plan` (read-only, kubeadm-style) and `harborctl versions`.

The commands only parse options, call the planner and print; the text layouts below are
presentation, the decisions are all in :mod:`harbor_ops.releases.planner`.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from harbor_ops.cli.options import config_option, emit, output_option
from harbor_ops.core.errors import UsageError
from harbor_ops.releases import planner
from harbor_ops.releases.versions import LAYOUTS

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ByteSize(click.ParamType):
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
    """Plan upgrades along the only safe path (and, later, apply them)."""


# `upgrade apply` is registered on this group, after `plan`, by the change that adds it.


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
    lines += ["", ("Next: back up, then install the first stop "
               "(preflight refuses any unsafe hop):"), "",
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
