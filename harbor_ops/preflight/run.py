"""Preflight: named, individually skippable checks before anything on a host changes.

Each check (in :mod:`harbor_ops.preflight.checks`) is a small function of a
:class:`Context` (the site, one host's probe facts, the inspected bundle) returning
:class:`CheckResult` s with a verdict, the reason in numbers and how to fix it; this module
runs them per host and builds the report. They cover what Harbor's install.sh misses
(harbor-facts §4, §6, §9, §13; landscape §2-C/G): Compose v1 too old for a version-less
compose file, the data layout a new harbor-db would silently replace by an EMPTY database,
CN-only or chain-less certificates, occupied ports.

Host problems never raise: an unreachable host or a refused SSH key is a failed ``ssh``
check naming the host (the other checks of that host are skipped), so a run over several
hosts always shows every host; the CLI turns ``not report.ok`` into PreflightFailed (exit 4).
The certificate and bundle checks read files on the controller, once, and their results
are listed under every host (each host receives those files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harbor_ops.core.errors import UsageError
from harbor_ops.hosts import compose, facts
from harbor_ops.hosts.facts import hosts_from_inventory
from harbor_ops.preflight.checks import (
    BACKUP_FACTOR,
    BUNDLE_UNPACK_FACTOR,
    GIB,
    HARBOR_CONTAINERS,
    MEM_SLACK,
    VERDICTS,
    CheckResult,
    Context,
    check_bundle,
    check_certificates,
    check_compose,
    check_cpu,
    check_data_layout,
    check_disk,
    check_docker,
    check_hostname,
    check_memory,
    check_ports,
    check_schema_dirty,
    data_layout,
    installed_version,
    wanted_ports,
)
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.site.model import HostEntry, Site

# The checks and the inventory reader live in preflight_checks and facts; they are
# re-exported here because callers know them as harbor_ops.preflight.run.<name>.
__all__ = [
    "BACKUP_FACTOR", "BUNDLE_UNPACK_FACTOR", "CHECKS", "CONTROLLER_CHECKS", "GIB",
    "HARBOR_CONTAINERS", "HOST_CHECKS", "MEM_SLACK", "VERDICTS", "CheckResult", "Context",
    "HostCheck", "PreflightReport", "check_bundle", "check_certificates", "check_compose",
    "check_cpu", "check_data_layout", "check_disk", "check_docker", "check_hostname",
    "check_memory", "check_ports", "check_schema_dirty", "data_layout", "host_results",
    "hosts_from_inventory", "installed_version", "run_preflight", "validate_skip",
    "wanted_ports",
]

HostCheck = Callable[[Context], "CheckResult | list[CheckResult]"]
HOST_CHECKS: dict[str, HostCheck] = {
    "cpu": check_cpu, "memory": check_memory, "disk": check_disk, "docker": check_docker,
    "compose": check_compose, "ports": check_ports, "hostname": check_hostname,
    "data_layout": check_data_layout, "schema_dirty": check_schema_dirty,
}
CONTROLLER_CHECKS = ("certificate", "bundle")
CHECKS: tuple[str, ...] = ("cpu", "memory", "disk", "docker", "compose", "ports", "certificate",
                           "hostname", "bundle", "data_layout", "schema_dirty")


# --------------------------------------------------------------------------- report


@dataclass
class PreflightReport:
    """Per host, the result of every check, in CHECKS order."""

    target: str
    results: dict[str, list[CheckResult]] = field(default_factory=dict)
    # Per host, the Compose command install.sh uses there (the boot unit and cron use it).
    compose: dict[str, str] = field(default_factory=dict)
    bundle: bundle_mod.BundleInfo | None = None  # when the bundle check read it

    @property
    def ok(self) -> bool:
        return not any(r.verdict == "fail" for rs in self.results.values() for r in rs)

    def failures(self) -> list[tuple[str, CheckResult]]:
        return [(h, r) for h, rs in self.results.items() for r in rs if r.verdict == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "target": self.target,
                "hosts": {h: [r.to_dict() for r in rs] for h, rs in self.results.items()},
                "compose": self.compose}

    def __str__(self) -> str:
        lines = []
        width = max(len(n) for n in (*CHECKS, "ssh"))
        for host, rs in self.results.items():
            lines.append(f"{host} (Harbor {self.target}):")
            for r in rs:
                fix = f"  -> {r.fix}" if r.fix and r.verdict in ("fail", "warn") else ""
                lines.append(f"  {r.verdict.upper():<4}  {r.name:<{width}}  {r.reason}{fix}")
        fails = len(self.failures())
        lines.append("preflight passed" if self.ok else f"preflight failed: {fails} check(s)")
        return "\n".join(lines)


def validate_skip(skip: Iterable[str]) -> frozenset[str]:
    names = frozenset(s.strip() for s in skip if s.strip())
    unknown = sorted(names - set(CHECKS))
    if unknown:
        raise UsageError(f"--skip: unknown check(s) {', '.join(unknown)}; valid checks: "
                         f"{', '.join(CHECKS)}")
    return names


def host_results(ctx: Context, skip: frozenset[str],
                 controller: dict[str, list[CheckResult]]) -> list[CheckResult]:
    out: list[CheckResult] = []
    for name in CHECKS:
        if name in skip:
            out.append(CheckResult(name, "skip", "skipped by --skip"))
        elif name in controller:
            out.extend(controller[name])
        else:
            got = HOST_CHECKS[name](ctx)
            out.extend(got if isinstance(got, list) else [got])
    return out


def run_preflight(site: Site, *, bundle: Path | None = None, skip: Iterable[str] = (),
                  hosts: Sequence[HostEntry] | None = None, inventory: Path | None = None,
                  ssh_config: Path | None = None,
                  accept_new_host_keys: bool = False,
                  bundle_info: bundle_mod.BundleInfo | None = None) -> PreflightReport:
    """Run every check not in ``skip`` on each host (in parallel); never changes a host.

    ``bundle_info``: ``bundle`` as the caller already inspected it (not read again)."""
    skipped = validate_skip(skip)
    targets = _targets(site, hosts, inventory, ssh_config)
    info, size = None, None
    if bundle is not None:
        if "bundle" in skipped:
            size = Path(bundle).stat().st_size if Path(bundle).is_file() else None
        else:
            info = bundle_info or bundle_mod.inspect_bundle_cached(Path(bundle))
            size = info.size or None
    controller = {"certificate": check_certificates(site),
                  "bundle": [check_bundle(site, info)]}
    controller = {k: v for k, v in controller.items() if k not in skipped}
    data_volume = str(site.harbor.get("data_volume", "/data"))

    def one(target: tuple[HostEntry, Path | None]
            ) -> tuple[str, list[CheckResult], str | None]:
        entry, cfg = target
        got = facts.gather(entry, data_volume=data_volume, hostname=site.hostname,
                           install_dir=str(site.install.dir), ssh_config=cfg,
                           accept_new_host_keys=accept_new_host_keys)
        if not got.ok:
            rs = [CheckResult("ssh", "fail", got.error or "unreachable", got.fix or "")]
            rs += [CheckResult(n, "skip", f"no facts from {entry.name}") for n in CHECKS
                   if n not in controller]
            return entry.name, rs + [r for n in CHECKS for r in controller.get(n, [])], None
        ctx = Context(site, entry.name, got.data, info, size)
        found = compose.pick(got.data, plugin_accepted=ctx.target.compose_v2_accepted)
        return entry.name, host_results(ctx, skipped, controller), found

    report = PreflightReport(target=str(Context(site, "", {}, info).target), bundle=info)
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(targets)))) as pool:
        for name, rs, found in pool.map(one, targets):
            report.results[name] = rs
            if found is not None:
                report.compose[name] = found
    return report


def _targets(site: Site, hosts: Sequence[HostEntry] | None, inventory: Path | None,
             ssh_config: Path | None) -> list[tuple[HostEntry, Path | None]]:
    if hosts is not None:
        return [(h, ssh_config) for h in hosts]
    if inventory is not None:
        return [(h, cfg or ssh_config) for h, cfg in hosts_from_inventory(inventory)]
    return [(h, ssh_config) for h in site.hosts]
