"""HTTP to the registry the way a client meets it: a name, an address, a port, a timeout.

Why not urllib: doctor must connect to an address of its choosing (``--resolve``, so a test
or a user can aim at one node behind a balancer) while sending the name in SNI and Host,
must never follow a redirect on its own (a Location that changes scheme or host IS the
finding), and must give each step its own timeout. ``http.client`` does all of that.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from harbor_ops.core.errors import UsageError

MAX_BODY = 1 << 20  # answers are read up to 1 MiB; doctor never needs more
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url {url!r} is not a registry URL; use https://host[:port]")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise UsageError(f"--url {url!r}: {exc}") from None
        return cls(parts.scheme, parts.hostname.lower(), port)

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)

    @property
    def hostport(self) -> str:
        """host[:port] as docker names it (certs.d folder, image references)."""
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}" + ("" if self.default_port else f":{self.port}")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    received: float = field(default_factory=time.time)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="..",service=".."`` -> ("bearer", {"realm": .., "service": ..})."""
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE.findall(rest)}


class _Conn(http.client.HTTPSConnection):
    """One connection to ``address`` that speaks to ``host`` (SNI, Host header)."""

    def __init__(self, ep: Endpoint, address: str, timeout: float,
                 context: ssl.SSLContext | None) -> None:
        super().__init__(ep.host, ep.port, timeout=timeout, context=context)
        self._address = address
        self._tls_context = context if ep.scheme == "https" else None

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = (self._tls_context.wrap_socket(sock, server_hostname=self.host)
                     if self._tls_context is not None else sock)


class Wire:
    """Requests to one endpoint over a kept-alive connection; never follows redirects."""

    def __init__(self, ep: Endpoint, *, address: str, timeout: float,
                 context: ssl.SSLContext | None = None) -> None:
        self.ep = ep
        self.address = address
        self.timeout = timeout
        if context is None and ep.scheme == "https":
            context = insecure_context()
        self._context = context
        self._conn: _Conn | None = None

    def request(self, method: str, target: str, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, limit: int = MAX_BODY) -> Response:
        """``target`` is a path (with query); the body is read up to ``limit`` bytes.

        Raises OSError/HTTPException on the wire."""
        for attempt in (1, 2):
            conn = self._conn or _Conn(self.ep, self.address, self.timeout, self._context)
            self._conn = conn
            try:
                conn.request(method, target, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read(limit) if method != "HEAD" else b""
                if resp.will_close or not resp.isclosed():
                    self.close()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                                data)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server dropped: one fresh retry
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def insecure_context() -> ssl.SSLContext:
    """For unauthenticated diagnosis only: trust was judged (and reported) separately."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verifying_context(cafile: str | None) -> ssl.SSLContext:
    """What credentials travel over: the CA the client trusts, host name checked."""
    ctx = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        ctx.load_default_certs()
    return ctx
