"""harbor_host_state's comparison of host files: the no-change shortcut of `harborctl install`
skips every other task when it finds nothing different, so each kind of difference (content,
mode, owner, type, a missing file) must be found, and an entry for another kind of host must
be left out."""

from __future__ import annotations

import grp
import hashlib
import importlib.util
import os
import pwd
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
