"""The one way to find the Compose command (hosts.compose.pick), over probe facts, and the
probe's Compose v1 version."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.hosts import compose, probe
from tests.bed.fixtures import unavailable

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


def _script(folder: Path, head: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "docker-compose"
    path.write_text(f"#!{sys.executable}\n{head}\n{body}\n")
    path.chmod(0o755)
    return path


ENTRY = "# EASY-INSTALL-ENTRY-SCRIPT: 'docker-compose==1.29.2','console_scripts','docker-compose'"


def test_compose_v1s_python_is_the_entry_scripts_interpreter_and_nothing_else(
        tmp_path: Path) -> None:
    assert probe.compose_v1_python(str(_script(tmp_path / "a", ENTRY, ""))) == [sys.executable]
    assert probe.compose_v1_python(str(_script(tmp_path / "b", "# a wrapper", ""))) is None
    binary = tmp_path / "v2"
    binary.write_bytes(b"\x7fELF\x02\x01\x01 docker-compose console_scripts")
    assert probe.compose_v1_python(str(binary)) is None
    assert probe.compose_v1_python(str(tmp_path / "missing")) is None
    assert probe.compose_v1_python(None) is None


def test_a_v1_script_whose_interpreter_cannot_import_compose_is_asked_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's interpreter has no `compose` package: the command answers, as before."""
    _script(tmp_path / "bin", ENTRY, "import sys; print('1.29.1' if sys.argv[1:] == "
            "['version', '--short'] else 'wrong arguments')")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert probe.compose_v1() == {"rc": 0, "out": "1.29.1", "err": ""}


def test_the_installed_compose_v1_gives_the_version_its_command_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by its interpreter, never from a `compose` in the working folder."""
    path = shutil.which("docker-compose")
    if not path or not probe.compose_v1_python(path):
        unavailable("needs compose v1's Python script (docker-compose 1.x)")
    asked = probe.run(["docker-compose", "version", "--short"])
    assert asked["rc"] == 0
    (tmp_path / "compose.py").write_text("__version__ = '1.0.0'\n")
    monkeypatch.chdir(tmp_path)
    assert probe.compose_v1()["out"] == asked["out"]
