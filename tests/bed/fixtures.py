"""pytest plugin: real Docker engine and real test hosts, set up once per session.

Load with ``pytest_plugins = ["tests.bed.fixtures"]`` in tests/conftest.py. Fixtures:

* ``docker_engine`` (session) -- a private controller ``DockerEngine``.
* ``testbed`` (session)       -- a ``TestBed`` with hosts h1..hN up (N =
  ``$HARBORCTL_TESTBED_HOSTS``, default 4), dockerd running on each, on the first free bed
  network (so several sessions can run at once).
* ``fresh_host`` (function)   -- h1, reset to the golden state before the test.

When the machine cannot run the bed (not root, a tool missing) the fixtures skip with the
reason, except under ``CI=true`` where they fail: CI must never pass by skipping.
Finalizers tear everything down even when a test or the setup fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.bed.dockerd import DockerEngine
from tests.bed.hosts import Host, TestBed

ENGINE_TOOLS = ("dockerd", "docker-compose", "mount", "umount")
BED_TOOLS = (
    "debootstrap",
    "ip",
    "nsenter",
    "unshare",
    "chroot",
    "pivot_root",
    "rsync",
    "ssh",
    "ssh-keygen",
    "mount",
    "umount",
)


def missing_prerequisites(tools: tuple[str, ...]) -> list[str]:
    """What this machine lacks to run the bed, in words a developer can act on."""
    missing = [] if os.geteuid() == 0 else ["root (run the integration tests as root)"]
    missing += [f"`{tool}` (see .ci/provision)" for tool in tools if shutil.which(tool) is None]
    return missing


def require(tools: tuple[str, ...]) -> None:
    """Skip (or, under CI=true, fail) when a prerequisite is missing."""
    missing = missing_prerequisites(tools)
    if missing:
        unavailable("integration test bed needs: " + ", ".join(missing))


def unavailable(message: str) -> NoReturn:
    """Skip with ``message``; under CI=true fail instead, since CI must not pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> DockerEngine:
    """A dockerd of our own for the whole session (no docker0, no iptables)."""
    require(ENGINE_TOOLS)
    engine = DockerEngine(tmp_path_factory.mktemp("engine"))
    request.addfinalizer(engine.stop)
    engine.start()
    return engine


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TestBed:
    """Test hosts h1..hN with sshd and dockerd, an ssh_config and an inventory."""
    require(BED_TOOLS)
    count = int(os.environ.get("HARBORCTL_TESTBED_HOSTS", "4"))
    bed = TestBed.allocate(tmp_path_factory.mktemp("bed"))
    request.addfinalizer(bed.down)
    bed.up([f"h{i}" for i in range(1, count + 1)], docker=True)
    return bed


@pytest.fixture
def fresh_host(testbed: TestBed) -> Iterator[Host]:
    """h1 as the golden image left it: no files or containers from earlier tests."""
    yield testbed.reset("h1")
