"""harbor.yml for one exact Harbor release, built from the site's newest-name mapping.

Why a builder instead of a hand-written template per release: what differs between
releases (which keys exist, their defaults, renames, the old ``external_redis`` host/port
split, ``_version``) is data in :mod:`harbor_ops.releases.yml_schema`; this module only applies it.
The result is an ordered mapping that ``templates/harbor.yml.j2`` prints with YAML-safe
scalars, in the key order of Harbor's own template.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml

from harbor_ops.core.errors import RenderError
from harbor_ops.releases import yml_schema as schema
from harbor_ops.releases.versions import Release

VERSION_KEY = "_version"
MASK = "<secret>"
MASK_CHANGED = "<secret, changed>"
# Leaf names whose value is a secret wherever they appear in harbor.yml.
SECRET_LEAVES = frozenset({"harbor_admin_password", "password", "github_token",
                           *schema.STORAGE_SECRETS})
_SECRET_LINE = re.compile(
    r"^(?P<head>\s*(?:" + "|".join(sorted(SECRET_LEAVES)) + r"):)(?P<value>\s*\S.*)$")


def build(values: dict[str, Any], rel: Release) -> dict[str, Any]:
    """The harbor.yml mapping for ``rel``: defaults, then site values, renames, order.

    ``values`` is the site's harbor mapping with secrets already resolved.
    """
    v = rel.version
    doc: dict[str, Any] = {}
    for key in schema.KEYS:
        if key.active and key.available(v):
            _set(doc, key.path, copy.deepcopy(key.default_for(v)))
    _merge(doc, copy.deepcopy(values))
    doc.pop("version", None)
    for path in unavailable_keys(doc, rel):
        _delete(doc, path)
    for key in schema.KEYS:
        old = key.name_for(v)
        if old != key.path and _has(doc, key.path):
            _set(doc, old, _delete(doc, key.path))
    _split_redis_host(doc, rel)
    for required in ("hostname", "harbor_admin_password"):
        if doc.get(required) in (None, ""):
            raise RenderError(f"harbor.{required}: no value to render (Harbor's prepare needs it)")
    doc[VERSION_KEY] = rel.yml_version
    return _ordered(doc, "")


def unavailable_keys(values: dict[str, Any], rel: Release) -> list[str]:
    """Keys of ``values`` that ``rel``'s harbor.yml does not have: :func:`build` leaves them
    out. An upgrade lists them for each intermediate stop (they are valid at the target)."""
    out = []
    for path in _leaves(values):
        row = schema.lookup(path)
        if row is not None and not row.available(rel.version):
            out.append(path)
    return out


def _split_redis_host(doc: dict[str, Any], rel: Release) -> None:
    """Before 2.1.0 ``external_redis`` took ``host`` and ``port`` separately (facts §2.4)."""
    redis = doc.get("external_redis")
    if rel.version >= schema.REDIS_HOST_PORT_SPLIT_UNTIL or not isinstance(redis, dict):
        return
    host = redis.get("host")
    if isinstance(host, str) and ":" in host and "," not in host:
        name, _, port = host.rpartition(":")
        redis["host"] = name.strip("[]")
        redis["port"] = int(port) if port.isdigit() else port
    elif host is not None and "port" not in redis:
        redis["port"] = 6379


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _leaves(d: dict[str, Any], prefix: str = ""):  # type: ignore[no-untyped-def]
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path


def _has(d: dict[str, Any], path: str) -> bool:
    node: Any = d
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[leaf] = value


def _delete(d: dict[str, Any], path: str) -> Any:
    """Remove a leaf and any mapping it leaves empty; return the removed value."""
    *parents, leaf = path.split(".")
    chain = [d]
    for part in parents:
        chain.append(chain[-1][part])
    value = chain[-1].pop(leaf)
    for parent, part in zip(reversed(chain[:-1]), reversed(parents), strict=True):
        if parent[part]:
            break
        del parent[part]
    return value


def _rank() -> dict[str, int]:
    """Position of every path (and prefix) in Harbor's template order; ``_version`` after log."""
    order: dict[str, int] = {}
    for key in schema.KEYS:
        parts = key.path.split(".")
        for i in range(1, len(parts) + 1):
            order.setdefault(".".join(parts[:i]), len(order))
        for _, old in key.renamed:
            order.setdefault(old, order[key.path])
        if key.path == "log.local.location":
            order.setdefault(VERSION_KEY, len(order))
    order.setdefault("external_redis.port", order["external_redis.host"])
    return order


_RANK = _rank()


def _ordered(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    unknown = len(_RANK)
    keys = sorted(d, key=lambda k: _RANK.get(prefix + k, unknown))  # stable: site order kept
    return {k: _ordered(d[k], f"{prefix}{k}.") if isinstance(d[k], dict) else d[k]
            for k in keys}


def yaml_scalar(value: Any) -> str:
    """One YAML scalar that PyYAML (Harbor's prepare) reads back as exactly ``value``."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
        text = text.removesuffix("\n").removesuffix("\n...").removesuffix("...")
        return text if "\n" not in text else json.dumps(value)
    if isinstance(value, bool | int | float):
        return yaml.safe_dump(value).split("\n", 1)[0]
    return json.dumps(value)


def mask(text: str, *, previous: str | None = None) -> str:
    """harbor.yml text with every secret value replaced; a secret that differs from
    ``previous`` is marked as changed so a diff still shows that it moved."""
    before = set(previous.splitlines()) if previous is not None else None
    out = []
    for line in text.splitlines(keepends=True):
        m = _SECRET_LINE.match(line.rstrip("\n"))
        if m and m.group("value").strip():
            marker = MASK if before is None or line.rstrip("\n") in before else MASK_CHANGED
            line = f"{m.group('head')} {marker}" + ("\n" if line.endswith("\n") else "")
        out.append(line)
    return "".join(out)
