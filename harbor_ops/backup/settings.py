"""From a site file to the keyword arguments of the backup core functions.

The core functions take explicit arguments (testable without a site file); this is
the one place that knows where a site keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harbor_ops.backup.engine import HostFiles
from harbor_ops.backup.sources import DbSource, DockerExecSource, ExternalSource
from harbor_ops.hosts import health
from harbor_ops.hosts.health import HealthEndpoint
from harbor_ops.site.model import Keep, Remote, Site


@dataclass(frozen=True)
class BackupSettings:
    backup_dir: Path
    keep: Keep
    source: DbSource
    files: HostFiles
    harbor_version: str
    harbor_dir: Path
    hostname: str
    remote: Remote | None = None
    health_url: HealthEndpoint | None = None

    @classmethod
    def from_site(cls, site: Site, *, with_secrets: bool = True) -> BackupSettings:
        harbor: dict[str, Any] = site.harbor
        if with_secrets and "external_database" in harbor:
            from harbor_ops.site.load import resolve_secrets

            harbor = resolve_secrets(site)
        ext = (harbor.get("external_database") or {}).get("harbor")
        source: DbSource
        if ext:
            source = ExternalSource(host=str(ext["host"]), port=int(ext.get("port", 5432)),
                                    user=str(ext["username"]),
                                    dbname=str(ext.get("db_name", "registry")),
                                    password=ext.get("password"), sslmode=ext.get("ssl_mode"))
        else:
            source = DockerExecSource()
        https = harbor.get("https") or {}
        certs = tuple(Path(https[k]) for k in ("certificate", "private_key") if https.get(k))
        harbor_dir = site.install.dir / "harbor"
        harbor_yml = harbor_dir / "harbor.yml"
        if not harbor_yml.exists() and (site.install.dir / "harbor.yml").exists():
            harbor_dir, harbor_yml = site.install.dir, site.install.dir / "harbor.yml"
        files = HostFiles(data_volume=Path(harbor.get("data_volume", "/data")),
                          harbor_yml=harbor_yml, certificates=certs,
                          include_redis=site.backup.include_redis)
        return cls(backup_dir=site.backup.dir, keep=site.backup.keep, source=source,
                   files=files, harbor_version=str(site.release.version),
                   harbor_dir=harbor_dir, hostname=site.hostname, remote=site.backup.remote,
                   health_url=health.endpoint(harbor))


def load_settings(config: Path) -> BackupSettings:
    from harbor_ops.site.load import load_site

    return BackupSettings.from_site(load_site(config))
