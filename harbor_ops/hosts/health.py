"""The one Harbor health probe and the one health-URL builder.

Why one: install's gate, a restore's wait and the agent's health job must agree on where
Harbor answers and what "healthy" means (``/api/v2.0/health``: status healthy and every
component healthy). Harbor serves its own HTTPS when ``harbor.https`` is set; then the
probe connects to this host's loopback but speaks TLS to the site's real name (SNI and
hostname check) and trusts the site's certificate chain (its own certificate or an issuer
in it) besides the system store, so a self-signed or private-CA site is verified, not
skipped.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harbor_ops.core.errors import HealthError

PATH = "/api/v2.0/health"
LOOPBACK = "127.0.0.1"
TIMEOUT = 10.0


@dataclass(frozen=True)
class HealthEndpoint:
    """Where Harbor's health API answers on this host and how to trust it."""

    scheme: str  # http | https
    server_name: str  # the site's hostname (TLS name and Host header)
    port: int
    address: str = LOOPBACK  # where to connect
    cafile: Path | None = None  # extra trust: the site's certificate chain

    @property
    def url(self) -> str:
        """The site's real URL of the health API (what a client would type)."""
        return f"{self.scheme}://{self.server_name}:{self.port}{PATH}"

    @property
    def loopback_url(self) -> str:
        """The same API on this host's loopback (Ansible's gate, which cannot split SNI)."""
        return f"{self.scheme}://{self.address}:{self.port}{PATH}"

    def __str__(self) -> str:
        return self.url if self.address == self.server_name else \
            f"{self.url} (via {self.address})"


def endpoint(harbor: dict[str, Any]) -> HealthEndpoint:
    """The health endpoint of the site's ``harbor:`` section (https when Harbor has TLS)."""
    name = str(harbor.get("hostname", LOOPBACK))
    if "https" in harbor:
        https = harbor.get("https") or {}
        cert = https.get("certificate")
        return HealthEndpoint("https", name, int(https.get("port", 443)),
                              cafile=Path(str(cert)) if cert else None)
    return HealthEndpoint("http", name, int((harbor.get("http") or {}).get("port", 80)))


def of(target: HealthEndpoint | str) -> HealthEndpoint:
    """An endpoint from a plain URL too (a restore given ``http://127.0.0.1:8080/...``)."""
    if isinstance(target, HealthEndpoint):
        return target
    parts = urlsplit(target)
    host = parts.hostname or LOOPBACK
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return HealthEndpoint(parts.scheme or "http", host, port, address=host)


def _context(ep: HealthEndpoint) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ep.cafile is not None:
        context.load_verify_locations(cafile=str(ep.cafile))
        # The site's own leaf or an intermediate is a trust anchor of its own.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class _Connection(http.client.HTTPSConnection):
    """TCP to ``address``, TLS to ``host`` (SNI and the certificate's name)."""

    def __init__(self, ep: HealthEndpoint, timeout: float) -> None:
        super().__init__(ep.server_name, ep.port, timeout=timeout, context=_context(ep))
        self._address = ep.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock,  # type: ignore[attr-defined]
                                              server_hostname=self.host)


def probe(target: HealthEndpoint | str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
    """One GET of the health API; its JSON, or a HealthError saying why there is none."""
    ep = of(target)
    conn: http.client.HTTPConnection
    if ep.scheme == "https":
        conn = _Connection(ep, timeout)
    else:
        conn = http.client.HTTPConnection(ep.address, ep.port, timeout=timeout)
    try:
        conn.request("GET", PATH, headers={"Host": f"{ep.server_name}:{ep.port}",
                                           "Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(1 << 20)
    except ssl.SSLError as exc:
        raise HealthError(f"Harbor health endpoint {ep}: TLS failed: "
                          f"{getattr(exc, 'verify_message', None) or exc.reason or exc}",
                          hint="the certificate must name the site's hostname and chain to "
                          "harbor.https.certificate or a system CA") from None
    except (OSError, http.client.HTTPException) as exc:
        raise HealthError(f"Harbor health endpoint {ep} did not answer: "
                          f"{exc or type(exc).__name__}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise HealthError(f"Harbor health endpoint {ep} answered HTTP {resp.status}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise HealthError(f"Harbor health endpoint {ep} answered no JSON") from None
    return doc if isinstance(doc, dict) else {}


def unhealthy(doc: dict[str, Any]) -> list[str]:
    """Pure: what is not healthy in a health document (empty: all is well)."""
    bad = [str(c.get("name", "?")) for c in doc.get("components", [])
           if c.get("status") != "healthy"]
    if doc.get("status") != "healthy" and not bad:
        bad = [f"status {doc.get('status')!r}"]
    return bad


def check(target: HealthEndpoint | str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Raise a HealthError naming what is unhealthy; else the health document."""
    doc = probe(target, timeout=timeout)
    bad = unhealthy(doc)
    if bad:
        raise HealthError(f"Harbor is unhealthy: {', '.join(bad)}")
    return doc


def wait_healthy(target: HealthEndpoint | str, *, timeout: float, interval: float = 1.0,
                 what: str = "Harbor") -> None:
    """Poll until every component is healthy (bounded in time and tries).

    Harbor answers 502 from its nginx until core is up, then 'unhealthy' while the
    components start; only a healthy answer ends the wait. The error names the last state.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    for _ in range(int(timeout / interval) + 1):
        try:
            check(target)
            return
        except HealthError as exc:
            last = exc.message
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise HealthError(f"{what} was not healthy within {timeout:g} s ({last})",
                      hint="docker logs harbor-core")
