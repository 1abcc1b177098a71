"""The role's host-side code shared by its modules and its upgrade-window helper
(module_utils/harbor_host_common.py): one judgement of Harbor's health answer, one symlink
swap. Each case runs through every caller: the install's health gate (harbor_host_state)
and the upgrade window's gate ask the same server and must name the same problem; the
release link is swapped the same way by harbor_host_files (tests/unit/test_host_files.py
runs it through Ansible) and by the window's switch."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.hosts.playbook import playbook_dir
from tests.unit.healthserver import HealthServer, doc, health_server
from tests.unit.scriptload import load_role_module, load_script

state = load_role_module("harbor_host_state")
common = load_script(playbook_dir() / "roles/harbor/module_utils/harbor_host_common.py",
                     "harbor_host_common_under_test")
uw = load_script(playbook_dir() / "roles/harbor/files/upgrade-window", "upgrade_window")
COMPONENTS = ["core", "database", "registry"]


CASES = [
    (doc("healthy", core="healthy", database="healthy", registry="healthy"), ""),
    (doc("unhealthy", core="unhealthy", database="healthy", registry="healthy"),
     "status unhealthy; unhealthy: core; missing: none"),
    (doc("healthy", core="healthy", database="healthy"),  # an older release lists fewer
     "status healthy; unhealthy: none; missing: registry"),
    # a component Harbor lists as unhealthy fails the gate whatever the overall status says
    (doc("healthy", core="healthy", database="healthy", registry="unhealthy"),
     "status healthy; unhealthy: registry; missing: none"),
    (doc("healthy", core="healthy", database="healthy", registry="healthy", trivy="starting"),
     "status healthy; unhealthy: trivy; missing: none"),
]


@pytest.mark.parametrize(("answer", "problem"), [*CASES, ({}, "no answer")])
def test_the_health_problem_names_what_is_wrong(answer: dict[str, Any], problem: str) -> None:
    assert common.health_problem(answer, COMPONENTS) == problem
    assert state.health_problem(answer, COMPONENTS) == problem


@pytest.fixture
def harbor() -> Iterator[HealthServer]:
    with health_server() as server:
        yield server


class _Alive:
    def check(self) -> None:
        return None


def _install_gate(url: str) -> str:
    problem: str = state.wait_healthy(url, False, COMPONENTS, wait=0, interval=0.01)[1]
    return problem


def _window_gate(url: str) -> str:
    cfg = {"data_volume": "/nonexistent", "snapshot": "/nonexistent", "health_url": url,
           "health_components": COMPONENTS, "validate_certs": False, "health_timeout": 0,
           "poll_interval": 0.01}
    try:
        uw.Window(cfg, _Alive()).wait_healthy()
    except uw.StepFailed as exc:
        return str(exc).removeprefix("Harbor is not healthy after 0 s: ")
    return ""


@pytest.mark.parametrize("gate", [_install_gate, _window_gate], ids=["install", "window"])
@pytest.mark.parametrize(("answer", "problem"), CASES)
def test_both_gates_judge_the_same_answer_the_same_way(
        harbor: HealthServer, gate: Callable[[str], str], answer: dict[str, Any],
        problem: str) -> None:
    harbor.answer(answer)
    assert gate(harbor.url) == problem


@pytest.mark.parametrize("gate", [_install_gate, _window_gate], ids=["install", "window"])
def test_no_answer_fails_both_gates(harbor: HealthServer, gate: Callable[[str], str]) -> None:
    harbor.answers = [b"[1, 2]"]  # JSON, but not Harbor's document
    assert gate(harbor.url).startswith("no answer")
    assert gate("http://127.0.0.1:9/api/v2.0/health").startswith("no answer")


def test_ask_health_says_why_there_is_no_answer(harbor: HealthServer) -> None:
    harbor.answers = [b"not json"]
    assert common.ask_health(harbor.url, False) == ({}, "Expecting value: line 1 column 1 "
                                                     "(char 0)")
    answer, why = common.ask_health("http://127.0.0.1:9/api/v2.0/health", False)
    assert answer == {} and "refused" in why.lower()


@pytest.mark.parametrize("swap", [
    common.swap_link,
    uw.swap_link,  # what the window's switch calls
], ids=["module_utils", "window"])
def test_the_link_is_swapped_in_one_rename_and_never_over_a_folder(
        tmp_path: Path, swap: Callable[[str, str], None]) -> None:
    link = tmp_path / "harbor"
    link.symlink_to("harbor-1")
    (tmp_path / f"harbor.tmp-{os.getpid()}").symlink_to("left-by-a-killed-run")
    swap("harbor-2", str(link))
    assert os.readlink(link) == "harbor-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harbor"]  # no temporary link
    swap("harbor-3", str(tmp_path / "fresh"))  # no link yet: made
    assert os.readlink(tmp_path / "fresh") == "harbor-3"
    link.unlink()
    link.mkdir()  # a release unpacked by hand where the link belongs: refused, left alone
    with pytest.raises(OSError, match="exists and is not a symlink"):
        swap("harbor-2", str(link))
    assert link.is_dir() and not link.is_symlink()
