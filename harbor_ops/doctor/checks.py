"""The client-side checks, in the order a client meets the registry.

Each check is a small function over the run's :class:`Context`: it returns a one-line
detail of what it saw, adds findings, raises :class:`Skip` when it does not apply and
:class:`Stop` when nothing after it can work (no address, no connection, no TLS).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import json
import re
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlencode, urlsplit

from harbor_ops.doctor import tls
from harbor_ops.doctor.context import Context, Stop
from harbor_ops.doctor.findings import finding
from harbor_ops.doctor.wire import Endpoint, Response, Wire, parse_challenge, verifying_context

SKEW_WARN_SECONDS = 60
SKEW_ERROR_SECONDS = 300


class Skip(Exception):
    """The check does not apply to this registry or these options."""


def resolve(ctx: Context, host: str) -> str:
    """The address for ``host``: the --resolve mapping, else the system resolver (bounded)."""
    if host in ctx.opts.resolve:
        return ctx.opts.resolve[host]
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM)
        infos = future.result(timeout=ctx.opts.timeout)
    except FutureTimeout:
        raise TimeoutError(f"resolving {host} took over {ctx.opts.timeout:g} s") from None
    finally:
        pool.shutdown(wait=False)  # a hung resolver must not hold doctor past its timeout
    return str(infos[0][4][0])


def check_dns(ctx: Context) -> str:
    try:
        ctx.address = resolve(ctx, ctx.ep.host)
    except (OSError, UnicodeError) as exc:
        ctx.add(finding("dns-failure", f"{ctx.ep.host} does not resolve", str(exc),
                        host=ctx.ep.hostport))
        raise Stop from None
    return f"{ctx.ep.host} -> {ctx.address}"


def check_tcp(ctx: Context) -> str:
    t0 = time.monotonic()
    try:
        socket.create_connection((ctx.address, ctx.ep.port), ctx.opts.timeout).close()
    except TimeoutError:
        ctx.add(finding("timeout", f"no answer from {ctx.address}:{ctx.ep.port} within "
                        f"{ctx.opts.timeout:g} s", "TCP connect timed out",
                        host=ctx.ep.hostport))
        raise Stop from None
    except OSError as exc:
        ctx.add(finding("tcp-unreachable", f"cannot connect to {ctx.address}:{ctx.ep.port}",
                        str(exc), host=ctx.ep.hostport))
        raise Stop from None
    return f"connected to {ctx.address}:{ctx.ep.port} in {1000 * (time.monotonic() - t0):.0f} ms"


def check_tls(ctx: Context) -> str:
    if ctx.ep.scheme != "https":
        raise Skip("plain http URL")
    try:
        chain = tls.presented_chain(ctx.ep, ctx.address, ctx.opts.timeout)
    except tls.PlainHttp as exc:
        ctx.add(finding("http-to-https", f"{ctx.ep.hostport} speaks plain HTTP where the client "
                        "asked for HTTPS ('server gave HTTP response to HTTPS client')",
                        f"TLS handshake answered with HTTP ({exc})", host=ctx.ep.hostport))
        raise Stop from None
    except (OSError, ssl.SSLError) as exc:
        ctx.add(finding("tcp-unreachable" if not isinstance(exc, TimeoutError) else "timeout",
                        "the TLS handshake failed", str(exc), host=ctx.ep.hostport))
        raise Stop from None
    source = tls.trust_source(ctx.ep, ctx.opts.ca, ctx.opts.docker_certs_dir)
    found, seen = tls.judge(chain, ctx.ep, source, now=dt.datetime.now(dt.UTC),
                            timeout=ctx.opts.timeout)
    ctx.add(*found)
    if not found:
        ctx.cafile = source.cafile
        ctx.verified = verifying_context(source.cafile)
        if ctx.opts.ca is not None and source.cafile == str(ctx.opts.ca) and \
                ctx.opts.docker_certs_dir.parent.is_dir() and \
                not (ctx.opts.docker_certs_dir / ctx.ep.hostport / "ca.crt").is_file():
            ctx.add(finding("docker-ca-missing", "trusted through --ca, but docker on this "
                            "machine has no CA for this registry",
                            f"{ctx.opts.docker_certs_dir / ctx.ep.hostport / 'ca.crt'} is "
                            "missing", host=ctx.ep.hostport))
    ctx.wire = Wire(ctx.ep, address=ctx.address, timeout=ctx.opts.timeout,
                    context=ctx.verified)
    return f"{seen}; trust: {source.label}"


def check_registry(ctx: Context) -> str:
    """GET /v2/ without credentials: the challenge tells how the client must log in."""
    if ctx.wire is None:
        ctx.wire = Wire(ctx.ep, address=ctx.address, timeout=ctx.opts.timeout)
    try:
        resp = ctx.get("/v2/")
    except http.client.BadStatusLine as exc:
        ctx.add(finding("http-to-https", f"{ctx.ep.hostport} does not answer plain HTTP",
                        f"reply was not HTTP: {exc!r:.80}", host=ctx.ep.hostport))
        raise Stop from None
    ctx.first = resp
    if resp.status == 400 and (b"HTTPS port" in resp.body or b"HTTPS server" in resp.body):
        ctx.add(finding("http-to-https", f"{ctx.ep.hostport} expects HTTPS; the URL says http",
                        "400: The plain HTTP request was sent to HTTPS port",
                        host=ctx.ep.hostport))
        raise Stop
    if resp.status == 200:
        return "GET /v2/ -> 200 (no authentication required)"
    if resp.status != 401 or not resp.header("www-authenticate"):
        ctx.registry_ok = False
        if resp.status >= 500:
            ctx.add(finding("component-unhealthy", f"the registry behind {ctx.ep.hostport} "
                            f"does not answer (GET /v2/ -> {resp.status})", brief(resp),
                            host=ctx.ep.hostport))
        else:
            ctx.add(finding("push-failed", f"GET /v2/ answered {resp.status}: not an OCI "
                            "registry endpoint", brief(resp), host=ctx.ep.hostport))
        return f"GET /v2/ -> {resp.status}"
    ctx.challenge = parse_challenge(resp.header("www-authenticate"))
    return f"GET /v2/ -> 401 {resp.header('www-authenticate')}"


def check_harbor(ctx: Context) -> str:
    resp = ctx.get("/api/v2.0/ping")
    ctx.report.harbor = resp.status == 200 and resp.body.strip().strip(b'"') == b"Pong"
    return "Harbor (/api/v2.0/ping answers Pong)" if ctx.report.harbor else \
        f"not Harbor (/api/v2.0/ping -> {resp.status})"


def check_realm(ctx: Context) -> str:
    if ctx.challenge is None or ctx.challenge[0] != "bearer":
        raise Skip("no token challenge")
    realm = ctx.challenge[1].get("realm", "")
    try:
        rep = Endpoint.parse(realm)
    except Exception:  # noqa: BLE001 - a realm we cannot parse is the finding
        rep = None
    downgrade = rep is not None and ctx.ep.scheme == "https" and rep.scheme == "http"
    foreign = rep is not None and (rep.scheme, rep.host, rep.port) != \
        (ctx.ep.scheme, ctx.ep.host, ctx.ep.port)
    if rep is None or downgrade or (ctx.report.harbor and foreign):
        why = "is not a URL" if rep is None else "uses plain http" if downgrade else \
            f"is not {ctx.ep.base}"
        ctx.add(finding("realm-mismatch", f"the token realm {why}: clients loop on "
                        "'unauthorized: authentication required'",
                        f'WWW-Authenticate realm="{realm}", client URL {ctx.ep.base}',
                        host=ctx.ep.hostport))
    return f"realm {realm}"


def realm_wire(ctx: Context) -> tuple[Wire, str]:
    """A connection to the token realm (the registry's own when it is the same endpoint)."""
    assert ctx.challenge is not None and ctx.wire is not None
    parts = urlsplit(ctx.challenge[1].get("realm", ""))
    rep = Endpoint.parse(ctx.challenge[1].get("realm", ""))
    if (rep.scheme, rep.host, rep.port) == (ctx.ep.scheme, ctx.ep.host, ctx.ep.port):
        return ctx.wire, parts.path
    context = None
    if rep.scheme == "https" and ctx.verified is not None:
        context = verifying_context(ctx.cafile)
    return Wire(rep, address=resolve(ctx, rep.host), timeout=ctx.opts.timeout,
                context=context), parts.path


def fetch_token(ctx: Context, scope: str | None) -> str:
    """A bearer token for ``scope`` (credentials only when they may travel); '' = refused."""
    assert ctx.challenge is not None
    params = {"service": ctx.challenge[1].get("service", "")}
    if scope:
        params["scope"] = scope
    wire, path = realm_wire(ctx)
    # never send the password over plain http when the client itself used https
    downgrade = wire.ep.scheme == "http" and ctx.ep.scheme == "https"
    headers = ctx.basic() if ctx.credentials_ok and not downgrade else {}
    resp = wire.request("GET", f"{path}?{urlencode(params)}", headers=headers)
    if resp.status != 200:
        if resp.status in (401, 403) and headers:
            ctx.add(finding("auth-failed", "the token service refused the credentials",
                            f"GET realm -> {resp.status}", host=ctx.ep.hostport))
        elif not any(f.id == "realm-mismatch" for f in ctx.report.findings):
            ctx.add(finding("realm-mismatch", "the token realm does not hand out tokens",
                            f"GET {wire.ep.base}{path} -> {brief(resp)}",
                            host=ctx.ep.hostport))
        return ""
    data = json.loads(resp.body or b"{}")
    if data.get("issued_at"):
        ctx.token_issued = (str(data["issued_at"]), resp.received)
    return str(data.get("token") or data.get("access_token") or "")


def probe_auth(ctx: Context, scope: str) -> dict[str, str]:
    """Headers for a probe step; no token is a Skip (the auth check already said why)."""
    try:
        headers = auth_headers(ctx, scope)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise Skip(f"no token: {exc}") from None
    if ctx.challenge is not None and not headers:
        raise Skip("no token (see the realm and auth checks)")
    return headers


def auth_headers(ctx: Context, scope: str | None) -> dict[str, str]:
    if ctx.challenge is None:
        return {}
    if ctx.challenge[0] == "bearer":
        token = fetch_token(ctx, scope)
        return {"Authorization": f"Bearer {token}"} if token else {}
    return ctx.basic() if ctx.credentials_ok else {}


def stripped(ctx: Context, resp: Response, sent: dict[str, str]) -> bool:
    """A 401 whose challenge is the anonymous one: the Authorization header never arrived."""
    if resp.status != 401 or ctx.challenge is None or "Authorization" not in sent:
        return False
    scheme, params = parse_challenge(resp.header("www-authenticate"))
    return scheme == "bearer" == ctx.challenge[0] and "error" not in params and \
        params.get("realm") == ctx.challenge[1].get("realm")


def require_registry(ctx: Context) -> None:
    if not ctx.registry_ok:
        raise Skip("the registry did not answer")


def check_auth(ctx: Context) -> str:
    require_registry(ctx)
    if ctx.challenge is None:
        raise Skip("the registry asks for no credentials")
    if ctx.challenge[0] != "bearer" and not ctx.credentials_ok:
        raise Skip("basic authentication and no usable credentials")
    try:
        headers = auth_headers(ctx, None)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        ctx.add(finding("realm-mismatch", "the token realm cannot be reached",
                        f"{ctx.challenge[1].get('realm')}: {exc}", host=ctx.ep.hostport))
        return "token fetch failed"
    if not headers:
        return "no token"
    resp = ctx.get("/v2/", headers)
    if stripped(ctx, resp, headers):
        ctx.add(finding("auth-header-stripped", "the registry answered as if no credentials "
                        "were sent: a proxy drops the Authorization header",
                        f"GET /v2/ with a token -> 401 {resp.header('www-authenticate')}",
                        host=ctx.ep.hostport))
    elif resp.status == 401 and not ctx.credentials_ok:
        return "anonymous token refused at GET /v2/ (expected without --username)"
    elif resp.status == 401 and ctx.challenge[0] == "basic":
        ctx.add(finding("auth-failed", "the registry refused the credentials (or a proxy "
                        "dropped them)", "GET /v2/ -> 401", host=ctx.ep.hostport))
    elif resp.status == 401:
        ctx.add(finding("auth-failed", "the registry refused the token",
                        f"GET /v2/ -> 401 {resp.header('www-authenticate')}",
                        host=ctx.ep.hostport))
    return f"authorized GET /v2/ -> {resp.status}"


def check_clock(ctx: Context) -> str:
    """The server's Date header and the token's issued_at against this machine's clock."""
    seen: list[tuple[float, str]] = []
    if ctx.first is not None and ctx.first.header("date"):
        server = email.utils.parsedate_to_datetime(ctx.first.header("date")).timestamp()
        seen.append((server - ctx.first.received, f"Date: {ctx.first.header('date')}"))
    if ctx.token_issued is not None:
        issued, received = ctx.token_issued
        try:
            at = dt.datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
            seen.append((at - received, f"token issued_at {issued}"))
        except ValueError:
            pass
    if not seen:
        raise Skip("no Date header or token time")
    skew, what = max(seen, key=lambda s: abs(s[0]))
    if abs(skew) >= SKEW_WARN_SECONDS:
        severity = "error" if abs(skew) >= SKEW_ERROR_SECONDS else "warning"
        ctx.add(finding("clock-skew", f"the registry's clock is {abs(skew):.0f} s "
                        f"{'ahead of' if skew > 0 else 'behind'} this machine's",
                        f"{what}; local time {email.utils.formatdate(usegmt=True)}",
                        severity=severity, host=ctx.ep.hostport))
    return f"server clock {skew:+.0f} s"


def brief(resp: Response) -> str:
    server = resp.header("server")
    text = re.sub(r"<[^>]*>", " ", resp.body[:400].decode("utf-8", "replace"))
    text = " ".join(text.split())[:160]
    return f"{resp.status}{f' from {server}' if server else ''}: {text}"
