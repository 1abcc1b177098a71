"""The site file (``harborctl.yml``): load, validate every problem at once, defaults.

Validation never stops at the first problem: it collects each one as
``field.path: bad value -> what would be valid`` and raises a single ConfigError
(exit 2) so that a user fixes the file in one pass. Nothing is written by loading.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from harbor_ops.core.errors import ConfigError, UsageError
from harbor_ops.releases.versions import Release, release
from harbor_ops.site import checks, harbor_section
from harbor_ops.site import model as m
from harbor_ops.site.problems import PathResolver, Problems

_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SECTIONS = ("harbor", "front", "logrotate", "backup", "agent", "install", "hosts")
SECRET_SUFFIXES = ("_file", "_env")
EXAMPLE = "site/example.yml"


def example_text() -> str:
    """The built-in example site file shipped in the wheel."""
    return (resources.files("harbor_ops") / EXAMPLE).read_text(encoding="utf-8")


def load_site(path: Path, *, version: str | None = None) -> m.Site:
    """Read and validate a site file; relative paths in it are relative to its folder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--config: site file {path} does not exist",
                         hint="create one with `harborctl init`") from None
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path}: {exc.strerror}") from None
    return load_site_text(text, source=str(path), base_dir=Path(path).resolve().parent,
                          version=version)


def load_site_text(text: str, *, source: str = "site file", base_dir: Path | None = None,
                   version: str | None = None) -> m.Site:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"not valid YAML: {where}{problem}"], source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(file): expected a mapping of sections ({', '.join(SECTIONS)}), "
                           f"got {type(data).__name__}"], source=source)
    return validate(data, source=source, base_dir=base_dir or Path.cwd(), version=version)


def validate(data: dict[str, Any], *, source: str, base_dir: Path,
             version: str | None = None) -> m.Site:
    p = Problems()
    for key in data:
        if key not in SECTIONS:
            p.add(str(key), f"unknown section{checks.did_you_mean(str(key), SECTIONS)}; "
                  f"valid sections: {', '.join(SECTIONS)}")
    harbor = data.get("harbor")
    if not isinstance(harbor, dict):
        p.add("harbor", "required section missing (it needs at least `version` and `hostname`)"
              if harbor is None else f"expected a mapping, got {type(harbor).__name__}")
        raise ConfigError(p.items, source=source)
    rel = _release(harbor.get("version"), version, p)
    harbor = {k: v for k, v in harbor.items() if k != "version"}
    resolver = PathResolver(base_dir)
    if rel is not None:
        harbor_section.check_harbor(harbor, rel, p, resolver)
    front = _section(data, "front", _front, p, resolver)
    site = m.Site(
        release=rel or release("2.15.2"),
        harbor=resolver.absolutize_harbor(harbor),
        front=front,
        logrotate=_section(data, "logrotate", _logrotate, p, resolver) or m.Logrotate(),
        backup=_section(data, "backup", _backup, p, resolver) or m.Backup(),
        agent=_section(data, "agent", _agent, p, resolver) or m.Agent(),
        install=_section(data, "install", _install, p, resolver) or m.Install(),
        hosts=_hosts(data.get("hosts"), p, resolver),
        path=Path(source) if source != "site file" else None,
        warnings=tuple(p.warnings),
    )
    if rel is not None:
        checks.check_port_clashes(site, p)
    if p.items:
        raise ConfigError(p.items, source=source)
    return site


def _release(value: Any, override: str | None, p: Problems) -> Release | None:
    raw = override if override is not None else value
    field = "--harbor-version" if override is not None else "harbor.version"
    if raw is None:
        p.add("harbor.version", "required; the Harbor release to run, e.g. 2.15.2")
        return None
    try:
        return release(str(raw), field=field)
    except UsageError as exc:
        p.items.append(exc.message)
        return None


Builder = Callable[[dict[str, Any], Problems, PathResolver], Any]


def _section(data: dict[str, Any], name: str, build: Builder, p: Problems,
             resolver: PathResolver) -> Any:
    raw = data.get(name)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.add(name, f"expected a mapping, got {type(raw).__name__}")
        return None
    return build(raw, p, resolver)


def _fields(raw: dict[str, Any], prefix: str, spec: dict[str, str], p: Problems) -> dict[str, Any]:
    """Type-check a flat own-section mapping; returns only the valid values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}"
        if key not in spec:
            p.add(path, f"unknown key{checks.did_you_mean(str(key), spec)}; valid keys: "
                  f"{', '.join(spec)}")
            continue
        err = checks.check_kind(spec[key], value)
        if err:
            p.add(path, f"{value!r} {err}")
        else:
            out[key] = value
    return out


def _front(raw: dict[str, Any], p: Problems, r: PathResolver) -> m.Front | None:
    f = _fields(raw, "front", {"listen": "listen", "server_name": "host", "upstream": "url",
                               "tls": "dict", "cache": "dict"}, p)
    for need in ("listen", "server_name", "upstream"):
        if need not in raw:
            p.add(f"front.{need}", "required when the front section is present")
    tls = None
    if isinstance(raw.get("tls"), dict):
        t = _fields(raw["tls"], "front.tls", {"certificate": "path", "private_key": "path"}, p)
        for need in ("certificate", "private_key"):
            if need not in t:
                p.add(f"front.tls.{need}", "required when front.tls is set")
        if "certificate" in t and "private_key" in t:
            tls = m.FrontTLS(r.path(t["certificate"]), r.path(t["private_key"]))
            checks.check_file(tls.certificate, "front.tls.certificate", p)
            checks.check_file(tls.private_key, "front.tls.private_key", p)
    cache = None
    if isinstance(raw.get("cache"), dict):
        c = _fields(raw["cache"], "front.cache",
                    {"path": "path", "max_size": "size", "inactive": "nginx_time"}, p)
        cache = m.FrontCache(path=r.path(c.get("path", "/var/cache/nginx/harbor")),
                             max_size=str(c.get("max_size", "10g")),
                             inactive=str(c.get("inactive", "7d")))
    if not all(k in f for k in ("listen", "server_name", "upstream")):
        return None
    address, port = checks.split_listen(str(f["listen"]))
    return m.Front(listen_address=address, listen_port=port, server_name=str(f["server_name"]),
                   upstream=str(f["upstream"]), tls=tls, cache=cache)


def _logrotate(raw: dict[str, Any], p: Problems, r: PathResolver) -> m.Logrotate:
    f = _fields(raw, "logrotate", {"rotate": "posint", "max_size": "size",
                                   "max_age_days": "posint"}, p)
    return m.Logrotate(**f)


def _keep(raw: Any, prefix: str, p: Problems) -> m.Keep:
    if not isinstance(raw, dict):
        p.add(prefix, f"expected a mapping of daily/weekly/monthly counts, got {raw!r}")
        return m.Keep()
    f = _fields(raw, prefix, {"daily": "count", "weekly": "count", "monthly": "count"}, p)
    keep = m.Keep(**f)
    if keep.daily + keep.weekly + keep.monthly == 0:
        p.add(prefix, "keeps nothing; at least one of daily/weekly/monthly must be > 0")
    return keep


def _backup(raw: dict[str, Any], p: Problems, r: PathResolver) -> m.Backup:
    f = _fields(raw, "backup", {"dir": "path", "at": "clock", "jitter_minutes": "count",
                                "keep": "dict", "include_redis": "bool", "remote": "dict",
                                "encryption": "dict", "parallel": "posint",
                                "compress_on": "compress_on"}, p)
    remote = None
    if isinstance(raw.get("remote"), dict):
        rr = _fields(raw["remote"], "backup.remote",
                     {"host": "str", "path": "path", "user": "str", "port": "port",
                      "key_file": "path", "keep": "dict"}, p)
        for need in ("host", "path"):
            if need not in rr:
                p.add(f"backup.remote.{need}", "required when backup.remote is set")
        if "key_file" in rr:
            rr["key_file"] = r.path(rr["key_file"])
            checks.check_file(rr["key_file"], "backup.remote.key_file", p)
        if "keep" in rr:
            rr["keep"] = _keep(rr["keep"], "backup.remote.keep", p)
        if "host" in rr and "path" in rr:
            remote = m.Remote(**rr)
    keep = _keep(f["keep"], "backup.keep", p) if "keep" in f else m.Keep()
    enc = _encryption(raw["encryption"], p, r) if isinstance(raw.get("encryption"), dict) \
        else None
    return m.Backup(dir=r.path(f.get("dir", "/var/backups/harbor")), at=str(f.get("at", "02:30")),
                    jitter_minutes=int(f.get("jitter_minutes", 15)), keep=keep,
                    include_redis=bool(f.get("include_redis", False)), remote=remote,
                    encryption=enc, parallel=int(f.get("parallel", 2)),
                    compress_on=str(f.get("compress_on", "host")))


def _encryption(raw: dict[str, Any], p: Problems, r: PathResolver) -> m.Encryption | None:
    """age recipients (one of recipient / recipients_file) and the identity to decrypt."""
    f = _fields(raw, "backup.encryption", {"recipient": "str", "recipients_file": "path",
                                           "identity_file": "path"}, p)
    if ("recipient" in f) == ("recipients_file" in f):
        p.add("backup.encryption", "name exactly one of recipient (an age1... public key) "
              "and recipients_file")
        return None
    for k in ("recipients_file", "identity_file"):
        if k in f:
            f[k] = r.path(f[k])
            checks.check_file(f[k], f"backup.encryption.{k}", p)
    if "identity_file" in f and f["identity_file"].is_file() \
            and f["identity_file"].stat().st_mode & 0o077:
        p.add("backup.encryption.identity_file",
              f"{f['identity_file']} is readable by others; it is a secret key (chmod 600)")
    rfile = f.get("recipients_file")
    if rfile is not None and rfile.is_file():
        bad = [ln for ln in rfile.read_text(encoding="utf-8", errors="replace").splitlines()
               if ln.strip() and not ln.startswith("#")
               and not checks.is_age_recipient(ln.strip())]
        if bad:
            p.add("backup.encryption.recipients_file",
                  f"{rfile}: {len(bad)} line(s) are not age public keys (age1...)")
    recipient = str(f.pop("recipient", ""))
    if recipient and not checks.is_age_recipient(recipient):
        p.add("backup.encryption.recipient",
              f"{recipient[:20]!r} is not an age public key (age1..., see age-keygen -y)")
        return None
    return m.Encryption(recipients=(recipient,) if recipient else (), **f)


def _agent(raw: dict[str, Any], p: Problems, r: PathResolver) -> m.Agent:
    f = _fields(raw, "agent", {"status_file": "path", "metrics_dir": "path", "bundle_dir": "path",
                               "drill_weekday": "weekday", "disk_threshold_percent": "percent"}, p)
    for k in ("status_file", "metrics_dir", "bundle_dir"):
        if k in f:
            f[k] = r.path(f[k])
    return m.Agent(**f)


def _install(raw: dict[str, Any], p: Problems, r: PathResolver) -> m.Install:
    f = _fields(raw, "install", {"dir": "path", "with_trivy": "bool", "bundle_dir": "path",
                                 "bundle_keyring": "path"}, p)
    for k in ("dir", "bundle_dir", "bundle_keyring"):
        if k in f:
            f[k] = r.path(f[k])
    if "bundle_keyring" in f:
        checks.check_file(f["bundle_keyring"], "install.bundle_keyring", p)
    return m.Install(**f)


def _hosts(raw: Any, p: Problems, r: PathResolver) -> tuple[m.HostEntry, ...]:
    if raw is None:
        return (m.HostEntry(name="localhost", connection="local"),)
    if not isinstance(raw, list) or not raw:
        p.add("hosts", f"expected a non-empty list of hosts, got {raw!r}")
        return ()
    out = []
    seen: set[str] = set()
    spec = {"name": "str", "address": "host", "connection": "connection", "user": "str",
            "port": "port", "ssh_key_file": "path"}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            p.add(f"hosts[{i}]", f"expected a mapping with at least `name`, got {item!r}")
            continue
        f = _fields(item, f"hosts[{i}]", spec, p)
        if "name" not in f:
            p.add(f"hosts[{i}].name", "required")
            continue
        if not _HOST_NAME.fullmatch(str(f["name"])):
            p.add(f"hosts[{i}].name", f"{f['name']!r} is not a host name; use letters, "
                  "digits, '.', '_' and '-' (it names the host's backup folder)")
        if f["name"] in seen:
            p.add(f"hosts[{i}].name", f"{f['name']!r} is listed twice")
        seen.add(f["name"])
        if "ssh_key_file" in f:
            f["ssh_key_file"] = r.path(f["ssh_key_file"])
            checks.check_file(f["ssh_key_file"], f"hosts[{i}].ssh_key_file", p)
        out.append(m.HostEntry(**f))
    return tuple(out)


# ---------------------------------------------------------------- secrets


def resolve_secrets(site: m.Site) -> dict[str, Any]:
    """site.harbor with every ``K_file`` / ``K_env`` replaced by the value of ``K``.

    The one place secrets are read. Raises ConfigError naming the field (never the
    value) when a file cannot be read or an environment variable is unset.
    """
    out = copy.deepcopy(site.harbor)
    problems: list[str] = []
    _resolve_node(out, "harbor", problems)
    if problems:
        raise ConfigError(problems, source=str(site.path or "site file"))
    return out


def _resolve_node(node: dict[str, Any], prefix: str, problems: list[str]) -> None:
    for key in list(node):
        value = node[key]
        if isinstance(value, dict):
            _resolve_node(value, f"{prefix}.{key}", problems)
            continue
        for suffix in SECRET_SUFFIXES:
            if not key.endswith(suffix):
                continue
            target = key[: -len(suffix)]
            field = f"{prefix}.{key}"
            del node[key]
            if suffix == "_file":
                try:
                    node[target] = Path(value).read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    problems.append(f"{field}: cannot read {value}: {exc.strerror}")
            else:
                secret = os.environ.get(str(value))
                if secret is None or secret == "":
                    problems.append(f"{field}: environment variable {value} is not set "
                                    "(export it, or use a _file instead)")
                else:
                    node[target] = secret
