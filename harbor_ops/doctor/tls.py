"""The TLS part of doctor: what the server presents, and whether a client would accept it.

A Go client (docker, containerd, skopeo) rejects a certificate for one of four reasons users
meet as four different errors: unknown authority, wrong name, expired, or a chain the server
sends without its intermediate. They need four different fixes, so each is judged on its
own: names and dates directly, trust with ``cryptography.x509.verification`` against the
CA the client would use (``--ca``, else docker's ``certs.d/<host:port>/ca.crt``, else the
system store). An incomplete chain is told apart from an unknown CA by fetching the
issuer the certificate itself names (AIA caIssuers, what browsers do; docker does not).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import AuthorityInformationAccessOID

from harbor_ops.doctor.findings import Finding, finding
from harbor_ops.doctor.wire import Endpoint, insecure_context
from harbor_ops.hosts.certs import covers, san_names

DOCKER_CERTS_DIR = Path("/etc/docker/certs.d")
# The Web PKI profile, minus what Go's verifier (docker, containerd, skopeo) does not ask
# for: key identifiers. A private CA made without them must not read as "unknown authority".
_ANY = xv.Criticality.AGNOSTIC
_EE_POLICY = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.AuthorityKeyIdentifier, _ANY, None)
_CA_POLICY = (xv.ExtensionPolicy.webpki_defaults_ca()
              .may_be_present(x509.AuthorityKeyIdentifier, _ANY, None)
              .may_be_present(x509.SubjectKeyIdentifier, _ANY, None))
AIA_MAX_BYTES = 64 * 1024


class PlainHttp(Exception):
    """The port answered a TLS ClientHello with plain HTTP."""


@dataclass(frozen=True)
class TrustSource:
    label: str
    anchors: list[x509.Certificate]
    cafile: str | None  # for an ssl context; None = the system store


def presented_chain(ep: Endpoint, address: str, timeout: float) -> list[x509.Certificate]:
    """The certificates the server sends, leaf first, without judging them."""
    with socket.create_connection((address, ep.port), timeout) as raw:
        try:
            with insecure_context().wrap_socket(raw, server_hostname=ep.host) as tls:
                sslobj = tls._sslobj  # type: ignore[attr-defined]  # public only from 3.13
                ders = [c.public_bytes(2) for c in sslobj.get_unverified_chain()]
        except ssl.SSLError as exc:
            if _speaks_plain_http(ep, address, timeout):
                raise PlainHttp(str(exc)) from None
            raise
    return [x509.load_der_x509_certificate(d) for d in ders]


def _speaks_plain_http(ep: Endpoint, address: str, timeout: float) -> bool:
    with socket.create_connection((address, ep.port), timeout) as s:
        s.sendall(f"HEAD /v2/ HTTP/1.0\r\nHost: {ep.hostport}\r\n\r\n".encode())
        return s.recv(16).startswith(b"HTTP/")


def trust_source(ep: Endpoint, ca: Path | None, docker_certs_dir: Path) -> TrustSource:
    """The CA a client uses for this host:port: --ca, docker's certs.d, the system store."""
    if ca is not None:
        return TrustSource(f"--ca {ca}", _load_pem(ca), str(ca))
    docker_ca = docker_certs_dir / ep.hostport / "ca.crt"
    if docker_ca.is_file():
        return TrustSource(str(docker_ca), _load_pem(docker_ca), str(docker_ca))
    paths = ssl.get_default_verify_paths()
    bundle = Path(paths.cafile or paths.openssl_cafile)
    return TrustSource("the system store", _load_pem(bundle) if bundle.is_file() else [], None)


def _load_pem(path: Path) -> list[x509.Certificate]:
    with warnings.catch_warnings():  # a few system roots have odd serials: noise here
        warnings.simplefilter("ignore")
        try:
            return x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError:
            return []


def judge(chain: list[x509.Certificate], ep: Endpoint, source: TrustSource, *,
          now: dt.datetime, timeout: float) -> tuple[list[Finding], str]:
    """Findings for the presented chain, and a one-line summary of what was seen."""
    leaf = chain[0]
    out: list[Finding] = []
    days = (leaf.not_valid_after_utc - now).days
    seen = (f"{leaf.subject.rfc4514_string()}, {len(chain)} cert(s) sent, "
            f"valid until {leaf.not_valid_after_utc:%Y-%m-%d} ({days} days)")
    out += _dates(chain, now, ep)
    name_ok, names = _name(leaf, ep.host)
    if not name_ok:
        out.append(finding("tls-name-mismatch", f"the certificate does not name {ep.host}",
                           f"its subjectAltName lists {names or 'nothing (Common Name only)'}",
                           host=ep.hostport))
    out += _trust(chain, ep, source, now=now, timeout=timeout, name_ok=name_ok)
    return out, seen


def _dates(chain: list[x509.Certificate], now: dt.datetime, ep: Endpoint) -> list[Finding]:
    out = []
    for cert in chain:
        before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
        what = "the server certificate" if cert is chain[0] else \
            f"chain certificate {cert.subject.rfc4514_string()}"
        if after <= now:
            out.append(finding("tls-expired", f"{what} expired on {after:%Y-%m-%d %H:%M} UTC",
                               f"notAfter {after.isoformat()}, now {now:%Y-%m-%dT%H:%M}Z",
                               host=ep.hostport))
        elif before > now:
            out.append(finding("tls-expired", f"{what} is not valid before "
                               f"{before:%Y-%m-%d %H:%M} UTC (server or client clock?)",
                               f"notBefore {before.isoformat()}", host=ep.hostport))
    return out


def _name(leaf: x509.Certificate, host: str) -> tuple[bool, str]:
    sans = san_names(leaf)
    if sans is None:
        return False, ""
    dns, ips = sans
    listed = ", ".join([f"DNS:{n}" for n in dns] + [f"IP:{i}" for i in ips])
    return covers(leaf, host), listed


def _verifier_subject(leaf: x509.Certificate, host: str, name_ok: bool) -> xv.Subject | None:
    """The name to build the path for: the one used, or (to judge trust alone) one it has."""
    if name_ok:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)
    dns, ips = san_names(leaf) or ([], [])
    if dns and not dns[0].startswith("*"):
        return x509.DNSName(dns[0])
    return x509.IPAddress(ipaddress.ip_address(ips[0])) if ips else None


def _verifies(chain: list[x509.Certificate], anchors: list[x509.Certificate],
              subject: xv.Subject, at: dt.datetime) -> str | None:
    """None when a path to an anchor exists, else the verifier's reason."""
    if not anchors:
        return "no trusted CA certificates"
    verifier = (xv.PolicyBuilder().store(xv.Store(anchors)).time(at)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_server_verifier(subject))
    try:
        verifier.verify(chain[0], chain[1:])
        return None
    except xv.VerificationError as exc:
        return str(exc)


def _judging_time(chain: list[x509.Certificate], now: dt.datetime) -> dt.datetime:
    """Now, or (dates were judged already) a moment every presented certificate is valid."""
    start = max(c.not_valid_before_utc for c in chain)
    end = min(c.not_valid_after_utc for c in chain)
    if start <= now < end or end <= start:
        return now
    return start + (end - start) / 2


def _trust(chain: list[x509.Certificate], ep: Endpoint, source: TrustSource, *,
           now: dt.datetime, timeout: float, name_ok: bool) -> list[Finding]:
    leaf = chain[0]
    subject = _verifier_subject(leaf, ep.host, name_ok)
    if subject is None:
        return []  # no SAN at all: the name finding already says it all
    at = _judging_time(chain, now)
    reason = _verifies(chain, source.anchors, subject, at)
    if reason is None:
        return []
    top = chain[-1]
    fetched = _aia_issuers(top, timeout)
    if fetched and _verifies(chain + fetched, source.anchors, subject, at) is None:
        return [finding("tls-incomplete-chain",
                        "the server sends its certificate without the intermediate CA",
                        f"sent {len(chain)} cert(s) ending at issuer "
                        f"{top.issuer.rfc4514_string()}; with that issuer (from the "
                        f"certificate's AIA URL) it chains to {source.label}",
                        host=ep.hostport)]
    hint = ""
    if top.issuer != top.subject:
        hint = (f"; the last certificate sent is issued by {top.issuer.rfc4514_string()}, "
                "which is not in the trusted set (if that is an intermediate CA, the server "
                "must send it too)")
    return [finding("tls-unknown-authority",
                    f"the certificate is not signed by a CA trusted through {source.label}",
                    f"{reason}{hint}", host=ep.hostport)]


def _aia_issuers(cert: x509.Certificate, timeout: float) -> list[x509.Certificate]:
    """The issuer certificate the AIA extension points at (http only, small, bounded)."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    for desc in aia:
        url = desc.access_location.value
        if desc.access_method != AuthorityInformationAccessOID.CA_ISSUERS or \
                not isinstance(url, str) or not url.startswith("http://"):
            continue
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http only
                data = resp.read(AIA_MAX_BYTES)
        except (OSError, ValueError):
            continue
        try:
            if b"-----BEGIN" in data:
                return x509.load_pem_x509_certificates(data)
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            continue
    return []
