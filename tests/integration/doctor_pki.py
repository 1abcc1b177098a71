"""A private PKI for doctor's tests: root and intermediate CAs, server certificates.

Each failure doctor must name is built from real certificates: one from a CA the client
does not trust, one without the name used, an expired one, one served without its
intermediate (its AIA URL points at the intermediate, as commercial CAs' do).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca(cn: str, issuer: Issued | None = None) -> Issued:
    """A CA certificate (self-signed root, or an intermediate of ``issuer``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    b = (x509.CertificateBuilder().subject_name(_name(cn))
         .issuer_name(issuer.cert.subject if issuer else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - dt.timedelta(days=1000))
         .not_valid_after(NOW + dt.timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                      False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    return Issued(b.sign(signer, hashes.SHA256()), key)


def leaf(issuer: Issued, names: list[str], *, days: int = 90, expired: bool = False,
         aia_url: str | None = None, key_ids: bool = True) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    start = NOW - dt.timedelta(days=400 if expired else 1)
    end = NOW - dt.timedelta(days=2) if expired else NOW + dt.timedelta(days=days)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    b = (x509.CertificateBuilder().subject_name(_name(names[0]))
         .issuer_name(issuer.cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                        critical=False))
    if key_ids:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    if aia_url:
        b = b.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia_url))]),
            critical=False)
    return Issued(b.sign(issuer.key, hashes.SHA256()), key)


def write_pair(dir: Path, name: str, server: Issued, *chain: Issued) -> tuple[Path, Path]:
    """``name``.crt (server cert then ``chain``) and ``name``.key (0600)."""
    crt, key = dir / f"{name}.crt", dir / f"{name}.key"
    crt.write_bytes(server.pem() + b"".join(c.pem() for c in chain))
    key.write_bytes(server.key_pem())
    key.chmod(0o600)
    return crt, key
