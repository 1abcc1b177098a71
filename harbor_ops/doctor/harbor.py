"""Checks only Harbor can answer: component health, system info, storage space.

They run when ``/api/v2.0/ping`` answers ``Pong``. ``/health`` needs no login; the version,
``external_url`` and ``/systeminfo/volumes`` (free space where the registry stores blobs)
need an admin login, so they run with credentials that may travel and are skipped otherwise.
"""

from __future__ import annotations

import json

from harbor_ops.core.errors import UsageError
from harbor_ops.doctor.checks import Skip, brief
from harbor_ops.doctor.context import Context
from harbor_ops.doctor.findings import finding
from harbor_ops.doctor.wire import Endpoint

DISK_ERROR_FREE = 0.05  # below 5 % free: pushes fail with Err:28 and the DB dies (#13959)
DISK_WARN_FREE = 0.15


def check_health(ctx: Context) -> str:
    if not ctx.report.harbor:
        raise Skip("not Harbor")
    resp = ctx.get("/api/v2.0/health")
    if resp.status != 200:
        ctx.add(finding("component-unhealthy", "Harbor's health API does not answer",
                        brief(resp), host=ctx.ep.hostport))
        return f"/api/v2.0/health -> {resp.status}"
    components = json.loads(resp.body).get("components", [])
    bad = [c for c in components if c.get("status") != "healthy"]
    for c in bad:
        ctx.add(finding("component-unhealthy", f"Harbor component {c.get('name')} is "
                        f"{c.get('status')}", str(c.get("error", ""))[:300],
                        host=ctx.ep.hostport))
    return f"{len(components) - len(bad)}/{len(components)} components healthy"


def check_systeminfo(ctx: Context) -> str:
    if not ctx.report.harbor:
        raise Skip("not Harbor")
    if not ctx.credentials_ok:
        raise Skip("needs admin credentials that may travel")
    resp = ctx.get("/api/v2.0/systeminfo", ctx.basic())
    info = json.loads(resp.body) if resp.status == 200 else {}
    version, external = info.get("harbor_version"), info.get("external_url")
    if not version:
        raise Skip(f"/systeminfo gave no version (HTTP {resp.status}; not an admin?)")
    detail = f"Harbor {version}, external_url {external}"
    _external_url(ctx, str(external or ""))
    vol = ctx.get("/api/v2.0/systeminfo/volumes", ctx.basic())
    if vol.status == 200:
        detail += "; " + _space(ctx, json.loads(vol.body))
    return detail


def _external_url(ctx: Context, external: str) -> None:
    """Links, webhooks and (with an http scheme) the token realm come from external_url."""
    try:
        ext = Endpoint.parse(external)
    except UsageError:
        ext = None
    if ext is None or (ext.scheme, ext.host, ext.port) != (ctx.ep.scheme, ctx.ep.host,
                                                           ctx.ep.port):
        ctx.add(finding("external-url-mismatch", f"Harbor's external_url is not the URL "
                        f"clients use ({ctx.ep.base})", f"external_url: {external or '(empty)'}",
                        host=ctx.ep.hostport))


def _space(ctx: Context, volumes: dict) -> str:  # type: ignore[type-arg]
    storage = volumes.get("storage") or []
    if not storage:
        return "storage space unknown"
    total, free = int(storage[0].get("total", 0)), int(storage[0].get("free", 0))
    if total <= 0:
        return "storage space unknown"
    share = free / total
    seen = f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB ({100 * share:.1f} %)"
    if share < DISK_WARN_FREE:
        ctx.add(finding("disk-low", "the registry storage is nearly full", seen,
                        severity="error" if share < DISK_ERROR_FREE else "warning",
                        host=ctx.ep.hostport))
    return seen
