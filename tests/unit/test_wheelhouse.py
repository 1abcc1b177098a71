"""What the offline wheelhouse (scripts/wheelhouse) relies on, checked without building one.

The wheelhouse carries ansible-core and no Galaxy collection: that holds only while every
module the playbooks call is an ``ansible.builtin`` one (or a role's own). Every runtime
dependency must have an exact pin in .ci/requirements.txt, where the script reads versions.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import ModuleType

import yaml

from tests.unit.scriptload import load_script

ROOT = Path(__file__).resolve().parents[2]
# Task keywords that are not module names.
KEYWORDS = {"name", "when", "register", "loop", "loop_control", "changed_when", "failed_when",
            "check_mode", "become", "become_user", "environment", "no_log", "tags", "vars",
            "notify", "listen", "block", "rescue", "always", "until", "retries", "delay",
            "ignore_errors", "delegate_to", "run_once", "args", "diff", "throttle", "timeout",
            "async", "poll", "any_errors_fatal", "module_defaults", "collections"}


def _wheelhouse() -> ModuleType:
    return load_script(ROOT / "scripts/wheelhouse", "wheelhouse")


def _tasks(node: object) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    if isinstance(node, list):
        for item in node:
            out += _tasks(item)
    elif isinstance(node, dict):
        out.append(node)
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks",
                    "handlers"):
            out += _tasks(node.get(key))
    return out


def _all_tasks() -> list[dict[str, object]]:
    """Every task of the roles and of the top-level plays."""
    tasks = []
    for path in (ROOT / "playbooks/roles").glob("*/*/*.yml"):
        if path.parent.name in ("tasks", "handlers"):
            tasks += _tasks(yaml.safe_load(path.read_text()))
    for path in (ROOT / "playbooks").glob("*.yml"):
        plays = yaml.safe_load(path.read_text())
        if isinstance(plays, list):  # galaxy.yml is a mapping, not plays
            for play in plays:
                for key in ("tasks", "pre_tasks", "post_tasks", "handlers"):
                    tasks += _tasks(play.get(key))
    return tasks


def test_playbooks_use_only_builtin_modules() -> None:
    own = {p.stem for folder in ("library", "action_plugins")  # the roles' own plugins
           for p in (ROOT / "playbooks/roles").glob(f"*/{folder}/*.py")}
    used = set()
    for task in _all_tasks():
        used |= {k for k in task if k not in KEYWORDS}
    assert "ansible.builtin.copy" in used  # the walk found the tasks
    foreign = sorted(m for m in used if not m.startswith("ansible.builtin.") and m not in own)
    assert foreign == [], f"needs a collection the wheelhouse does not carry: {foreign}"


def test_every_runtime_dependency_is_pinned() -> None:
    wheelhouse = _wheelhouse()
    pins = wheelhouse.read_pins()
    requirements = wheelhouse.runtime_requirements(pins)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert len(requirements) == len(project["dependencies"])
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+(\[[a-z]+\])?==[0-9][0-9a-z.]*", r)
               for r in requirements), requirements
    assert "pip" in pins
