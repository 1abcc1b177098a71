"""The leaf of site validation: the problem collector and the path resolver every check uses.

It imports nothing of harborctl, so load, checks and harbor_section can all depend on it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Problems:
    """Collects validation problems with their field paths."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.warnings: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{path}: {message}")


class PathResolver:
    """Resolves relative paths against the site file's folder."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def path(self, value: str) -> Path:
        pth = Path(os.path.expanduser(str(value)))
        return pth if pth.is_absolute() else (self.base / pth)

    def absolutize_harbor(self, harbor: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(harbor)
        for dotted in ("https.certificate", "https.private_key", "internal_tls.dir",
                       "storage_service.ca_bundle", "uaa.ca_file",
                       "external_redis.tlsOptions.rootCA"):
            parent, _, leaf = dotted.rpartition(".")
            node = get_dotted(out, parent) if parent else out
            if isinstance(node, dict) and isinstance(node.get(leaf), str):
                node[leaf] = str(self.path(node[leaf]))
        for node in walk_dicts(out):
            for key in list(node):
                if key.endswith("_file") and isinstance(node[key], str):
                    node[key] = str(self.path(node[key]))
        return out


def get_dotted(d: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in nested mappings, or None."""
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def walk_dicts(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``d`` and every mapping nested in it."""
    yield d
    for v in d.values():
        if isinstance(v, dict):
            yield from walk_dicts(v)
