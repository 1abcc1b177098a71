"""The validated site file, as plain frozen dataclasses.

:func:`harbor_ops.site.load.load_site` builds a :class:`Site`; everything else reads it.
The ``harbor`` mapping keeps harbor.yml's own (newest) key names; secrets stay
unresolved there (``password_file`` / ``password_env`` siblings) until
:func:`harbor_ops.site.load.resolve_secrets` is called by the one step that writes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harbor_ops.releases.versions import Release


@dataclass(frozen=True)
class FrontTLS:
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class FrontCache:
    path: Path = Path("/var/cache/nginx/harbor")
    max_size: str = "10g"
    inactive: str = "7d"


@dataclass(frozen=True)
class Front:
    """The Nginx front users reach; plain http when ``tls`` is None."""

    listen_address: str
    listen_port: int
    server_name: str
    upstream: str  # http(s)://host:port of Harbor's own proxy
    tls: FrontTLS | None = None
    cache: FrontCache | None = None


@dataclass(frozen=True)
class Logrotate:
    rotate: int = 14
    max_size: str = "200M"
    max_age_days: int = 30


@dataclass(frozen=True)
class Keep:
    daily: int = 7
    weekly: int = 4
    monthly: int = 6


@dataclass(frozen=True)
class Encryption:
    """age keys for every backup copy kept off the Harbor host (public keys only need
    to be here to encrypt; the identity only where a copy is brought back)."""

    recipients: tuple[str, ...] = ()
    recipients_file: Path | None = None
    identity_file: Path | None = None


@dataclass(frozen=True)
class Remote:
    host: str
    path: str
    user: str = "root"
    port: int = 22
    key_file: Path | None = None
    keep: Keep | None = None


@dataclass(frozen=True)
class Backup:
    dir: Path = Path("/var/backups/harbor")
    at: str = "02:30"  # HH:MM local time of the nightly backup
    jitter_minutes: int = 15
    keep: Keep = field(default_factory=Keep)
    include_redis: bool = False
    remote: Remote | None = None
    encryption: Encryption | None = None
    parallel: int = 2  # SSH hosts backed up at once from the controller
    # Where an SSH host's dump is compressed: "host" (there when it has zstd, else on the
    # controller; the faster in bench_backup --remote) or "controller".
    compress_on: str = "host"


@dataclass(frozen=True)
class Agent:
    status_file: Path = Path("/var/lib/harborctl/status.json")
    metrics_dir: Path | None = None
    bundle_dir: Path | None = None
    drill_weekday: str = "sunday"
    disk_threshold_percent: int = 85


@dataclass(frozen=True)
class Install:
    dir: Path = Path("/opt/harbor")
    with_trivy: bool = False
    bundle_dir: Path = Path("/opt/harbor-bundles")
    # OpenPGP public key(s) that must have signed the bundle (<bundle>.asc); None: unchecked.
    bundle_keyring: Path | None = None


@dataclass(frozen=True)
class HostEntry:
    name: str
    address: str | None = None
    connection: str = "ssh"  # ssh | local
    user: str = "root"
    port: int = 22
    ssh_key_file: Path | None = None


@dataclass(frozen=True)
class Site:
    """A validated site file."""

    release: Release
    harbor: dict[str, Any]  # harbor.yml keys (newest names), without `version`
    front: Front | None
    logrotate: Logrotate
    backup: Backup
    agent: Agent
    install: Install
    hosts: tuple[HostEntry, ...]
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def hostname(self) -> str:
        return str(self.harbor["hostname"])

    @property
    def protocol(self) -> str:
        return "https" if "https" in self.harbor else "http"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["release"] = str(self.release.version)
        return d
