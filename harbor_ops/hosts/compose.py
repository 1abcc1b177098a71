"""The one way to find the Compose command that runs Harbor's project on a host.

Why one: install.sh, the boot unit, the boot cron line and a restore must drive Harbor's
compose project with the same Compose. install.sh of a release that accepts the plugin
(2.5.4+) prefers ``docker compose`` and falls back to ``docker-compose``; older ones run
only ``docker-compose``. :func:`pick` applies that rule to a host's facts (the preflight
probe on a remote host, :func:`local_facts` here), so a host with Compose v2 only comes
back after a reboot with ``docker compose``.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from harbor_ops.hosts import probe

DEFAULT_DOCKER = "/usr/bin/docker"
DEFAULT_COMPOSE_V1 = "/usr/bin/docker-compose"
# What a host may report as a tool's path: it becomes a word of the boot cron line, the
# systemd environment file and the upgrade helper's argv, so nothing a shell would read as
# more than one plain absolute path (no space, quote, `$`, `;`, ...).
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+/-]{1,255}")


def pick(facts: dict[str, Any], *, plugin_accepted: bool = True) -> str | None:
    """Pure: the Compose command (words joined by spaces) for the host ``facts`` describe.

    None when the host has no Compose the release can use (preflight's compose check
    fails then and says what to install).
    """
    v2 = (facts.get("compose_v2") or {}).get("rc") == 0
    v1 = (facts.get("compose_v1") or {}).get("rc") == 0
    paths = facts.get("paths") or {}
    if plugin_accepted and v2:
        return f"{_safe(paths.get('docker'), DEFAULT_DOCKER)} compose"
    if v1:
        return _safe(paths.get("docker-compose"), DEFAULT_COMPOSE_V1)
    return None


def _safe(reported: object, default: str) -> str:
    """The path a host reported, when it is one plain absolute path; else the default.

    The probe's answer is untrusted input: a path with a space or a shell character would
    choose words of the commands written to that host."""
    if isinstance(reported, str) and SAFE_PATH.fullmatch(reported):
        return reported
    return default


def local_facts() -> dict[str, Any]:
    """The Compose facts of THIS host, gathered as the probe gathers them on a remote one."""
    return {"compose_v2": probe.run(["docker", "compose", "version", "--short"]),
            "compose_v1": probe.run(["docker-compose", "version", "--short"]),
            "paths": probe.tool_paths()}


def local_command(*, plugin_accepted: bool = True) -> list[str]:
    """This host's Compose as an argv prefix (``docker compose`` when nothing is found,
    so the error names the modern command)."""
    found = pick(local_facts(), plugin_accepted=plugin_accepted)
    return found.split() if found else [shutil.which("docker") or "docker", "compose"]
