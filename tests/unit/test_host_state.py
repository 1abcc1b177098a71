"""harbor_host_state's comparison of host files: the no-change shortcut of `harborctl install`
skips every other task when it finds nothing different, so each kind of difference (content,
mode, owner, type, a missing file) must be found, and an entry for another kind of host must
be left out."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.healthserver import HealthServer, doc, health_server
from tests.unit.scriptload import load_role_module

state = load_role_module("harbor_host_state")
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def _entry(path: Path, text: str | None = "wanted\n", mode: str = "0644",
           **more: Any) -> dict[str, Any]:
    entry = {"path": str(path), "mode": mode, "owner": OWNER, "group": GROUP,
             "state": "file" if text is not None else "directory",
             "sha256": hashlib.sha256(text.encode()).hexdigest() if text is not None else ""}
    return {**entry, **more}


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    path = tmp_path / "harbor"
    path.write_text("wanted\n")
    path.chmod(0o644)
    return path


def test_an_installed_file_as_wanted_does_not_differ(installed: Path) -> None:
    assert not state.differs(_entry(installed))


@pytest.mark.parametrize("spoil", [
    lambda p: p.write_text("wanted\n# edited by hand\n"),
    lambda p: p.chmod(0o600),
    lambda p: p.unlink(),
    lambda p: (p.unlink(), p.mkdir()),
    lambda p: (p.rename(p.with_name("real")), p.symlink_to(p.with_name("real"))),
], ids=["content", "mode", "missing", "a-folder", "a-symlink"])
def test_each_difference_is_found(installed: Path, spoil: Any) -> None:
    spoil(installed)
    assert state.differs(_entry(installed))


def test_another_owner_differs(installed: Path) -> None:
    assert state.differs({**_entry(installed), "owner": "nobody-else-" + OWNER})


def test_folders_compare_type_mode_and_owner(tmp_path: Path) -> None:
    folder = tmp_path / "helpers"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert not state.differs(_entry(folder, None, "0755"))
    assert state.differs(_entry(folder, None, "0700"))
    assert state.differs(_entry(tmp_path / "absent", None, "0755"))


def test_entries_for_another_kind_of_host_are_left_out(tmp_path: Path) -> None:
    assert state.wanted({}, systemd=False)
    assert state.wanted({"systemd": True}, systemd=True)
    assert not state.wanted({"systemd": True}, systemd=False)
    assert not state.wanted({"systemd": False}, systemd=True)
    assert not state.wanted({"needs": str(tmp_path / "no-nginx")}, systemd=False)
    assert state.wanted({"needs": str(tmp_path)}, systemd=False)


def test_health_without_an_answer_is_empty() -> None:
    assert state.health("", False) == {}
    assert state.health("http://127.0.0.1:9/api/v2.0/health", False) == {}


COMPONENTS = ["core", "database", "registry"]


STARTING = 3  # unhealthy answers before the healthy one


@pytest.fixture
def harbor() -> Iterator[HealthServer]:
    with health_server() as server:
        server.answer(*[doc("unhealthy", core="unhealthy", database="healthy",
                            registry="healthy")] * STARTING,
                      doc("healthy", core="healthy", database="healthy", registry="healthy"))
        yield server


def test_the_wait_asks_on_the_host_until_harbor_is_healthy(harbor: HealthServer) -> None:
    answer, problem, _ = state.wait_healthy(harbor.url, False, COMPONENTS, wait=30,
                                            interval=0.01)
    assert problem == "" and answer["status"] == "healthy"
    assert harbor.asked == STARTING + 1  # it stopped at the first healthy answer


def test_the_wait_is_bounded_in_tries_and_names_the_last_problem(
        harbor: HealthServer) -> None:
    harbor.answer(doc("unhealthy", core="unhealthy", database="healthy", registry="healthy"))
    answer, problem, _ = state.wait_healthy(harbor.url, False, COMPONENTS, wait=0.02,
                                            interval=0.01)
    assert problem == "status unhealthy; unhealthy: core; missing: none"
    assert answer["status"] == "unhealthy" and harbor.asked <= 3
    _, once, _ = state.wait_healthy(harbor.url, False, COMPONENTS, wait=0, interval=0.01)
    assert once and harbor.asked <= 4  # wait 0: one request
    assert harbor.asked >= 2


def test_no_health_url_is_never_healthy() -> None:
    assert state.wait_healthy("", False, COMPONENTS, wait=0, interval=0.25)[1] == "not asked"


def test_the_gate_writes_the_stamp_whole_and_0644(tmp_path: Path) -> None:
    stamp = tmp_path / ".harborctl-installed"
    stamp.write_text("old\n")
    stamp.chmod(0o600)
    state.write_stamp(str(stamp), "  abc def 1 \n")
    assert stamp.read_text() == "abc def 1\n"
    assert stamp.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [stamp.name]  # no temporary file left
