"""Certificate and key checks that catch Harbor's most reported x509 failures up front.

Users hit these at install time or, worse, at the first ``docker login`` (landscape §2-C/G):
a key that belongs to another certificate, a certificate that names the host only in its
Common Name (Go refuses it since Harbor 2.2: "x509: certificate relies on legacy Common Name
field"), a commercial certificate served without its intermediate ("x509: certificate signed
by unknown authority"), and expiry. Everything here is real X.509 work with ``cryptography``;
the result is a list of findings, each with its severity and fix, that preflight and doctor
render.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

SYSTEM_STORE = Path("/etc/ssl/certs")
WARN_DAYS = 30
MAX_CHAIN = 10
# Go (Docker, Harbor) is more lenient than the Web PKI profile cryptography defaults to: it
# does not insist on authorityKeyIdentifier, keyUsage or EKU in private CAs. So the checks
# below build chains and match names with cryptography's verifier under a permissive
# extension policy (basicConstraints on CAs, as Go requires), and leave each other finding
# (SAN presence, expiry, key match) to its own check with its own message.
_CA_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.BasicConstraints, Criticality.AGNOSTIC, None)
_EE_POLICY = ExtensionPolicy.permit_all()
_SERVER_EE_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)


@dataclass(frozen=True)
class Finding:
    severity: str  # "fail" | "warn" | "info"
    message: str
    fix: str = ""


@dataclass
class CertReport:
    """The findings for one certificate/key pair; ``worst`` is the verdict."""

    certificate: Path
    private_key: Path
    findings: list[Finding] = field(default_factory=list)
    subject: str | None = None
    days_left: int | None = None
    chain: list[str] = field(default_factory=list)  # subjects, leaf first

    @property
    def worst(self) -> str:
        sev = {f.severity for f in self.findings}
        return "fail" if "fail" in sev else "warn" if "warn" in sev else "pass"

    def fail(self, message: str, fix: str = "") -> None:
        self.findings.append(Finding("fail", message, fix))

    def warn(self, message: str, fix: str = "") -> None:
        self.findings.append(Finding("warn", message, fix))

    def info(self, message: str) -> None:
        self.findings.append(Finding("info", message))


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file (leaf first, as servers send them), or one DER cert."""
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def check_pair(certificate: Path, private_key: Path, hostname: str, *,
               now: dt.datetime | None = None, trust_store: Path | None = SYSTEM_STORE,
               warn_days: int = WARN_DAYS) -> CertReport:
    """Check that the pair can serve ``hostname`` to Docker clients today."""
    rep = CertReport(Path(certificate), Path(private_key))
    now = now or dt.datetime.now(dt.UTC)
    certs = _load_certs(rep)
    key = _load_key(rep)
    if not certs:
        return rep
    leaf = certs[0]
    rep.subject = leaf.subject.rfc4514_string()
    if key is not None:
        _check_key_match(rep, leaf, key, certs)
    _check_san(rep, leaf, hostname)
    _check_validity(rep, leaf, now, warn_days)
    _check_chain(rep, certs, now, _load_store(trust_store))
    return rep


def _load_certs(rep: CertReport) -> list[x509.Certificate]:
    p = rep.certificate
    if not p.exists():
        rep.fail(f"certificate {p} does not exist", "point the setting at the PEM file")
        return []
    if not p.is_file():
        rep.fail(f"certificate {p} is not a regular file", "point the setting at the PEM file")
        return []
    try:
        return load_certificates(p)
    except (ValueError, OSError) as exc:
        rep.fail(f"certificate {p} is not a PEM/DER X.509 certificate ({exc})",
                 "use the PEM certificate file (-----BEGIN CERTIFICATE-----)")
        return []


def _load_key(rep: CertReport) -> PrivateKeyTypes | None:
    p = rep.private_key
    if not p.exists() or not p.is_file():
        rep.fail(f"private key {p} does not exist or is not a regular file",
                 "point the setting at the PEM private key")
        return None
    try:
        return serialization.load_pem_private_key(p.read_bytes(), password=None)
    except TypeError:
        rep.fail(f"private key {p} is encrypted; Harbor's nginx cannot ask for a passphrase",
                 f"decrypt it: openssl pkey -in {p} -out {p}.plain")
    except (ValueError, UnsupportedAlgorithm, OSError) as exc:
        rep.fail(f"private key {p} is not a PEM private key ({exc})",
                 "use the PEM key that was generated with the certificate request")
    return None


def _spki(obj: PublicKeyTypes) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key_match(rep: CertReport, leaf: x509.Certificate, key: PrivateKeyTypes,
                     certs: list[x509.Certificate]) -> None:
    mine = _spki(key.public_key())
    if _spki(leaf.public_key()) == mine:
        return
    if any(_spki(c.public_key()) == mine for c in certs[1:]):
        rep.fail(f"the private key belongs to a later certificate in {rep.certificate}, not "
                 "to the first one", "put the server (leaf) certificate first, then the "
                 "intermediates")
    else:
        rep.fail(f"the private key {rep.private_key} does not match certificate "
                 f"{rep.certificate}", "use the key generated with this certificate's request "
                 "(compare `openssl x509 -noout -pubkey` with `openssl pkey -pubout`)")


def san_names(cert: x509.Certificate) -> tuple[list[str], list[str]] | None:
    """(DNS names, IP addresses) of the SAN extension, or None when there is none."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    san = ext.value
    return (list(san.get_values_for_type(x509.DNSName)),
            [str(a) for a in san.get_values_for_type(x509.IPAddress)])


def covers(leaf: x509.Certificate, hostname: str) -> bool:
    """Whether the leaf's SAN covers ``hostname`` (RFC 6125, by cryptography's verifier).

    The leaf is its own trust anchor here and the time is inside its validity, so the
    only thing left to refuse is the name.
    """
    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        subject = x509.DNSName(hostname)
    verifier = (PolicyBuilder().store(Store([leaf])).time(leaf.not_valid_before_utc)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_SERVER_EE_POLICY)
                .build_server_verifier(subject))
    try:
        verifier.verify(leaf, [])
    except VerificationError:
        return False
    return True


def _check_san(rep: CertReport, leaf: x509.Certificate, hostname: str) -> None:
    names = san_names(leaf)
    if names is None:
        rep.fail(f"{rep.certificate} has no subjectAltName (Common Name only); Docker and "
                 "Harbor (Go) reject it: 'x509: certificate relies on legacy Common Name field'",
                 f"reissue it with subjectAltName = DNS:{hostname}")
        return
    dns, ips = names
    try:
        want = f"IP:{ipaddress.ip_address(hostname)}"
    except ValueError:
        want = f"DNS:{hostname}"
    if not covers(leaf, hostname):
        listed = ", ".join([f"DNS:{n}" for n in dns] + [f"IP:{i}" for i in ips]) or "nothing"
        rep.fail(f"{rep.certificate} does not cover harbor.hostname {hostname} (its SAN lists "
                 f"{listed})", f"reissue it with subjectAltName = {want}, or fix the hostname")


def _check_validity(rep: CertReport, leaf: x509.Certificate, now: dt.datetime,
                    warn_days: int) -> None:
    after, before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    rep.days_left = (after - now).days if after > now else -((now - after).days + 1)
    if before > now:
        rep.fail(f"{rep.certificate} is not valid before {before:%Y-%m-%d %H:%M} UTC",
                 "check the host clock, or wait for the validity start")
    if after <= now:
        rep.fail(f"{rep.certificate} expired on {after:%Y-%m-%d}", "renew the certificate")
    elif rep.days_left < warn_days:
        rep.warn(f"{rep.certificate} expires in {rep.days_left} day(s) ({after:%Y-%m-%d})",
                 "renew it before it expires")
    else:
        rep.info(f"valid until {after:%Y-%m-%d} ({rep.days_left} days)")


def _load_store(store: Path | None) -> dict[x509.Name, list[x509.Certificate]]:
    """Trusted roots by subject (a directory of PEM files, or one bundle file)."""
    out: dict[x509.Name, list[x509.Certificate]] = {}
    if store is None or not store.exists():
        return out
    files: Iterable[Path] = [store] if store.is_file() else sorted(store.iterdir())
    for f in files:
        if f.suffix not in (".pem", ".crt") or not f.is_file():
            continue
        try:
            # A few system roots carry non-positive serial numbers; cryptography warns
            # about each, which is noise to the user of a preflight.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                certs = x509.load_pem_x509_certificates(f.read_bytes())
        except (ValueError, OSError):
            continue
        for c in certs:
            out.setdefault(c.subject, []).append(c)
    return out


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _reason(exc: VerificationError) -> str:
    """cryptography's message without its trailing certificate repr."""
    return str(exc).split(" (encountered processing", 1)[0].removeprefix("validation failed: ")


def _check_chain(rep: CertReport, certs: list[x509.Certificate], now: dt.datetime,
                 store: dict[x509.Name, list[x509.Certificate]]) -> None:
    """Build leaf -> intermediates -> a root of the trust store or a root in the file.

    A root the server sends itself counts as the end of a complete chain (whether clients
    trust it is theirs to decide: ca.crt). The leaf's own validity is _check_validity's
    finding, so the chain is built at a moment the leaf is valid.
    """
    leaf = certs[0]
    roots = [c for found in store.values() for c in found]
    anchors = roots + [c for c in certs if _self_signed(c)]
    at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    if not anchors:
        _explain_chain(rep, certs, roots, at, "no trusted root at all")
        return
    verifier = (PolicyBuilder().store(Store(anchors)).time(at).max_chain_depth(MAX_CHAIN)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        chain = verifier.verify(leaf, certs[1:]).chain
    except VerificationError as exc:
        _explain_chain(rep, certs, roots, at, _reason(exc))
        return
    rep.chain = [c.subject.rfc4514_string()
                 + (" (system store)" if c in roots and c not in certs else "") for c in chain]
    for c in chain[1:]:
        if c.not_valid_after_utc <= now:
            _expired_in_chain(rep, c)
    if len(chain) == 1:
        rep.info("self-signed certificate: every Docker client needs it as "
                 "/etc/docker/certs.d/<host:port>/ca.crt")


def _expired_in_chain(rep: CertReport, cert: x509.Certificate) -> None:
    rep.fail(f"chain certificate {cert.subject.rfc4514_string()} expired on "
             f"{cert.not_valid_after_utc:%Y-%m-%d}",
             "replace it with the CA's current intermediate")


def _explain_chain(rep: CertReport, certs: list[x509.Certificate],
                   roots: list[x509.Certificate], at: dt.datetime, reason: str) -> None:
    """Turn a failed chain build into the finding a person can act on."""
    rep.chain = [certs[0].subject.rfc4514_string()]
    stale = [c for c in certs[1:] if not c.not_valid_before_utc <= at < c.not_valid_after_utc]
    for c in stale:
        _expired_in_chain(rep, c)
    known = {c.subject for c in certs} | {c.subject for c in roots}
    missing = list(dict.fromkeys(c.issuer for c in certs if c.issuer not in known))
    if missing:
        rep.fail(f"incomplete chain in {rep.certificate}: no certificate for issuer "
                 + ", ".join(n.rfc4514_string() for n in missing)
                 + " (clients will say 'x509: certificate signed by unknown authority')",
                 "append the intermediate certificate(s) after the server certificate, "
                 "up to a root (or a root in the system store)")
    elif not stale:
        rep.fail(f"the chain in {rep.certificate} does not verify: {reason}",
                 "keep only the leaf, its intermediates (in order) and optionally the root")
