"""harbor_host_state's comparison of host files: the no-change shortcut of `harborctl install`
skips every other task when it finds nothing different, so each kind of difference (content,
mode, owner, type, a missing file) must be found, and an entry for another kind of host must
be left out."""

from __future__ import annotations

import grp
import hashlib
import http.server
import importlib.util
import json
import os
import pwd
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from harbor_ops.hosts.playbook import playbook_dir


def _module() -> ModuleType:
    path = playbook_dir() / "roles" / "harbor" / "library" / "harbor_host_state.py"
    spec = importlib.util.spec_from_file_location("harbor_host_state", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


state = _module()
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


def _doc(status: str, **components: str) -> dict[str, Any]:
    return {"status": status,
            "components": [{"name": n, "status": s} for n, s in components.items()]}


@pytest.mark.parametrize(("answer", "problem"), [
    (_doc("healthy", core="healthy", database="healthy", registry="healthy"), ""),
    ({}, "no answer"),
    (_doc("unhealthy", core="unhealthy", database="healthy", registry="healthy"),
     "status unhealthy; unhealthy: core; missing: none"),
    (_doc("healthy", core="healthy", database="healthy"),  # an older release lists fewer
     "status healthy; unhealthy: none; missing: registry"),
])
def test_the_health_problem_names_what_is_wrong(answer: dict[str, Any], problem: str) -> None:
    assert state.health_problem(answer, COMPONENTS) == problem


class _Harbor(http.server.BaseHTTPRequestHandler):
    """Harbor's health endpoint: unhealthy for the first ``starting`` requests."""

    starting = 3
    asked = 0

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        type(self).asked += 1
        up = "healthy" if type(self).asked > type(self).starting else "unhealthy"
        body = json.dumps(_doc(up, core=up, database="healthy", registry="healthy")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def harbor() -> Iterator[str]:
    _Harbor.asked = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Harbor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v2.0/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_wait_asks_on_the_host_until_harbor_is_healthy(harbor: str) -> None:
    answer, problem, _ = state.wait_healthy(harbor, False, COMPONENTS, wait=30, interval=0.01)
    assert problem == "" and answer["status"] == "healthy"
    assert _Harbor.asked == _Harbor.starting + 1  # it stopped at the first healthy answer


def test_the_wait_is_bounded_in_tries_and_names_the_last_problem(
        harbor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Harbor, "starting", 100)  # never healthy here
    answer, problem, _ = state.wait_healthy(harbor, False, COMPONENTS, wait=0.02,
                                            interval=0.01)
    assert problem == "status unhealthy; unhealthy: core; missing: none"
    assert answer["status"] == "unhealthy" and _Harbor.asked <= 3
    _, once, _ = state.wait_healthy(harbor, False, COMPONENTS, wait=0, interval=0.01)
    assert once and _Harbor.asked <= 4  # wait 0: one request
    assert _Harbor.asked >= 2


def test_no_health_url_is_never_healthy() -> None:
    assert state.wait_healthy("", False, COMPONENTS, wait=0, interval=0.25)[1] == "not asked"
