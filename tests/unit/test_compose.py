"""The one way to find the Compose command (hosts.compose.pick), over probe facts."""

from __future__ import annotations

from typing import Any

import pytest

from harbor_ops.hosts import compose

OK, MISSING = {"rc": 0, "out": "2.26.1"}, {"rc": 127, "out": "", "err": "not found"}
PATHS = {"docker": "/usr/local/bin/docker", "docker-compose": "/usr/bin/docker-compose"}


@pytest.mark.parametrize(("v2", "v1", "accepted", "paths", "expected"), [
    (OK, MISSING, True, PATHS, "/usr/local/bin/docker compose"),  # Compose v2 only
    (OK, OK, True, PATHS, "/usr/local/bin/docker compose"),  # install.sh prefers the plugin
    (OK, OK, False, PATHS, "/usr/bin/docker-compose"),  # <= 2.5.3 runs only docker-compose
    (MISSING, OK, True, PATHS, "/usr/bin/docker-compose"),
    (OK, MISSING, False, PATHS, None),  # preflight's compose check fails on this host
    (MISSING, MISSING, True, PATHS, None),
    (OK, MISSING, True, {}, "/usr/bin/docker compose"),  # an older probe: no paths
    (MISSING, OK, True, None, "/usr/bin/docker-compose"),
])
def test_pick(v2: dict[str, Any], v1: dict[str, Any], accepted: bool,
              paths: dict[str, str] | None, expected: str | None) -> None:
    facts = {"compose_v2": v2, "compose_v1": v1, "paths": paths}
    assert compose.pick(facts, plugin_accepted=accepted) == expected


@pytest.mark.parametrize("reported", [
    "/usr/bin/docker; touch /tmp/owned", "/opt/my docker/bin/docker", "docker", "$(id)",
    "/usr/bin/docker\n@reboot root id", "/usr/bin/`id`", 42, "/" + "a" * 300,
])
def test_a_reported_path_that_is_not_one_plain_absolute_path_is_not_used(reported: object) -> None:
    """What the host printed never becomes a shell word of its cron line or boot unit."""
    both = {"compose_v2": OK, "compose_v1": MISSING, "paths": {"docker": reported}}
    assert compose.pick(both) == "/usr/bin/docker compose"
    v1 = {"compose_v2": MISSING, "compose_v1": OK, "paths": {"docker-compose": reported}}
    assert compose.pick(v1) == "/usr/bin/docker-compose"


def test_a_plain_path_with_dots_plus_and_dashes_is_kept() -> None:
    facts = {"compose_v2": OK, "compose_v1": MISSING,
             "paths": {"docker": "/opt/docker-24.0_1+deb/bin/docker"}}
    assert compose.pick(facts) == "/opt/docker-24.0_1+deb/bin/docker compose"
