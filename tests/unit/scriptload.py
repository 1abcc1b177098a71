"""Load a script without a ``.py`` suffix (scripts/wheelhouse, the role's upgrade-window),
or one of the role's modules, as a module, so unit tests call its functions directly."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load_role_module(name: str) -> ModuleType:
    """The harbor role's module ``name`` (library/), its module_utils importable as
    Ansible makes them (``ansible.module_utils.<file>``) for a role from playbooks/."""
    from harbor_ops.hosts.playbook import playbook_dir

    role = playbook_dir() / "roles" / "harbor"
    for util in sorted((role / "module_utils").glob("*.py")):
        key = f"ansible.module_utils.{util.stem}"
        if key not in sys.modules:
            sys.modules[key] = load_script(util, key)
    return load_script(role / "library" / f"{name}.py", name)
