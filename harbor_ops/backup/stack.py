"""Harbor's compose stack as a restore drives it: stop, database alone, start, health.

A restore must act on what install.sh really created (the compose project and service
names), on the engine the database source talks to (``DOCKER_HOST`` from the
environment), and must not call Harbor back until ``/api/v2.0/health`` says so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from harbor_ops.backup.sources import DbSource
from harbor_ops.core.errors import BackupError, HealthError
from harbor_ops.hosts import compose, health
from harbor_ops.hosts.health import HealthEndpoint

# Harbor's core migrates its schema at start; a first start after a restore can take minutes.
HEALTH_TIMEOUT = 300.0


class HarborStack:
    """Harbor's compose project as install.sh left it, driven like its own scripts do.

    The project name is read from the running containers' compose label (harborctl's
    role installs with ``-p harbor``; a hand install uses the folder name), and the
    database service is the one whose container is ``harbor-db`` in docker-compose.yml,
    so both follow what is really installed rather than a guess.
    """

    def __init__(self, harbor_dir: Path, target: DbSource,
                 command: Sequence[str] | None = None) -> None:
        self.harbor_dir = harbor_dir
        self.command = list(command) if command else compose_command()
        self.env = {**os.environ, **(target.env() if target.kind == "docker" else {})}
        self.docker = getattr(target, "docker", "docker")
        container = getattr(target, "container", "harbor-db")
        self.db_service = _service_of(harbor_dir / "docker-compose.yml", container)
        self.project = self._project(container)

    def _project(self, container: str) -> str | None:
        for name in (container, "harbor-core"):
            try:
                proc = subprocess.run(
                    [self.docker, "inspect", "-f",
                     '{{index .Config.Labels "com.docker.compose.project"}}', name],
                    capture_output=True, text=True, timeout=60, check=False, env=self.env)
            except (OSError, subprocess.TimeoutExpired):
                return None
            label = proc.stdout.strip()
            if proc.returncode == 0 and label and label != "<no value>":
                return label
        return None

    def compose(self, *args: str) -> None:
        argv = [*self.command, *(["-p", self.project] if self.project else []), *args]
        # In the release folder itself, as install.sh runs: Compose v2 takes its folder from
        # $PWD, and from the symlink's path it would see other bind mounts and recreate.
        folder = os.path.realpath(self.harbor_dir)
        try:
            proc = subprocess.run(argv, cwd=folder, capture_output=True, text=True,
                                  timeout=600, check=False, env={**self.env, "PWD": folder})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackupError(f"`{' '.join(argv)}` in {self.harbor_dir} failed: {exc}") from None
        if proc.returncode != 0:
            raise BackupError(f"`{' '.join(argv)}` in {self.harbor_dir} failed: "
                              f"{proc.stderr.strip()[-500:]}")


def compose_command() -> list[str]:
    """The Compose install.sh uses on this host (:mod:`harbor_ops.hosts.compose`)."""
    return compose.local_command()


def _service_of(compose_file: Path, container: str) -> str:
    """The compose service whose container is ``container`` (Harbor names it postgresql)."""
    try:
        doc = yaml.safe_load(compose_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "postgresql"
    for name, body in (doc.get("services") or {}).items():
        if isinstance(body, dict) and body.get("container_name") == container:
            return str(name)
    return "postgresql"


def wait_healthy(target: HealthEndpoint | str, *, timeout: float = HEALTH_TIMEOUT,
                 interval: float = 1.0) -> None:
    """After a restore, wait (bounded) until Harbor's health API says every component is up."""
    try:
        health.wait_healthy(target, timeout=timeout, interval=interval)
    except HealthError as exc:
        raise HealthError(f"the backup was restored and Harbor started, but {exc.message}",
                          hint="docker logs harbor-core; a Harbor older than the backup "
                          "refuses its schema") from None
