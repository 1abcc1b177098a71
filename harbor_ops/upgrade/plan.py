"""Plan one host's upgrade from what the host itself reports, or refuse before any change.

Pure functions of the probe's facts (:mod:`harbor_ops.hosts.facts`), the inspected bundles
and the site file: the installed release and the data layout are read FROM THE HOST (the
running harbor-core image, the install dir's ``harbor`` link, ``/data/database``), never
taken from the site file, whose ``harbor.version`` is only the target. Every refusal names
the fix; nothing here touches a host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from harbor_ops.core.errors import UpgradePathError, UsageError
from harbor_ops.preflight import checks as pf
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.releases import planner
from harbor_ops.releases import versions as hv
from harbor_ops.render import harbor_yml
from harbor_ops.site.model import Site
from harbor_ops.upgrade import state as journal
from harbor_ops.upgrade import steps as st


@dataclass(frozen=True)
class Refusal:
    check: str
    reason: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.check}: {self.reason} (fix: {self.fix})"


@dataclass
class HostPlan:
    """One host: what it runs, the hops to the target, what blocks them, what resumes."""

    host: str
    installed: str | None = None
    installed_from: str = ""
    data_layout: str | None = None
    plan: planner.Plan | None = None
    left_out: dict[str, list[str]] = field(default_factory=dict)  # stop -> site keys left out
    disk_needed: int | None = None
    disk_free: int | None = None
    refusals: list[Refusal] = field(default_factory=list)
    state: journal.HostState = field(default_factory=journal.HostState)
    decision: journal.Decision = field(default_factory=lambda: journal.Decision("fresh"))

    @property
    def hops(self) -> tuple[planner.Hop, ...]:
        return self.plan.hops if self.plan is not None else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host, "installed": self.installed, "installed_from": self.installed_from,
            "data_layout": self.data_layout,
            "hops": [{**h.to_dict(), "harbor_yml_left_out": self.left_out.get(str(h.target), []),
                      "steps": [{"name": s.name, "phase": s.phase, "does": s.does}
                                for s in st.HOP_STEPS]} for h in self.hops],
            "disk": {"needed_bytes": self.disk_needed, "free_bytes": self.disk_free},
            "refusals": [r.to_dict() for r in self.refusals],
            "journal": self.state.to_dict(), "resume": self.decision.to_dict(),
        }


def check_target(site: Site, to: str | None) -> None:
    """``--to`` must name the site file's target: the site file is the one source of truth."""
    if to is None:
        return
    want = hv.parse_version(to, field="--to")
    if want != site.release.version:
        raise UsageError(f"--to {want} differs from harbor.version {site.release.version} in "
                         f"the site file", hint=f"set harbor.version: {want} in the site file "
                         "first (it is the target), then run upgrade apply again")


def left_out_keys(harbor_values: dict[str, Any], stop: hv.Release) -> list[str]:
    """Site keys (valid at the target) that ``stop``'s harbor.yml does not have yet."""
    return harbor_yml.unavailable_keys(harbor_values, stop)


def plan_host(site: Site, host: str, facts: dict[str, Any], *,
              bundles: dict[Version, bundle_mod.BundleInfo],
              harbor_values: dict[str, Any]) -> HostPlan:
    """Plan ``host`` to the site's target from its facts; refusals instead of raising."""
    hp = HostPlan(host=host)
    hp.state = journal.fold((facts.get("upgrade_journal") or "").splitlines())
    hp.decision = journal.decide(hp.state)
    layout, problem = pf.data_layout(facts.get("database") or {})
    hp.data_layout = layout
    cur, source = pf.installed_version(facts)
    hp.installed, hp.installed_from = (str(cur) if cur else None), source
    if hp.decision.action != "fresh":
        return hp  # a run to finish first: its plan is the journal's, not a new one
    if problem:
        hp.refusals.append(Refusal("data_layout", problem, "restore the backup taken before "
                                   "the last upgrade (`harborctl backup restore`)"))
        return hp
    if cur is None:
        hp.refusals.append(Refusal("installed", "no installed Harbor found (no running "
                                   "harbor-core, no install-dir link)",
                                   "install it first with `harborctl install`"))
        return hp
    try:
        hp.plan = planner.plan(current=str(cur), target=str(site.release.version),
                               data_layout=layout or None,
                               db_size_bytes=int((facts.get("database") or {}).get("size") or 0))
    except (UpgradePathError, UsageError) as exc:
        hp.refusals.append(Refusal("path", f"installed Harbor {cur} ({source}), data "
                                   f"{layout or 'none'}: {exc.message}",
                                   exc.hint or "see `harborctl upgrade plan`"))
        return hp
    hp.refusals += _schema_refusals(facts, hp.plan)
    hp.refusals += _bundle_refusals(hp.plan, bundles)
    hp.refusals += _tool_refusals(site, host, facts, hp.plan)
    disk = _disk_refusal(hp, facts, bundles)
    if disk is not None:
        hp.refusals.append(disk)
    hp.left_out = {str(h.target): left_out_keys(harbor_values, h.target) for h in hp.hops
                   if h.target != site.release}
    return hp


def _schema_refusals(facts: dict[str, Any], plan: planner.Plan) -> list[Refusal]:
    run = facts.get("schema")
    if run is None or not plan.hops:
        return []
    if run.get("rc") != 0:
        return [Refusal("schema", "could not read schema_migrations: "
                        f"{str(run.get('err'))[:160]}", "check `docker logs harbor-db`")]
    rows = [line.split("|") for line in str(run.get("out", "")).splitlines() if "|" in line]
    if rows and rows[-1][1].strip() in ("t", "true"):
        return [Refusal("schema", f"schema_migrations version {rows[-1][0].strip()} is dirty: "
                        "a previous migration failed", "restore the backup taken before it "
                        "(`harborctl backup restore`), fix the data the migration failed on, "
                        "then run upgrade apply again")]
    return []


def _bundle_refusals(plan: planner.Plan,
                     bundles: dict[Version, bundle_mod.BundleInfo]) -> list[Refusal]:
    out = []
    for hop in plan.hops:
        info = bundles.get(hop.target.version)
        name = f"harbor-offline-installer-v{hop.target}.tgz"
        if info is None:
            out.append(Refusal("bundle", f"no bundle for stop {hop.target} (hop {hop.number})",
                               f"put {name} into --bundle-dir"))
        elif info.problems:
            out.append(Refusal("bundle", f"{info.path.name}: {'; '.join(info.problems)}",
                               f"download or copy {name} again"))
        elif info.version != hop.target.version:
            out.append(Refusal("bundle", f"{info.path.name} holds Harbor {info.version}, not "
                               f"{hop.target}", f"replace it with {name}"))
    return out


def _tool_refusals(site: Site, host: str, facts: dict[str, Any],
                   plan: planner.Plan) -> list[Refusal]:
    out = []
    for hop in plan.hops:
        ctx = pf.Context(dataclasses.replace(site, release=hop.target), host, facts)
        for check in (pf.check_docker, pf.check_compose):
            r = check(ctx)
            if r.verdict == "fail":
                out.append(Refusal(r.name, f"stop {hop.target}: {r.reason}", r.fix))
    return out


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def disk_needed(hop: planner.Hop, facts: dict[str, Any], bundle_size: int) -> int:
    """Free bytes one hop needs on the data disk: pg_upgrade's copy, the hop's snapshot
    (database, redis, secret), one backup and the images."""
    db = int((facts.get("database") or {}).get("size") or 0)
    sizes = facts.get("data_sizes") or {}
    snapshot = db + int(sizes.get("redis") or 0) + int(sizes.get("secret") or 0)
    return (int(hop.disk_db_factor * db) + snapshot + int(db * pf.BACKUP_FACTOR)
            + bundle_size * pf.BUNDLE_UNPACK_FACTOR)


def _disk_refusal(hp: HostPlan, facts: dict[str, Any],
                  bundles: dict[Version, bundle_mod.BundleInfo]) -> Refusal | None:
    if not hp.hops:
        return None
    need = max(disk_needed(h, facts, (bundles[h.target.version].size
                                      if h.target.version in bundles
                                      else planner.IMAGE_TARBALL_BYTES)) for h in hp.hops)
    disk = facts.get("disk") or {}
    hp.disk_needed, hp.disk_free = need, disk.get("free")
    if isinstance(hp.disk_free, int) and hp.disk_free < need:
        where = disk.get("path", "the data volume")
        return Refusal("disk", f"{_gib(hp.disk_free)} free on {where}; the largest hop "
                       f"needs {_gib(need)} (pg_upgrade copy + snapshot + backup + images)",
                       f"free {_gib(need - hp.disk_free)} on {where} or grow the volume")
    return None
