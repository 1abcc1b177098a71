"""Certificate checks on real certificates built with `cryptography` (no mocks)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harbor_ops.hosts import certs

NOW = dt.datetime.now(dt.UTC)
HOST = "harbor.test.internal"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(cn: str, key, issuer_cert=None, issuer_key=None, *, ca: bool = False,
          san: list[x509.GeneralName] | None = None, days: int = 365,
          start: dt.datetime | None = None) -> x509.Certificate:
    start = start or NOW - dt.timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem(*cs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cs)


def _keypem(k) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


class PKI:
    """A root CA, an intermediate, and helpers to write leaf pairs into tmp_path."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root_key, self.int_key = _key(), _key()
        self.root = _cert("Test Root CA", self.root_key, ca=True, days=3650)
        self.inter = _cert("Test Intermediate CA", self.int_key, self.root, self.root_key,
                           ca=True, days=1800)
        self.store = tmp / "store"
        self.store.mkdir()
        (self.store / "root.pem").write_bytes(_pem(self.root))

    def write(self, name: str, chain: list[x509.Certificate], key) -> tuple[Path, Path]:
        c, k = self.tmp / f"{name}.crt", self.tmp / f"{name}.key"
        c.write_bytes(_pem(*chain))
        k.write_bytes(_keypem(key))
        return c, k

    def leaf(self, *, san=(HOST,), days: int = 365, start=None, ips=()) -> tuple:
        key = _key()
        names = [x509.DNSName(n) for n in san] + [x509.IPAddress(ipaddress.ip_address(i))
                                                  for i in ips]
        return _cert(HOST, key, self.inter, self.int_key, san=names or None, days=days,
                     start=start), key


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def _messages(rep: certs.CertReport, severity: str) -> str:
    return " | ".join(f.message for f in rep.findings if f.severity == severity)


def test_leaf_with_intermediate_and_root_in_store_passes(pki: PKI) -> None:
    leaf, key = pki.leaf()
    c, k = pki.write("good", [leaf, pki.inter], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "pass", rep.findings
    assert len(rep.chain) == 3 and "system store" in rep.chain[-1]
    assert rep.days_left is not None and rep.days_left > 300


def test_full_chain_to_a_private_root_in_the_file_passes(pki: PKI) -> None:
    leaf, key = pki.leaf()
    c, k = pki.write("full", [leaf, pki.inter, pki.root], key)
    assert certs.check_pair(c, k, HOST, trust_store=None).worst == "pass"


def test_missing_intermediate_is_an_incomplete_chain(pki: PKI) -> None:
    leaf, key = pki.leaf()
    c, k = pki.write("nochain", [leaf], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "fail"
    assert "incomplete chain" in _messages(rep, "fail")
    assert "Test Intermediate CA" in _messages(rep, "fail")


def test_intermediate_without_a_trusted_root_is_incomplete(pki: PKI, tmp_path: Path) -> None:
    leaf, key = pki.leaf()
    c, k = pki.write("noroot", [leaf, pki.inter], key)
    empty = tmp_path / "empty-store"
    empty.mkdir()
    rep = certs.check_pair(c, k, HOST, trust_store=empty)
    assert "Test Root CA" in _messages(rep, "fail")


def test_self_signed_leaf_with_san_passes_with_a_note(tmp_path: Path) -> None:
    key = _key()
    cert = _cert(HOST, key, san=[x509.DNSName(HOST)])
    c, k = tmp_path / "s.crt", tmp_path / "s.key"
    c.write_bytes(_pem(cert))
    k.write_bytes(_keypem(key))
    rep = certs.check_pair(c, k, HOST, trust_store=None)
    assert rep.worst == "pass"
    assert "ca.crt" in _messages(rep, "info")


def test_cn_only_certificate_fails(pki: PKI) -> None:
    leaf, key = pki.leaf(san=())
    c, k = pki.write("cn", [leaf, pki.inter], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "fail"
    assert "legacy Common Name" in _messages(rep, "fail")


@pytest.mark.parametrize(("san", "ips", "hostname", "ok"), [
    (("harbor.test.internal",), (), "harbor.test.internal", True),
    (("*.test.internal",), (), "harbor.test.internal", True),
    (("*.test.internal",), (), "a.b.test.internal", False),
    (("other.test.internal",), (), "harbor.test.internal", False),
    ((HOST,), ("10.200.0.10",), "10.200.0.10", True),
    ((HOST,), (), "10.200.0.10", False),
])
def test_san_must_cover_the_hostname(pki: PKI, san, ips, hostname: str, ok: bool) -> None:
    leaf, key = pki.leaf(san=san, ips=ips)
    c, k = pki.write("san", [leaf, pki.inter], key)
    rep = certs.check_pair(c, k, hostname, trust_store=pki.store)
    assert (rep.worst == "pass") is ok, rep.findings
    if not ok:
        assert "does not cover" in _messages(rep, "fail")


def test_expired_certificate_fails(pki: PKI) -> None:
    leaf, key = pki.leaf(start=NOW - dt.timedelta(days=40), days=10)
    c, k = pki.write("old", [leaf, pki.inter], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "fail" and "expired" in _messages(rep, "fail")
    assert rep.days_left is not None and rep.days_left < 0


def test_expiring_soon_warns_with_days_left(pki: PKI) -> None:
    leaf, key = pki.leaf(days=12)
    c, k = pki.write("soon", [leaf, pki.inter], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "warn"
    assert "expires in 10 day(s)" in _messages(rep, "warn")


def test_not_yet_valid_fails(pki: PKI) -> None:
    leaf, key = pki.leaf(start=NOW + dt.timedelta(days=2))
    c, k = pki.write("future", [leaf, pki.inter], key)
    assert "not valid before" in _messages(
        certs.check_pair(c, k, HOST, trust_store=pki.store), "fail")


def test_mismatched_key_fails(pki: PKI) -> None:
    leaf, _ = pki.leaf()
    c, k = pki.write("mismatch", [leaf, pki.inter], _key())
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "fail" and "does not match" in _messages(rep, "fail")


def test_leaf_not_first_is_named(pki: PKI) -> None:
    leaf, key = pki.leaf()
    c, k = pki.write("order", [pki.inter, leaf], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert "later certificate" in _messages(rep, "fail")


def test_missing_files_and_garbage_fail_cleanly(tmp_path: Path) -> None:
    rep = certs.check_pair(tmp_path / "none.crt", tmp_path / "none.key", HOST)
    assert rep.worst == "fail" and "does not exist" in _messages(rep, "fail")
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate\n")
    key = tmp_path / "k.key"
    key.write_bytes(_keypem(_key()))
    assert "not a PEM/DER" in _messages(certs.check_pair(bad, key, HOST), "fail")


def test_encrypted_key_fails(pki: PKI) -> None:
    leaf, key = pki.leaf()
    c, k = pki.write("enc", [leaf, pki.inter], key)
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.BestAvailableEncryption(b"pw")))
    assert "encrypted" in _messages(certs.check_pair(c, k, HOST, trust_store=pki.store), "fail")


def test_expired_intermediate_fails(pki: PKI) -> None:
    old_inter = _cert("Test Intermediate CA", pki.int_key, pki.root, pki.root_key, ca=True,
                      start=NOW - dt.timedelta(days=30), days=5)
    leaf, key = pki.leaf()
    c, k = pki.write("oldint", [leaf, old_inter], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert "chain certificate" in _messages(rep, "fail")


def test_intermediate_with_the_right_name_but_another_key_does_not_verify(pki: PKI) -> None:
    """Names alone do not make a chain: the signatures are checked (by cryptography)."""
    impostor = _cert("Test Intermediate CA", _key(), pki.root, pki.root_key, ca=True)
    leaf, key = pki.leaf()
    c, k = pki.write("impostor", [leaf, impostor], key)
    rep = certs.check_pair(c, k, HOST, trust_store=pki.store)
    assert rep.worst == "fail"
    assert "does not verify" in _messages(rep, "fail")
