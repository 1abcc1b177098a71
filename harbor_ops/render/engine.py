"""`harborctl render`: every config file for one Harbor release, validated, written atomically.

Why one module owns the whole set: the files are installed together and must agree (log
location, install dir, site path), so they are rendered from one context, all validated
BEFORE anything is replaced (nginx -t, logrotate -d, systemd-analyze verify, our own
harbor.yml round-trip), then staged next to their targets and renamed into place. A failed
validator or a failed write leaves the output folder exactly as it was. Templates ship in
the top-level ``templates/`` folder (inside the package in a wheel), found by core.assets.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from harbor_ops.core.assets import shipped_dir
from harbor_ops.core.errors import RenderError
from harbor_ops.core.fsutil import atomic_write_all
from harbor_ops.releases.versions import Release, latest_patch, minors, release
from harbor_ops.render import harbor_yml as hyml
from harbor_ops.render import validate as render_checks
from harbor_ops.site.model import Site

# output path -> (template, file mode). harbor.yml holds secrets: 0600.
FILES: dict[str, tuple[str, int]] = {
    "harbor.yml": ("harbor.yml.j2", 0o600),
    "logrotate/harbor": ("logrotate/harbor.j2", 0o644),
    "nginx/harbor.conf": ("nginx/harbor.conf.j2", 0o644),
    "systemd/harbor.service": ("systemd/harbor.service.j2", 0o644),
    "systemd/harborctl-agent.service": ("systemd/harborctl-agent.service.j2", 0o644),
    "systemd/harborctl-agent.timer": ("systemd/harborctl-agent.timer.j2", 0o644),
    "cron/harborctl": ("cron/harborctl.j2", 0o644),
}
DEFAULT_SITE_PATH = Path("/etc/harborctl/harborctl.yml")
CACHE_ZONE = "harborctl_blobs"
HARBOR_UID = 10000  # owner of Harbor's log files (harbor-log runs as uid/gid 10000)
UPSTREAM_NAME = "harborctl_harbor"
# Per host, the Compose command of the boot unit (HARBOR_COMPOSE=...), written by the role.
COMPOSE_ENV_FILE = "/etc/default/harbor"
# The compose project install.sh runs Harbor under: harborctl hands it to the role as
# harbor_compose_project (install.run.role_vars), so the unit and the role agree.
COMPOSE_PROJECT = "harbor"


@dataclass(frozen=True)
class RenderOptions:
    """Host facts the site file does not hold; defaults fit a Debian/Ubuntu host.

    ``compose_command`` is what the systemd unit runs when the host has no
    ``COMPOSE_ENV_FILE`` (install writes there the Compose preflight found on each host).
    """

    compose_command: str = "/usr/bin/docker-compose"
    harborctl_path: str = "/usr/local/bin/harborctl"
    site_path: Path | None = None  # default: the site file's own path
    agent_every_minutes: int = 5


@dataclass(frozen=True)
class FileChange:
    path: str  # relative to the output folder
    status: str  # created | changed | unchanged
    diff: str  # unified diff, secrets masked
    mode: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "mode": f"{self.mode:04o}",
                "diff": self.diff}


@dataclass
class RenderResult:
    version: str
    output_dir: Path
    dry_run: bool
    changes: list[FileChange] = field(default_factory=list)
    checks: list[render_checks.Check] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.status != "unchanged" for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "output_dir": str(self.output_dir),
                "dry_run": self.dry_run, "changed": self.changed,
                "files": [c.to_dict() for c in self.changes],
                "checks": [c.to_dict() for c in self.checks]}

    def __str__(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        lines = [f"Harbor {self.version}: {verb} into {self.output_dir}"]
        lines += [f"  {c.status:<9} {c.path}" for c in self.changes]
        lines += [f"  check     {c}" for c in self.checks]
        lines += [c.diff.rstrip("\n") for c in self.changes if c.status == "changed" and c.diff]
        return "\n".join(lines)


def _template_source(name: str) -> tuple[str, str, Any]:
    text = (shipped_dir("templates") / name).read_text(encoding="utf-8")
    return text, name, lambda: True


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FunctionLoader(_template_source),
                             undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True, trim_blocks=False)
    env.filters["yaml"] = hyml.yaml_scalar
    return env


def _front_context(site: Site, *, cache_path: Path | None = None,
                   tls: Any = None, upstream_server: str | None = None) -> dict[str, Any] | None:
    front = site.front
    if front is None:
        return None
    up = urlsplit(front.upstream)
    scheme = up.scheme or "http"
    port = up.port or (443 if scheme == "https" else 80)
    host = up.hostname or "127.0.0.1"
    host_text = f"[{host}]" if ":" in host else host
    addr = front.listen_address
    cache_ctx = None
    if front.cache is not None:
        cache_ctx = {"path": cache_path or front.cache.path, "max_size": front.cache.max_size,
                     "inactive": front.cache.inactive}
    return {
        "listen": f"[{addr}]:{front.listen_port}" if ":" in addr else f"{addr}:{front.listen_port}",
        "server_name": front.server_name, "tls": tls if tls is not None else front.tls,
        "cache": cache_ctx, "zone": CACHE_ZONE, "upstream_name": UPSTREAM_NAME,
        "upstream_server": upstream_server or f"{host_text}:{port}",
        "upstream_scheme": scheme, "upstream_tls": scheme == "https", "upstream_host": host,
    }


def contexts(site: Site, doc: dict[str, Any], rel: Release,
             options: RenderOptions) -> dict[str, dict[str, Any] | None]:
    """The template context of every output file (None: the file is not rendered)."""
    log_local = (doc.get("log") or {}).get("local") or {}
    site_path = Path(os.path.abspath(options.site_path or site.path or DEFAULT_SITE_PATH))
    common = {"version": str(rel.version), "site_path": _plain(site_path, "site file path"),
              "harborctl_path": _plain(options.harborctl_path, "harborctl path")}
    front = _front_context(site)
    return {
        "harbor.yml": {**common, "doc": doc},
        "logrotate/harbor": {
            **common, "location": str(log_local.get("location") or "/var/log/harbor").rstrip("/"),
            "harbor_rotate_count": log_local.get("rotate_count", 50),
            "harbor_rotate_size": log_local.get("rotate_size", "200M"),
            "rotate": site.logrotate.rotate, "max_size": site.logrotate.max_size,
            "max_age_days": site.logrotate.max_age_days, "uid": HARBOR_UID, "gid": HARBOR_UID},
        "nginx/harbor.conf": {**common, **front} if front else None,
        "systemd/harbor.service": {
            **common, "project_dir": _plain(site.install.dir / "harbor", "install.dir"),
            "project_name": COMPOSE_PROJECT,
            "compose_command": options.compose_command, "restart_sec": "30s",
            "compose_env_file": COMPOSE_ENV_FILE,
            "start_limit_interval": "900s", "start_limit_burst": 10},
        "systemd/harborctl-agent.service": common,
        "systemd/harborctl-agent.timer": {
            **common, "agent_every_minutes": options.agent_every_minutes,
            "backup_at": site.backup.at},
        "cron/harborctl": {**common, "agent_every_minutes": options.agent_every_minutes,
                           "backup_at": site.backup.at},
    }


def _plain(value: str | Path, what: str) -> str:
    """Paths go unquoted into unit files and a crontab line: refuse what would split them."""
    text = str(value)
    if not text or any(ch.isspace() or ch in "%;'\"\\$`" for ch in text):
        raise RenderError(f"{what}: {text!r} cannot go into a unit file or crontab unquoted",
                          hint="use a path without spaces, quotes, $, %, ` or ;")
    return text


def render_template(name: str, context: dict[str, Any]) -> str:
    try:
        return environment().get_template(FILES[name][0]).render(context)
    except jinja2.TemplateError as exc:  # a bug in a template, not in the user's input
        raise RenderError(f"{name}: template failed: {exc}") from exc


def render_texts(site: Site, *, harbor_values: dict[str, Any], rel: Release,
                 options: RenderOptions | None = None) -> dict[str, str]:
    """Every output file's text, in memory: pure, no validators, no I/O but templates."""
    return _render(site, harbor_values, rel, options or RenderOptions())[1]


def _render(site: Site, harbor_values: dict[str, Any], rel: Release,
            options: RenderOptions) -> tuple[dict[str, Any], dict[str, str]]:
    doc = hyml.build(harbor_values, rel)
    ctxs = contexts(site, doc, rel, options)
    return doc, {name: render_template(name, ctx) for name, ctx in ctxs.items() if ctx}


def render_all_versions(site: Site, *, harbor_values: dict[str, Any] | None = None,
                        releases: Iterable[Release] | None = None,
                        options: RenderOptions | None = None) -> dict[str, dict[str, str]]:
    """Texts for the latest patch of every minor line (or ``releases``): the benchmark path."""
    if harbor_values is None:
        from harbor_ops.site.load import resolve_secrets
        harbor_values = resolve_secrets(site)
    chosen = list(releases) if releases is not None else [latest_patch(m) for m in minors()]
    return {str(r.version): render_texts(site, harbor_values=harbor_values, rel=r,
                                         options=options) for r in chosen}


def render_site(site: Site, *, output_dir: Path, version: str | None = None,
                dry_run: bool = False, validate: bool = True,
                options: RenderOptions | None = None,
                harbor_values: dict[str, Any] | None = None) -> RenderResult:
    """Render, validate and (unless ``dry_run``) atomically write every file.

    ``harbor_values`` (the harbor mapping with secrets resolved) defaults to
    :func:`harbor_ops.site.load.resolve_secrets` of the site.
    """
    rel = release(version, field="--harbor-version") if version else site.release
    options = options or RenderOptions()
    if harbor_values is None:
        from harbor_ops.site.load import resolve_secrets
        harbor_values = resolve_secrets(site)
    doc, texts = _render(site, harbor_values, rel, options)
    result = RenderResult(version=str(rel.version), output_dir=Path(output_dir), dry_run=dry_run)
    result.checks.append(render_checks.check_harbor_yml(texts["harbor.yml"], doc))
    if validate:
        result.checks += _run_validators(site, texts, rel, options)
    planned = []
    for name, text in texts.items():
        change = _compare(Path(output_dir) / name, name, text, FILES[name][1])
        result.changes.append(change)
        if change.status != "unchanged":
            planned.append((Path(output_dir) / name, text, change.mode))
    if not dry_run and planned:
        write_files(planned)
    return result


def _run_validators(site: Site, texts: dict[str, str], rel: Release,
                    options: RenderOptions) -> list[render_checks.Check]:
    out = [render_checks.check_logrotate(texts["logrotate/harbor"], uid=HARBOR_UID)]
    if "nginx/harbor.conf" in texts:
        def variant(cache_path: Path, tls: Any, upstream: str | None) -> str:
            ctx = {"version": str(rel.version),
                   **(_front_context(site, cache_path=cache_path, tls=tls,
                                     upstream_server=upstream) or {})}
            return render_template("nginx/harbor.conf", ctx)
        out.append(render_checks.check_nginx(site, variant))
    out.append(render_checks.check_systemd(
        {n: t for n, t in texts.items() if n.startswith("systemd/")}))
    failed = [c for c in out if c.status == "failed"]
    if failed:
        raise RenderError("; ".join(f"{c.file}: {c.validator} refused it: {c.detail}"
                                    for c in failed), hint="nothing was replaced")
    return out


def _compare(target: Path, name: str, text: str, mode: int) -> FileChange:
    try:
        old = target.read_text(encoding="utf-8")
        old_mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        diff = _diff("", text, name, secrets=name == "harbor.yml", created=True)
        return FileChange(name, "created", diff, mode)
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"cannot read {target}: {exc}", hint="nothing was replaced") from None
    if old == text:
        if old_mode == mode:
            return FileChange(name, "unchanged", "", mode)
        return FileChange(name, "changed", f"# {name}: mode {old_mode:04o} -> {mode:04o}\n", mode)
    return FileChange(name, "changed", _diff(old, text, name, secrets=name == "harbor.yml"), mode)


def _diff(old: str, new: str, name: str, *, secrets: bool, created: bool = False) -> str:
    if secrets:
        old, new = hyml.mask(old), hyml.mask(new, previous=None if created else old)
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile="/dev/null" if created else f"a/{name}",
                                 tofile=f"b/{name}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def write_files(planned: list[tuple[Path, str, int]]) -> None:
    """All-or-nothing as far as a filesystem allows (core.fsutil.atomic_write_all): every
    file is staged before any is replaced, and each replaced one is kept as ``<name>.prev``."""
    try:
        atomic_write_all(planned, keep_previous=True)
    except OSError as exc:
        raise RenderError(f"cannot write {exc.filename or 'output'}: {exc.strerror}",
                          hint="nothing was replaced") from None
