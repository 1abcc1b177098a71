"""Harbor release knowledge, as data.

Everything harborctl knows about a Harbor release lives in the tables below and is
read through :func:`release`; no other module compares version numbers to decide
what a release can do. Sources: ``reference/harbor-facts.md`` (each row cites the
Harbor tag it was read from there): §1 tags, §3 install flags, §4 Docker/Compose
checks, §6 PostgreSQL layout, §8 upgrade guide, §9 prerequisites, §11 images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from packaging.version import InvalidVersion, Version

from harbor_ops.core.errors import UsageError

# §1: every GA patch per minor line.
_PATCHES: dict[str, int] = {
    "2.0": 6, "2.1": 6, "2.2": 4, "2.3": 5, "2.4": 3, "2.5": 6, "2.6": 4, "2.7": 4,
    "2.8": 6, "2.9": 5, "2.10": 3, "2.11": 2, "2.12": 4, "2.13": 5, "2.14": 4, "2.15": 2,
}

# §6: harbor-db data layout and the one older layout each line converts.
#   (first version, layout, converts_from). "9.6" = PG_VERSION at the root of /data/database.
_DB_LAYOUTS: tuple[tuple[str, str, str | None], ...] = (
    ("2.0.0", "9.6", None),
    ("2.3.0", "pg13", "9.6"),
    ("2.7.0", "pg13", None),
    ("2.9.0", "pg14", "pg13"),
    ("2.11.0", "pg15", "pg14"),
    ("2.15.2", "pg18", "pg15"),
)
LAYOUTS: tuple[str, ...] = ("9.6", "pg13", "pg14", "pg15", "pg18")
PG_MAJOR_OF_LAYOUT: dict[str, str] = {"9.6": "9.6", "pg13": "13", "pg14": "14", "pg15": "15",
                                      "pg18": "18"}

# §8.1: oldest from-version stated by each minor's upgrade guide (2.14 is n-3: irregular).
_GUIDE_OLDEST_FROM: dict[str, str] = {
    "2.0": "1.9.0", "2.1": "1.10.0", "2.2": "1.10.0", "2.3": "1.10.0", "2.4": "1.10.0",
    "2.5": "2.3.0", "2.6": "2.4.0", "2.7": "2.5.0", "2.8": "2.6.0", "2.9": "2.7.0",
    "2.10": "2.8.0", "2.11": "2.9.0", "2.12": "2.10.0", "2.13": "2.11.0", "2.14": "2.11.0",
    "2.15": "2.12.0",
}

# §6: last schema migration shipped by the latest patch of each minor.
_SCHEMA_VERSION: dict[str, int] = {
    "2.0": 31, "2.1": 41, "2.2": 53, "2.3": 61, "2.4": 71, "2.5": 82, "2.6": 91, "2.7": 100,
    "2.8": 111, "2.9": 120, "2.10": 130, "2.11": 140, "2.12": 150, "2.13": 160, "2.14": 171,
    "2.15": 180,
}

# §3: install.sh flags accepted per range; flags that exist only to print an error.
#   (first version, accepted, rejected-with-error)
_INSTALL_FLAGS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("2.0.0", frozenset({"--with-notary", "--with-clair", "--with-trivy", "--with-chartmuseum"}),
     frozenset()),
    ("2.2.0", frozenset({"--with-notary", "--with-trivy", "--with-chartmuseum"}),
     frozenset({"--with-clair"})),
    ("2.8.0", frozenset({"--with-notary", "--with-trivy"}), frozenset({"--with-clair"})),
    ("2.9.0", frozenset({"--with-trivy"}), frozenset()),
)

# §4 and §9: Docker / Compose. "enforced" is what common.sh really checks; "documented" is the
# prerequisite page. harborctl enforces the stricter of the two where install.sh misses it.
#   (first version, docker documented, compose v1 documented, compose v2 documented,
#    compose v2 accepted by install.sh, compose file has no `version:` key)
_DOCKER: tuple[tuple[str, str, str | None, str | None, bool], ...] = (
    ("2.0.0", "17.6.0", "1.18.0", None, False),
    ("2.5.4", "17.6.0", "1.18.0", None, True),
    ("2.6.0", "17.6.0", "1.18.0", "2.0.0", True),
    ("2.9.0", "20.10.10", "1.18.0", "2.0.0", True),
    ("2.13.0", "20.10.0", None, "2.3.0", True),
)
DOCKER_ENFORCED_MIN = Version("17.6.0")
COMPOSE_V1_ENFORCED_MIN = Version("1.18.0")
# docker-compose v1 older than 1.27 cannot parse a compose file without `version:` (2.12+).
COMPOSE_V1_VERSIONLESS_MIN = Version("1.27.0")
COMPOSE_FILE_VERSIONLESS_SINCE = Version("2.12.0")

# §11: optional components and when they left; images shipped per release.
_REMOVED: dict[str, str] = {"clair": "2.2.0", "chartmuseum": "2.8.0", "notary": "2.9.0"}
_IMAGES_ALWAYS = ("prepare", "harbor-portal", "harbor-core", "harbor-log", "harbor-db",
                  "harbor-jobservice", "harbor-registryctl", "nginx-photon", "registry-photon",
                  "trivy-adapter-photon")
VALKEY_SINCE = Version("2.15.2")

# §10: components /api/v2.0/health reports.
_HEALTH_COMPONENTS = ("core", "database", "jobservice", "portal", "redis", "registry",
                      "registryctl")

# §9 hardware (every branch).
HARDWARE = {"cpu_min": 2, "cpu_rec": 4, "mem_min_gb": 4, "mem_rec_gb": 8, "disk_min_gb": 40,
            "disk_rec_gb": 160}

# §8.2 / §13.5: external PostgreSQL minimum major per line.
_EXTERNAL_PG_MIN: tuple[tuple[str, int], ...] = (("2.0.0", 9), ("2.5.0", 10), ("2.9.0", 12))

# RELEASES.md policy: the three newest minors are supported.
SUPPORTED_MINOR_COUNT = 3


@dataclass(frozen=True)
class Release:
    """What one Harbor GA release is and needs."""

    version: Version
    yml_version: str
    data_layout: str
    converts_from: str | None
    install_flags: frozenset[str]
    install_flags_erroring: frozenset[str]
    docker_documented_min: Version
    compose_v1_documented_min: Version | None
    compose_v2_documented_min: Version | None
    compose_v2_accepted: bool
    guide_oldest_from: Version
    schema_version: int
    removed_components: tuple[str, ...]
    images: tuple[str, ...]
    health_components: tuple[str, ...]
    external_pg_min: int

    @property
    def minor(self) -> str:
        return f"{self.version.major}.{self.version.minor}"

    @property
    def pg_major(self) -> str:
        return PG_MAJOR_OF_LAYOUT[self.data_layout]

    @property
    def refuses_96(self) -> bool:
        """2.7+ entrypoints stop with an error on a 9.6 root layout (§6)."""
        return self.version >= Version("2.7.0")

    @property
    def compose_file_versionless(self) -> bool:
        return self.version >= COMPOSE_FILE_VERSIONLESS_SINCE

    @property
    def compose_v1_effective_min(self) -> Version:
        """The lowest docker-compose v1 that can really run this release's compose file."""
        floor = COMPOSE_V1_VERSIONLESS_MIN if self.compose_file_versionless else (
            COMPOSE_V1_ENFORCED_MIN)
        return max(floor, self.compose_v1_documented_min or floor)

    def db_outcome(self, layout: str | None) -> str:
        """What this release's harbor-db does with an existing data layout.

        Returns ``"fresh"`` (no data), ``"use"`` (same layout), ``"convert"`` (pg_upgrade),
        ``"refuse"`` (entrypoint exits) or ``"empty"`` (silently initialises a new, EMPTY
        cluster beside the old data: the trap harborctl exists to prevent).
        """
        if layout is None:
            return "fresh"
        if layout == self.data_layout:
            return "use"
        if layout == self.converts_from:
            return "convert"
        if layout == "9.6" and self.refuses_96:
            return "refuse"
        return "empty"

    def __str__(self) -> str:
        return str(self.version)


def _pick(rows, v: Version):  # type: ignore[no-untyped-def]
    """The last row of a (first-version, ...) table whose first version is <= v."""
    chosen = None
    for row in rows:
        if Version(row[0]) <= v:
            chosen = row
    if chosen is None:
        raise AssertionError(f"no table row for {v}")
    return chosen


def _build(v: Version) -> Release:
    minor = f"{v.major}.{v.minor}"
    _, layout, converts = _pick(_DB_LAYOUTS, v)
    _, flags, erroring = _pick(_INSTALL_FLAGS, v)
    _, docker_doc, c1, c2, c2_ok = _pick(_DOCKER, v)
    images = list(_IMAGES_ALWAYS)
    images.append("valkey-photon" if v >= VALKEY_SINCE else "redis-photon")
    if v >= Version("2.2.0"):
        images.append("harbor-exporter")
    if v < Version("2.9.0"):
        images += ["notary-server-photon", "notary-signer-photon"]
    if v < Version("2.8.0"):
        images.append("chartmuseum-photon")
    if v < Version("2.2.0"):
        images += ["clair-photon", "clair-adapter-photon"]
    removed = tuple(sorted(c for c, since in _REMOVED.items() if v >= Version(since)))
    return Release(
        version=v,
        yml_version="2.0.0" if minor in ("2.0", "2.1") else f"{minor}.0",
        data_layout=layout,
        converts_from=converts,
        install_flags=flags,
        install_flags_erroring=erroring,
        docker_documented_min=Version(docker_doc),
        compose_v1_documented_min=Version(c1) if c1 else None,
        compose_v2_documented_min=Version(c2) if c2 else None,
        compose_v2_accepted=c2_ok,
        guide_oldest_from=Version(_GUIDE_OLDEST_FROM[minor]),
        schema_version=_SCHEMA_VERSION[minor],
        removed_components=removed,
        images=tuple(images),
        health_components=_HEALTH_COMPONENTS,
        external_pg_min=_pick(_EXTERNAL_PG_MIN, v)[1],
    )


# Releases newer than the tables, learned from their bundles in this process
# (harbor_ops.releases.learn); registered before the site file naming them is loaded.
_LEARNED: dict[Version, Release] = {}


@cache
def _known() -> tuple[Release, ...]:
    out = []
    for minor, last in _PATCHES.items():
        for patch in range(last + 1):
            out.append(_build(Version(f"{minor}.{patch}")))
    return tuple(out)


def all_releases() -> tuple[Release, ...]:
    """Every GA release 2.0.0 … 2.15.2, then the learned ones, oldest first."""
    return _known() + tuple(_LEARNED[v] for v in sorted(_LEARNED))


def register(rel: Release) -> None:
    """Know ``rel`` (learned from its bundle) for the rest of this process."""
    if rel.version <= newest_known().version:
        raise ValueError(f"Harbor {rel.version} is not newer than harborctl's tables")
    _LEARNED[rel.version] = rel


def unregister(version: Version) -> None:
    _LEARNED.pop(version, None)


def is_learned(version: Version) -> bool:
    return version in _LEARNED


def minors() -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.minor for r in all_releases()))


def latest_patch(minor: str) -> Release:
    return max((r for r in all_releases() if r.minor == minor), key=lambda r: r.version)


def newest() -> Release:
    return all_releases()[-1]


def newest_known() -> Release:
    """The newest release of harborctl's own tables (what a learned one inherits from)."""
    return _known()[-1]


def parse_version(text: str, *, field: str = "version") -> Version:
    """Parse ``X.Y.Z`` (a leading ``v`` allowed) or raise a UsageError naming the field."""
    raw = str(text).strip()
    try:
        v = Version(raw[1:] if raw[:1] in "vV" else raw)
    except InvalidVersion:
        raise UsageError(f"{field}: {text!r} is not a version; expected X.Y.Z such as "
                         f"{newest().version}") from None
    if len(v.release) != 3 or v.pre or v.post or v.dev or v.local:
        raise UsageError(f"{field}: {text!r} must be a GA release X.Y.Z such as {newest().version}")
    return v


def release(text: str | Version, *, field: str = "version") -> Release:
    """The release for ``text``, or a UsageError that lists what is known."""
    v = text if isinstance(text, Version) else parse_version(text, field=field)
    for r in all_releases():
        if r.version == v:
            return r
    minor = f"{v.major}.{v.minor}"
    if minor in _PATCHES:
        hint = f"the {minor} line has {minor}.0 … {minor}.{_PATCHES[minor]}"
    else:
        hint = f"harborctl knows {all_releases()[0].version} … {newest().version}"
    if v > newest().version:
        hint += (f"; `upgrade apply` learns a newer one from "
                 f"harbor-offline-installer-v{v}.tgz in --bundle-dir")
    raise UsageError(f"{field}: Harbor {v} is not a known GA release ({hint})")


def supported_minors() -> tuple[str, ...]:
    """The minors inside Harbor's support window (the newest three)."""
    return minors()[-SUPPORTED_MINOR_COUNT:]


def minor_index(r: Release) -> int:
    return minors().index(r.minor)
