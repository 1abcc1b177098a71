"""The upgrade planner: (current, data layout, target, bundles) -> hops, or a refusal.

Pure functions over :mod:`harbor_ops.releases.versions` (no I/O), so the CLI, the agent and
``upgrade apply`` all get the same answer. A hop A -> B is allowed only when BOTH hold:

1. Harbor's support policy and the target's upgrade guide admit it: B is at most two
   minors ahead of A (RELEASES.md) and A is at least the oldest from-version B's guide
   names (harbor-facts §8.1; for 2.14's n-3 sentence the stricter rule wins).
2. B's harbor-db uses A's data layout unchanged or converts it (harbor-facts §6, §13).
   Anything else makes Harbor start a NEW, EMPTY database beside the old data (or
   refuse to start): the trap harborctl exists to prevent.

Among the allowed paths the plan takes the fewest hops; then the one with the most
stops that are the latest patch of their minor; then the one with the latest stops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from harbor_ops.core.errors import UpgradePathError, UsageError
from harbor_ops.releases import versions as hv
from harbor_ops.releases import yml_schema
from harbor_ops.releases.versions import Release

# Policy (RELEASES.md): "Harbor only supports two previous minor releases to upgrade to".
MAX_MINORS_PER_HOP = 2
# harbor-db's upgrade.sh runs pg_upgrade WITHOUT --link: the new cluster is a full copy.
COPY_MODE_DB_FACTOR = 1.0
# An offline installer tarball and its loaded images: a rough, deliberately generous figure.
IMAGE_TARBALL_BYTES = 1 << 30
SAFE_DB_OUTCOMES = frozenset({"use", "convert"})

# A GA bundle name ends in its version: harbor-offline-installer-v2.8.6.tgz (not -rc1).
_BUNDLE_VERSION = re.compile(r"(?<![\d.])v?(\d+\.\d+\.\d+)(?:\.tgz|\.tar\.gz)?$")


# --------------------------------------------------------------------------- rules


def hop_problems(a: Release, b: Release, layout: str | None = None) -> list[str]:
    """Why the hop a -> b is unsafe (empty list: allowed). ``layout`` defaults to a's."""
    layout = layout or a.data_layout
    problems: list[str] = []
    if b.version <= a.version:
        problems.append(f"{b} is not newer than {a}")
        return problems
    skip = hv.minor_index(b) - hv.minor_index(a)
    if skip > MAX_MINORS_PER_HOP:
        problems.append(f"{a.minor} -> {b.minor} skips {skip} minors; Harbor supports at most "
                        f"{MAX_MINORS_PER_HOP} per upgrade (RELEASES.md)")
    if a.version < b.guide_oldest_from:
        problems.append(f"the {b.minor} upgrade guide covers only {b.guide_oldest_from} "
                        "and later")
    outcome = b.db_outcome(layout)
    if outcome not in SAFE_DB_OUTCOMES:
        problems.append(_db_trap(b, layout, outcome))
    return problems


def oldest_from(r: Release) -> Version:
    """The oldest release that may upgrade straight to ``r``: the stricter of both rules."""
    idx = hv.minor_index(r) - MAX_MINORS_PER_HOP
    if idx < 0:  # the policy floor lies before 2.0, which harborctl does not know
        return r.guide_oldest_from
    return max(Version(f"{hv.minors()[idx]}.0"), r.guide_oldest_from)


def hop_allowed(a: Release, b: Release, layout: str | None = None) -> bool:
    return not hop_problems(a, b, layout)


def _db_trap(b: Release, layout: str, outcome: str) -> str:
    if outcome == "refuse":
        return (f"harbor-db {b} refuses {describe_layout(layout)} and does not start "
                f"(it converts only {b.converts_from or 'nothing'})")
    return (f"harbor-db {b} cannot convert {describe_layout(layout)}: it would start a NEW, "
            "EMPTY database beside the old data (it converts only "
            f"{b.converts_from or 'nothing'})")


def describe_layout(layout: str) -> str:
    """Where a layout's files are, in words an operator can check with ``ls``."""
    if layout == "9.6":
        return "PostgreSQL 9.6 data (PG_VERSION at the root of /data/database)"
    return f"PostgreSQL {hv.PG_MAJOR_OF_LAYOUT[layout]} data (/data/database/{layout})"


def layout_writers(layout: str) -> tuple[Release, Release]:
    """The first and last release whose harbor-db writes ``layout``."""
    rows = [r for r in hv.all_releases() if r.data_layout == layout]
    return rows[0], rows[-1]


def _writers_text(layout: str) -> str:
    first, last = layout_writers(layout)
    return str(first) if first == last else f"{first} … {last}"


def check_layout(layout: str | None) -> str | None:
    if layout is not None and layout not in hv.LAYOUTS:
        raise UsageError(f"--data-layout: {layout!r} is not a harbor-db data layout; "
                         f"expected one of {', '.join(hv.LAYOUTS)}")
    return layout


def _contradiction(current: Release, layout: str) -> UpgradePathError:
    written, own = _writers_text(layout), _writers_text(current.data_layout)
    newer = hv.LAYOUTS.index(layout) > hv.LAYOUTS.index(current.data_layout)
    cause = ("a later Harbor already ran on this data: an upgrade failed or was rolled back "
             "without restoring its data" if newer else
             f"Harbor {current} started a new, EMPTY database beside this older data, or its "
             "conversion failed: an earlier upgrade skipped a step")
    return UpgradePathError(
        f"data layout {layout} ({describe_layout(layout)}, written by Harbor {written}) "
        f"contradicts --from {current}, whose harbor-db writes {current.data_layout} "
        f"(Harbor {own}); {cause}",
        hint="restore the backup taken before that upgrade, or pass the --from of the Harbor "
             "that wrote this data")


# --------------------------------------------------------------------------- per hop


@dataclass(frozen=True)
class YmlMigration:
    """What changes in harbor.yml across one hop (as `prepare migrate` would change it)."""

    from_version: str  # `_version` Harbor writes
    to_version: str
    renamed: tuple[tuple[str, str, str], ...] = ()  # (old path, new path, since)
    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()  # keys the new template sets with a default
    defaults_changed: tuple[tuple[str, Any, Any], ...] = ()  # (path, old, new)
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> bool:
        return self.from_version != self.to_version or bool(
            self.renamed or self.removed or self.added or self.defaults_changed or self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version, "to_version": self.to_version,
            "renamed": [{"from": o, "to": n, "since": s} for o, n, s in self.renamed],
            "removed": list(self.removed), "added": list(self.added),
            "defaults_changed": [{"key": k, "from": o, "to": n}
                                 for k, o, n in self.defaults_changed],
            "notes": list(self.notes),
        }


def yml_migration(a: Release, b: Release) -> YmlMigration:
    va, vb = a.version, b.version
    renamed, removed, added, changed = [], [], [], []
    for k in yml_schema.KEYS:
        for since, old in k.renamed:
            if va < Version(since) <= vb:
                renamed.append((old, k.path, since))
        was, now = k.available(va), k.available(vb)
        if was and not now:
            removed.append(k.path)
        elif now and not was and k.active:
            added.append(k.path)
        elif was and now and k.active and k.default_for(va) != k.default_for(vb):
            changed.append((k.path, k.default_for(va), k.default_for(vb)))
    notes = []
    split = yml_schema.REDIS_HOST_PORT_SPLIT_UNTIL
    if va < split <= vb:
        notes.append("external_redis.host becomes host:port; external_redis.port is dropped")
    return YmlMigration(a.yml_version, b.yml_version, tuple(renamed), tuple(removed),
                        tuple(added), tuple(changed), tuple(notes))


@dataclass(frozen=True)
class Hop:
    """One install of one release on the way to the target."""

    number: int
    source: Release
    target: Release
    layout_before: str
    db_outcome: str  # "use" | "convert"
    yml: YmlMigration
    removed_components: tuple[str, ...]
    flags_stop_working: tuple[str, ...]
    disk_db_factor: float
    disk_extra_bytes: int
    disk_needed_bytes: int | None
    bundle: str | None

    @property
    def layout_after(self) -> str:
        return self.target.data_layout

    @property
    def command(self) -> str:
        # The hop by hand (what `upgrade apply` automates, with snapshot and rollback): a
        # verified backup, the site file's harbor.version set to the stop, an install of it.
        return (f"harborctl backup create && harborctl install "
                f"--bundle harbor-offline-installer-v{self.target}.tgz "
                f"--harbor-version {self.target}")

    @property
    def postgresql(self) -> str:
        if self.db_outcome == "use":
            return f"none ({self.layout_before} used as is)"
        old, new = self.layout_before, self.layout_after
        return (f"{old} -> {new} by pg_upgrade in harbor-db (PostgreSQL "
                f"{hv.PG_MAJOR_OF_LAYOUT[old]} -> {hv.PG_MAJOR_OF_LAYOUT[new]}, copy mode; "
                "the old cluster is deleted on success)")

    @property
    def requirements(self) -> dict[str, Any]:
        """Docker/Compose the target needs: documented, and what install.sh enforces."""
        t = self.target
        return {
            "docker_documented_min": str(t.docker_documented_min),
            "docker_enforced_min": str(hv.DOCKER_ENFORCED_MIN),
            "compose_v2_documented_min": _s(t.compose_v2_documented_min),
            "compose_v2_accepted": t.compose_v2_accepted,
            "compose_v1_documented_min": _s(t.compose_v1_documented_min),
            "compose_v1_effective_min": str(t.compose_v1_effective_min),
            "external_postgresql_min": t.external_pg_min,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "from": str(self.source), "to": str(self.target),
            "data_layout": {"before": self.layout_before, "after": self.layout_after},
            "db_outcome": self.db_outcome, "postgresql": self.postgresql,
            "schema_migrations": {"from": self.source.schema_version,
                                  "to": self.target.schema_version},
            "harbor_yml": self.yml.to_dict(),
            "removed_components": list(self.removed_components),
            "install_flags_stop_working": list(self.flags_stop_working),
            "requirements": self.requirements,
            "disk": {"db_size_factor": self.disk_db_factor,
                     "extra_bytes": self.disk_extra_bytes,
                     "needed_bytes": self.disk_needed_bytes},
            "bundle": self.bundle, "command": self.command,
        }


def _s(v: Version | None) -> str | None:
    return None if v is None else str(v)


def _working_flags(r: Release) -> frozenset[str]:
    return r.install_flags - r.install_flags_erroring


def _hop(number: int, a: Release, b: Release, layout: str, db_size_bytes: int | None,
         bundles: dict[Version, str]) -> Hop:
    outcome = b.db_outcome(layout)
    factor = COPY_MODE_DB_FACTOR if outcome == "convert" else 0.0
    needed = None if db_size_bytes is None else int(factor * db_size_bytes) + IMAGE_TARBALL_BYTES
    return Hop(
        number=number, source=a, target=b, layout_before=layout, db_outcome=outcome,
        yml=yml_migration(a, b),
        removed_components=tuple(sorted(set(b.removed_components) - set(a.removed_components))),
        flags_stop_working=tuple(sorted(_working_flags(a) - _working_flags(b))),
        disk_db_factor=factor, disk_extra_bytes=IMAGE_TARBALL_BYTES, disk_needed_bytes=needed,
        bundle=bundles.get(b.version),
    )


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """The only safe path from ``current`` to ``target``; empty when already there."""

    current: Release
    target: Release
    data_layout: str
    hops: tuple[Hop, ...]
    supported_minors: tuple[str, ...]
    missing_bundles: tuple[str, ...] = field(default=())

    @property
    def stops(self) -> tuple[Release, ...]:
        return tuple(h.target for h in self.hops)

    @property
    def next_command(self) -> str | None:
        """Every hop in one command: per-hop verified backup, health gate, rollback."""
        return f"harborctl upgrade apply --to {self.hops[-1].target}" if self.hops else None

    @property
    def current_supported(self) -> bool:
        return self.current.minor in self.supported_minors

    @property
    def target_supported(self) -> bool:
        return self.target.minor in self.supported_minors

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": str(self.current), "target": str(self.target),
            "data_layout": self.data_layout,
            "stops": [str(r) for r in self.stops],
            "hops": [h.to_dict() for h in self.hops],
            "next_command": self.next_command,
            "support": {"supported_minors": list(self.supported_minors),
                        "current_supported": self.current_supported,
                        "target_supported": self.target_supported},
            "missing_bundles": list(self.missing_bundles),
        }


def bundle_versions(bundles: Iterable[str]) -> dict[Version, str]:
    """Versions named by bundle files (``harbor-offline-installer-v2.8.6.tgz``) or plain."""
    out: dict[Version, str] = {}
    for name in bundles:
        m = _BUNDLE_VERSION.search(str(name).rsplit("/", 1)[-1])
        if m:
            out.setdefault(Version(m.group(1)), str(name))
    return out


def plan(*, current: str, target: str, data_layout: str | None = None,
         bundles: Iterable[str] = (), db_size_bytes: int | None = None) -> Plan:
    """Plan current -> target, or raise UsageError (unknown input) / UpgradePathError."""
    cur = hv.release(current, field="current version")
    tgt = hv.release(target, field="target version")
    layout = check_layout(data_layout) or cur.data_layout
    if layout != cur.data_layout:
        raise _contradiction(cur, layout)
    if tgt.version < cur.version:
        raise UpgradePathError(
            f"{cur} -> {tgt} is a downgrade; Harbor does not support downgrades",
            hint="to go back, restore the backup taken before the upgrade with "
                 "`harborctl backup restore`")
    if db_size_bytes is not None and db_size_bytes < 0:
        raise UsageError(f"database size: {db_size_bytes} must be 0 or more bytes")
    stops = _shortest_path(cur, tgt, layout)
    found = bundle_versions(bundles)
    hops, prev, prev_layout = [], cur, layout
    for n, stop in enumerate(stops, start=1):
        hops.append(_hop(n, prev, stop, prev_layout, db_size_bytes, found))
        prev, prev_layout = stop, stop.data_layout
    missing = tuple(str(s) for s in stops if s.version not in found) if found else ()
    return Plan(current=cur, target=tgt, data_layout=layout, hops=tuple(hops),
                supported_minors=hv.supported_minors(), missing_bundles=missing)


def _shortest_path(cur: Release, tgt: Release, layout: str) -> list[Release]:
    """Best path over the release DAG (versions only grow), by dynamic programming.

    Cost per path: (hops, stops that are not the latest patch of their minor); ties go to
    the path whose earlier stops are later releases. Every release between the two is a
    candidate, so a specific patch (the last one of a data layout) is used when the layout
    rule needs it, and never otherwise.
    """
    if cur.version == tgt.version:
        return []
    nodes = [r for r in hv.all_releases() if cur.version < r.version <= tgt.version]
    order = {r.version: i for i, r in enumerate(hv.all_releases())}
    latest = {hv.latest_patch(m).version for m in hv.minors()}
    best: dict[Version, tuple[tuple[int, int, tuple[int, ...]], list[Release]]] = {
        cur.version: ((0, 0, ()), [])}
    for i, node in enumerate(nodes):
        penalty = 0 if node.version in latest or node.version == tgt.version else 1
        for prev in (cur, *nodes[:i]):
            if prev.version not in best:
                continue
            prev_layout = layout if prev.version == cur.version else prev.data_layout
            if not hop_allowed(prev, node, prev_layout):
                continue
            (hops, extra, rank), path = best[prev.version]
            key = (hops + 1, extra + penalty, (*rank, -order[node.version]))
            if node.version not in best or key < best[node.version][0]:
                best[node.version] = (key, [*path, node])
    if tgt.version not in best:
        why = "; ".join(hop_problems(cur, tgt, layout))
        raise UpgradePathError(f"no safe upgrade path from {cur} ({layout}) to {tgt}: {why}")
    return best[tgt.version][1]


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class ReleaseOverview:
    """Every known release with what an operator plans around (``harborctl versions``)."""

    releases: tuple[Release, ...]
    supported_minors: tuple[str, ...]

    def groups(self) -> list[tuple[Release, Release]]:
        """Runs of releases of one minor sharing a data layout: (first, last)."""
        out: list[tuple[Release, Release]] = []
        for r in self.releases:
            if out and out[-1][1].minor == r.minor and out[-1][1].data_layout == r.data_layout:
                out[-1] = (out[-1][0], r)
            else:
                out.append((r, r))
        return out

    def to_dict(self) -> dict[str, Any]:
        latest = {hv.latest_patch(m).version for m in hv.minors()}
        return {
            "supported_minors": list(self.supported_minors),
            "newest": str(self.releases[-1]),
            "releases": [{
                "version": str(r), "minor": r.minor, "latest_patch": r.version in latest,
                "supported": r.minor in self.supported_minors,
                "data_layout": r.data_layout, "postgresql": r.pg_major,
                "converts_from": r.converts_from, "harbor_yml_version": r.yml_version,
                "schema_version": r.schema_version,
                "upgrade_from_min": str(oldest_from(r)),
                "docker_documented_min": str(r.docker_documented_min),
                "compose_v2_documented_min": _s(r.compose_v2_documented_min),
                "install_flags": sorted(_working_flags(r)),
                "removed_components": list(r.removed_components),
            } for r in self.releases],
        }


def overview() -> ReleaseOverview:
    return ReleaseOverview(releases=hv.all_releases(), supported_minors=hv.supported_minors())
