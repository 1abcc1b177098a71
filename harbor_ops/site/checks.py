"""Small validators shared by the site-file checks: each returns a reason or None."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from harbor_ops.site.model import Site
    from harbor_ops.site.problems import Problems

_SIZE = re.compile(r"^[0-9]+[kKmMgG]?$")
_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
_NGINX_TIME = re.compile(r"^([0-9]+(ms|s|m|h|d|w|M|y)?)+$")
_HOURS = re.compile(r"^[0-9]+h$")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def did_you_mean(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_hostname(value: str) -> bool:
    """A DNS name (RFC 1123 labels) or an IP address."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    if len(value) > 253 or not value:
        return False
    labels = value.rstrip(".").split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def split_listen(value: str) -> tuple[str, int]:
    """``"0.0.0.0:443"`` / ``"[::]:443"`` / ``"443"`` -> (address, port)."""
    if value.isdigit():
        return "0.0.0.0", int(value)
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _listen_error(value: Any) -> str | None:
    text = str(value)
    try:
        host, port = split_listen(text)
    except ValueError:
        return "is not address:port (e.g. 0.0.0.0:443 or 443)"
    if not 1 <= port <= 65535:
        return "has a port outside 1-65535"
    if host not in ("*",) and not is_hostname(host):
        return "has an address that is neither an IP address nor a host name"
    return None


def check_kind(kind: str, value: Any) -> str | None:
    """Why ``value`` is not of ``kind`` (``None`` when it is)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind in ("str", "secret"):
        return None if isinstance(value, str) and value != "" else "must be a non-empty string"
    if kind == "int":
        return None if is_int else "must be an integer"
    if kind == "posint":
        return None if is_int and value > 0 else "must be a positive integer"
    if kind == "count":
        return None if is_int and value >= 0 else "must be an integer >= 0"
    if kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if kind == "percent":
        return None if is_int and 1 <= value <= 100 else "must be an integer from 1 to 100"
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "port":
        return None if is_int and 1 <= value <= 65535 else "must be a port number from 1 to 65535"
    if kind == "path":
        return None if isinstance(value, str) and value.strip() else "must be a path"
    if kind == "size":
        ok = bool(isinstance(value, str) and _SIZE.match(value)) or (is_int and value >= 0)
        return None if ok else "is not a size; use a number with an optional k, M or G (200M)"
    if kind == "duration":
        ok = (is_int and value >= 0) or (isinstance(value, str) and (
            value == "0" or bool(_GO_DURATION.match(value))))
        return None if ok else "is not a duration; use Go units such as 5m, 1h30m, 5m0s or 0"
    if kind == "nginx_time":
        ok = bool(isinstance(value, str) and _NGINX_TIME.match(value)) or (is_int and value >= 0)
        return None if ok else "is not an nginx time; use units such as 60m, 12h, 7d"
    if kind == "hours":
        return None if isinstance(value, str) and _HOURS.match(value) else (
            "must be a number of hours written Nh, e.g. 168h")
    if kind == "compress_on":
        return None if value in ("host", "controller") else "must be host or controller"
    if kind == "dict":
        return None if isinstance(value, dict) else "must be a mapping"
    if kind == "list":
        return None if isinstance(value, list) else "must be a list"
    if kind == "host":
        if not isinstance(value, str) or not is_hostname(value):
            return "is neither a valid DNS name nor an IP address"
        return None
    if kind == "url":
        u = urlparse(str(value))
        ok = isinstance(value, str) and u.scheme in ("http", "https") and bool(u.hostname)
        return None if ok else "must be an http:// or https:// URL with a host"
    if kind == "listen":
        return _listen_error(value)
    if kind == "clock":
        return None if isinstance(value, str) and _CLOCK.match(value) else (
            "must be a time of day HH:MM (24 h, quoted in YAML)")
    if kind == "weekday":
        return None if str(value).lower() in WEEKDAYS else f"must be one of {', '.join(WEEKDAYS)}"
    if kind == "connection":
        return None if value in ("ssh", "local") else "must be ssh or local"
    if kind == "enum":
        return None
    raise AssertionError(f"unknown kind {kind}")


def is_age_recipient(value: str) -> bool:
    """An age X25519 public key (bech32 ``age1`` + 58 characters)."""
    return bool(re.fullmatch(r"age1[02-9ac-hj-np-z]{58}", value))


def check_file(path: Path, field: str, p: Problems) -> None:
    if not path.exists():
        p.add(field, f"{path} does not exist")
    elif not path.is_file():
        p.add(field, f"{path} is not a regular file")
    elif not os.access(path, os.R_OK):
        p.add(field, f"{path} is not readable")


def size_bytes(value: str | int) -> int:
    """``"200M"`` -> bytes (k/M/G are powers of 1024, as logrotate and nginx read them)."""
    if isinstance(value, int):
        return value
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    last = value[-1].lower()
    return int(value[:-1]) * units[last] if last in units else int(value)


def check_port_clashes(site: Site, p: Problems) -> None:
    """Ports Harbor publishes on the host must differ from each other and from the front."""
    h = site.harbor
    used: dict[int, str] = {1514: "Harbor's log collector (127.0.0.1:1514)"}
    candidates = [("harbor.http.port", (h.get("http") or {}).get("port", 80))]
    if "https" in h:
        candidates.append(("harbor.https.port", (h.get("https") or {}).get("port", 443)))
    metric = h.get("metric") or {}
    if metric.get("enabled"):
        candidates.append(("harbor.metric.port", metric.get("port", 9090)))
    if site.front is not None:
        candidates.append(("front.listen", site.front.listen_port))
    for field, port in candidates:
        if port in used:
            p.add(field, f"port {port} is already used by {used[port]}; choose another")
        else:
            used[port] = field
