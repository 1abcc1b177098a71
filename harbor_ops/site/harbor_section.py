"""Validation of the site file's ``harbor:`` section against one Harbor release.

The section uses harbor.yml's own (newest) key names. Every key is checked against
the key table in :mod:`harbor_ops.releases.yml_schema` for THIS release, then the rules that
Harbor's ``prepare`` applies (reference/harbor-facts.md §2.5, §7) and the ones it
should apply but does not (localhost, missing files, clashing ports).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from harbor_ops.releases import yml_schema as schema
from harbor_ops.releases.versions import Release
from harbor_ops.site import checks

if TYPE_CHECKING:
    from harbor_ops.site.problems import PathResolver, Problems

PLACEHOLDER_PATHS = ("/your/certificate/path", "/your/private/key/path")


def _known_paths() -> list[str]:
    return sorted({k.path for k in schema.KEYS} | schema.group_prefixes())


def check_harbor(harbor: dict[str, Any], rel: Release, p: Problems, r: PathResolver) -> None:
    _walk(harbor, "", rel, p, r)
    _check_hostname(harbor, p)
    _check_secrets_present(harbor, p)
    _check_https(harbor, p, r)
    _check_blocks(harbor, rel, p)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _field(path: str) -> str:
    return f"harbor.{path}"


def _secret_base(path: str) -> str | None:
    """``database.password_file`` -> ``database.password`` when that key is a secret."""
    for suffix in ("_file", "_env"):
        if path.endswith(suffix):
            base = path[: -len(suffix)]
            key = schema.lookup(base)
            leaf = base.rsplit(".", 1)[-1]
            if key is not None and (key.secret or (
                    base.startswith("storage_service.") and leaf in schema.STORAGE_SECRETS)):
                return base
    return None


def _walk(node: dict[str, Any], prefix: str, rel: Release, p: Problems, r: PathResolver) -> None:
    groups = schema.group_prefixes()
    for key, value in node.items():
        path = f"{prefix}{key}"
        base = _secret_base(path)
        if base is not None:
            _check_secret_ref(path, base, value, node, p, r)
            continue
        spec = schema.by_path().get(path)
        if spec is not None and spec.kind == "dict" and path.startswith("storage_service."):
            _check_available(spec, path, rel, p)
            _check_driver(path.split(".")[1], value, rel, p, r)
            continue
        if spec is not None:
            _check_leaf(spec, path, value, rel, p)
            continue
        if path in groups:
            if not isinstance(value, dict):
                p.add(_field(path), f"expected a mapping, got {value!r}")
                continue
            _walk(value, f"{path}.", rel, p, r)
            continue
        p.add(_field(path), f"unknown key{checks.did_you_mean(path, _known_paths())}")


def _check_available(spec: schema.Key, path: str, rel: Release, p: Problems) -> bool:
    v = rel.version
    if spec.available(v):
        return True
    if spec.until and v >= _v(spec.until):
        p.add(_field(path), f"set, but Harbor {v} no longer has it (removed in {spec.until})")
    elif v < _v(spec.since):
        p.add(_field(path), f"set, but Harbor {v} does not have it; it first appears in "
              f"{spec.since}")
    else:
        gap_end = next(b for a, b in spec.gaps if _v(a) <= v < _v(b))
        p.add(_field(path), f"set, but Harbor {v} does not have it (back in {gap_end})")
    return False


def _v(text: str):  # type: ignore[no-untyped-def]
    from packaging.version import Version

    return Version(text)


def _check_leaf(spec: schema.Key, path: str, value: Any, rel: Release, p: Problems) -> None:
    if not _check_available(spec, path, rel, p):
        return
    if spec.secret:
        if isinstance(value, str) and value:
            p.warn(_field(path), f"an inline secret; prefer {spec.path.rsplit('.', 1)[-1]}_file "
                   "or _env")
            return
        p.add(_field(path), "must be a non-empty string (or use _file / _env)")
        return
    if value is None and spec.kind in ("str", "url") and path.startswith("proxy."):
        return  # Harbor's template leaves proxy values empty
    if spec.kind == "enum":
        if value not in spec.choices:
            p.add(_field(path), f"{value!r} is not one of {', '.join(spec.choices)}")
        return
    err = checks.check_kind(spec.kind, value)
    if err:
        p.add(_field(path), f"{value!r} {err}")
        return
    if spec.kind == "list" and spec.items:
        allowed = [i for i in spec.items if not (i == "clair" and rel.version >= _v("2.2.0"))]
        for item in value:
            if item not in allowed:
                p.add(_field(path), f"item {item!r} is not one of {', '.join(allowed)}")


def _check_secret_ref(path: str, base: str, value: Any, node: dict[str, Any], p: Problems,
                      r: PathResolver) -> None:
    leaf = base.rsplit(".", 1)[-1]
    given = [k for k in (leaf, f"{leaf}_file", f"{leaf}_env") if k in node]
    if len(given) > 1 and path.endswith(given[-1]):
        p.add(_field(base), f"set more than once ({', '.join(given)}); keep exactly one")
    if not isinstance(value, str) or not value:
        p.add(_field(path), "must be a non-empty string")
        return
    if path.endswith("_file"):
        checks.check_file(r.path(value), _field(path), p)
    elif not _ENV_NAME.match(value):
        # Never echoed: a secret pasted here by mistake must not reach a terminal or log.
        p.add(_field(path), "must name an environment variable (letters, digits and _, "
              "not starting with a digit); the value given is not shown, it may be the "
              "secret itself")


def _check_driver(driver: str, settings: Any, rel: Release, p: Problems,
                  r: PathResolver) -> None:
    path = f"storage_service.{driver}"
    required, optional = schema.STORAGE_DRIVERS[driver]
    if driver != "filesystem" and not settings:
        p.add(_field(path), f"no settings for storage driver {driver}; it needs "
              f"{', '.join(sorted(required))}")
        return
    if not isinstance(settings, dict):
        p.add(_field(path), f"expected a mapping of {driver} settings, got {settings!r}")
        return
    allowed = required | optional
    secrets = {f"{s}{suf}" for s in schema.STORAGE_SECRETS & allowed for suf in ("_file", "_env")}
    for key, value in settings.items():
        if key in secrets:
            _check_secret_ref(f"{path}.{key}", f"{path}.{key.rsplit('_', 1)[0]}", value,
                              settings, p, r)
        elif key not in allowed:
            p.add(_field(f"{path}.{key}"), f"unknown {driver} setting"
                  f"{checks.did_you_mean(key, allowed)}; valid: {', '.join(sorted(allowed))}")
    for need in sorted(required):
        if not any(k in settings for k in (need, f"{need}_file", f"{need}_env")):
            p.add(_field(f"{path}.{need}"), f"required by storage driver {driver}")


def _check_hostname(h: dict[str, Any], p: Problems) -> None:
    host = h.get("hostname")
    if host is None:
        p.add("harbor.hostname", "required: the DNS name or IP address clients use")
        return
    if not isinstance(host, str):
        p.add("harbor.hostname", f"{host!r} must be a string")
    elif host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
        p.add("harbor.hostname", f"{host!r} is a loopback name; use the DNS name or IP address "
              "that clients reach Harbor by")
    elif host == "reg.mydomain.com":
        p.add("harbor.hostname", "'reg.mydomain.com' is Harbor's placeholder; set your own")


def _check_secrets_present(h: dict[str, Any], p: Problems) -> None:
    def present(node: Any, leaf: str) -> bool:
        return isinstance(node, dict) and any(
            k in node for k in (leaf, f"{leaf}_file", f"{leaf}_env"))

    if not present(h, "harbor_admin_password"):
        p.add("harbor.harbor_admin_password", "required: give harbor_admin_password_file or "
              "harbor_admin_password_env (inline values are accepted with a warning)")
    external = (h.get("external_database") or {}).get("harbor") if isinstance(
        h.get("external_database"), dict) else None
    if external is None and not present(h.get("database"), "password"):
        p.add("harbor.database.password", "required: give database.password_file or "
              "database.password_env")


def _check_https(h: dict[str, Any], p: Problems, r: PathResolver) -> None:
    https = h.get("https")
    if https is None:
        return
    if not isinstance(https, dict):
        p.add("harbor.https", f"expected a mapping with certificate and private_key, got {https!r}")
        return
    for leaf in ("certificate", "private_key"):
        value = https.get(leaf)
        if not value:
            p.add(f"harbor.https.{leaf}", "required when https is set (or remove https: to "
                  "serve plain http behind a TLS front)")
        elif value in PLACEHOLDER_PATHS:
            p.add(f"harbor.https.{leaf}", f"{value!r} is Harbor's placeholder; give the real file")
        elif isinstance(value, str):
            checks.check_file(r.path(value), f"harbor.https.{leaf}", p)


def _require(block: Any, prefix: str, leaves: tuple[str, ...], p: Problems, why: str) -> None:
    if not isinstance(block, dict):
        return
    for leaf in leaves:
        if leaf not in block and f"{leaf}_file" not in block and f"{leaf}_env" not in block:
            p.add(f"harbor.{prefix}.{leaf}", f"required {why}")


def _check_blocks(h: dict[str, Any], rel: Release, p: Problems) -> None:
    ext = h.get("external_database")
    if isinstance(ext, dict):
        _require(ext.get("harbor"), "external_database.harbor",
                  ("host", "port", "db_name", "username", "password", "ssl_mode"), p,
                  "when external_database.harbor is set (Harbor's prepare reads it)")
    log = h.get("log")
    if isinstance(log, dict):
        _require(log.get("external_endpoint"), "log.external_endpoint",
                 ("protocol", "host", "port"), p, "when log.external_endpoint is set")
    _require(h.get("metric"), "metric", ("enabled", "port", "path"), p, "when metric is set")
    _require(h.get("internal_tls"), "internal_tls", ("enabled", "dir"), p,
             "when internal_tls is set")
    storage = h.get("storage_service")
    if isinstance(storage, dict):
        drivers = [d for d in storage if d in schema.STORAGE_DRIVERS]
        if len(drivers) > 1:
            p.add("harbor.storage_service", f"more than one storage driver ({', '.join(drivers)})"
                  "; keep exactly one")
    purge = h.get("upload_purging")
    if isinstance(purge, dict) and purge.get("enabled", True):
        for leaf in ("age", "interval"):
            value = purge.get(leaf)
            if isinstance(value, str) and value.endswith("h") and value[:-1].isdigit() and int(
                    value[:-1]) < 2:
                p.add(f"harbor.upload_purging.{leaf}", f"{value!r} must be at least 2h")
    cache = h.get("cache")
    if isinstance(cache, dict) and cache.get("enabled") and not (
            isinstance(cache.get("expire_hours", 24), int) and cache.get("expire_hours", 24) > 0):
        p.add("harbor.cache.expire_hours", "must be a positive number of hours when cache is on")
    trace = h.get("trace")
    if isinstance(trace, dict) and trace.get("enabled"):
        exporters = [e for e in ("jaeger", "otel") if e in trace]
        if len(exporters) != 1:
            p.add("harbor.trace", "with enabled: true, set exactly one exporter: jaeger or otel")
        jaeger = trace.get("jaeger")
        if isinstance(jaeger, dict) and ("endpoint" in jaeger) == ("agent_host" in jaeger):
            p.add("harbor.trace.jaeger", "set exactly one of endpoint or agent_host")
        _require(trace.get("otel"), "trace.otel", ("endpoint", "url_path"), p,
                 "when trace.otel is set")
    redis = h.get("external_redis")
    if isinstance(redis, dict) and isinstance(redis.get("host"), str):
        for item in redis["host"].split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                p.add("harbor.external_redis.host", f"{redis['host']!r} must be host:port "
                      "(a comma-separated list for sentinel)")
                break
    jobservice = h.get("jobservice")
    if isinstance(jobservice, dict):
        hours = jobservice.get("max_job_duration_hours")
        if isinstance(hours, int) and not isinstance(hours, bool) and hours < 24:
            p.warn("harbor.jobservice.max_job_duration_hours",
                   f"{hours} is below 24; Harbor's prepare raises it to 24")
