"""Where the playbooks and templates are: top-level folders in a checkout, inside the wheel
when installed (pyproject maps ``playbooks/`` and ``templates/`` into ``harbor_ops/``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


@cache
def shipped_dir(name: str) -> Path:
    """The folder ``name`` (``playbooks`` or ``templates``): in the wheel, else the checkout's."""
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"harborctl's {name}/ folder is missing from {_PACKAGE}")
