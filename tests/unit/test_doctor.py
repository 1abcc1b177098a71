"""doctor's pure parts: URLs, challenges, certificate judgement, findings, options."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from harbor_ops.cli.main import cli
from harbor_ops.core.errors import EXIT_CODES, UsageError
from harbor_ops.doctor import tls
from harbor_ops.doctor.findings import CATALOG, SEVERITIES, DoctorReport, finding
from harbor_ops.doctor.run import parse_resolve, read_password
from harbor_ops.doctor.wire import Endpoint, parse_challenge
from tests.integration import doctor_pki as pki

NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("url, scheme, host, port, hostport, base", [
    ("https://Harbor.Example:443", "https", "harbor.example", 443, "harbor.example",
     "https://harbor.example"),
    ("harbor.example:8443", "https", "harbor.example", 8443, "harbor.example:8443",
     "https://harbor.example:8443"),
    ("http://10.0.0.5", "http", "10.0.0.5", 80, "10.0.0.5:80", "http://10.0.0.5"),
])
def test_endpoint_parse(url: str, scheme: str, host: str, port: int, hostport: str,
                        base: str) -> None:
    ep = Endpoint.parse(url)
    assert (ep.scheme, ep.host, ep.port, ep.hostport, ep.base) == \
        (scheme, host, port, hostport, base)


@pytest.mark.parametrize("url", ["ftp://x", "https://", "https://h:99999"])
def test_endpoint_refuses(url: str) -> None:
    with pytest.raises(UsageError, match="--url"):
        Endpoint.parse(url)


def test_challenge() -> None:
    assert parse_challenge('Bearer realm="https://h/service/token",service="harbor-registry",'
                           'error="invalid_token"') == (
        "bearer", {"realm": "https://h/service/token", "service": "harbor-registry",
                   "error": "invalid_token"})
    assert parse_challenge('Basic realm="harbor"') == ("basic", {"realm": "harbor"})


def _judge(chain: list[pki.Issued], anchors: list[pki.Issued], host: str = "reg.test",
           ) -> set[str]:
    source = tls.TrustSource("test", [a.cert for a in anchors], None)
    found, _ = tls.judge([c.cert for c in chain], Endpoint("https", host, 443), source,
                         now=NOW, timeout=1)
    return {f.id for f in found}


ROOT = pki.ca("Root")
INTER = pki.ca("Intermediate", ROOT)


@pytest.mark.parametrize("chain, anchors, host, expected", [
    ([pki.leaf(INTER, ["reg.test"]), INTER], [ROOT], "reg.test", set()),
    ([pki.leaf(INTER, ["*.test"]), INTER], [ROOT], "reg.test", set()),
    ([pki.leaf(INTER, ["10.1.2.3"]), INTER], [ROOT], "10.1.2.3", set()),
    ([pki.leaf(INTER, ["reg.test"]), INTER], [pki.ca("Other")], "reg.test",
     {"tls-unknown-authority"}),
    ([pki.leaf(INTER, ["other.test"]), INTER], [ROOT], "reg.test", {"tls-name-mismatch"}),
    ([pki.leaf(INTER, ["reg.test"], expired=True), INTER], [ROOT], "reg.test",
     {"tls-expired"}),
    ([pki.leaf(INTER, ["reg.test"])], [ROOT], "reg.test", {"tls-unknown-authority"}),
    ([pki.leaf(INTER, ["reg.test"]), INTER], [], "reg.test", {"tls-unknown-authority"}),
    # Go accepts a leaf without key identifiers; so must doctor's judgement
    ([pki.leaf(INTER, ["reg.test"], key_ids=False), INTER], [ROOT], "reg.test", set()),
])
def test_judge(chain: list[pki.Issued], anchors: list[pki.Issued], host: str,
               expected: set[str]) -> None:
    assert _judge(chain, anchors, host) == expected


def test_leaf_only_names_the_missing_issuer() -> None:
    source = tls.TrustSource("test", [ROOT.cert], None)
    found, seen = tls.judge([pki.leaf(INTER, ["reg.test"]).cert], Endpoint("https", "reg.test",
                            443), source, now=NOW, timeout=1)
    assert "CN=Intermediate" in found[0].evidence and "1 cert(s) sent" in seen


def test_catalog_is_complete() -> None:
    issue_ids = {"dns-failure", "tcp-unreachable", "timeout", "tls-unknown-authority",
                 "tls-name-mismatch", "tls-expired", "tls-incomplete-chain", "http-to-https",
                 "realm-mismatch", "auth-header-stripped", "body-too-large", "clock-skew",
                 "blob-unknown", "component-unhealthy", "disk-low", "docker-ca-missing"}
    assert issue_ids <= set(CATALOG)
    assert all(sev in SEVERITIES and fix for sev, fix in CATALOG.values())


def test_report_verdict_and_json() -> None:
    r = DoctorReport(url="https://h")
    assert r.worst == "ok" and not r.has_errors
    r.findings.append(finding("docker-ca-missing", "s", "e", host="h:5000"))
    assert r.worst == "warning" and not r.has_errors
    assert "/etc/docker/certs.d/h:5000/ca.crt" in r.findings[0].fix
    r.findings.append(finding("clock-skew", "s", "e"))
    assert r.has_errors
    d = r.to_dict()
    assert set(d["findings"][0]) == {"id", "severity", "summary", "evidence", "fix"}
    assert EXIT_CODES[13].startswith("doctor found")


def test_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_resolve(("Reg.Test:127.0.0.2",)) == {"reg.test": "127.0.0.2"}
    with pytest.raises(UsageError, match="NAME:ADDRESS"):
        parse_resolve(("reg.test",))
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert read_password(None, pw) == "s3cret"
    monkeypatch.setenv("DOCTOR_PW", "from-env")
    assert read_password("DOCTOR_PW", None) == "from-env"
    with pytest.raises(UsageError, match="not set"):
        read_password("DOCTOR_PW_MISSING", None)
    with pytest.raises(UsageError, match="not both"):
        read_password("DOCTOR_PW", pw)


def test_cli_refuses_bad_input(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["doctor", "--url", "ftp://x"], standalone_mode=False)
    assert isinstance(res.exception, UsageError)
    res = CliRunner().invoke(cli, ["doctor", "--url", "https://h", "--password-env", "NOPE_X"],
                             standalone_mode=False)
    assert isinstance(res.exception, UsageError)


def test_trust_picks_the_ca_at_the_end_of_the_chain(tmp_path: Path) -> None:
    from harbor_ops.doctor.trust import pick_ca

    server = pki.leaf(INTER, ["reg.test"])
    chain, _ = pki.write_pair(tmp_path, "chain", server, INTER, ROOT)
    cert, source = pick_ca(None, chain, "https://reg.test", 1)
    assert cert.subject == ROOT.cert.subject and str(chain) in source
    leaf_only, _ = pki.write_pair(tmp_path, "leaf", server)
    with pytest.raises(UsageError, match="CN=Intermediate"):
        pick_ca(None, leaf_only, "https://reg.test", 1)
    (tmp_path / "junk.crt").write_text("not pem")
    with pytest.raises(UsageError, match="not a PEM"):
        pick_ca(None, tmp_path / "junk.crt", "https://reg.test", 1)


def test_trust_needs_clients_and_url(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["trust", "-c", str(tmp_path / "none.yml"), "--url",
                                   "https://reg.test"], standalone_mode=False)
    assert isinstance(res.exception, UsageError) and "does not exist" in str(res.exception)


def test_site_url_is_what_clients_use() -> None:
    from harbor_ops.doctor.run import site_url
    from tests.unit.test_render import example_harbor, make_site

    harbor = example_harbor()
    assert site_url(make_site(harbor=harbor)) == harbor["external_url"]
    no_ext = {k: v for k, v in harbor.items() if k != "external_url"}
    assert site_url(make_site(harbor=no_ext)) == "https://harbor.example.internal:443"
    assert site_url(make_site(harbor=no_ext, front=False)) == \
        f"http://{harbor['hostname']}:{harbor['http']['port']}"


@pytest.mark.parametrize("image, expected", [
    ("library/app:v1", ("library/app", "v1")),
    ("library/app", ("library/app", "latest")),
    ("a/b@sha256:" + "0" * 64, ("a/b", "sha256:" + "0" * 64)),
])
def test_image_reference(image: str, expected: tuple[str, str]) -> None:
    from harbor_ops.doctor.probe import image_reference

    assert image_reference(image) == expected


@pytest.mark.parametrize("args, field", [
    (["--image", "Library/App:v1"], "--image"),
    (["--image", "library/app:../x"], "--image"),
    (["--probe-repository", "noproject"], "--probe-repository"),
    (["--probe-repository", "a/../b"], "--probe-repository"),
])
def test_doctor_refuses_bad_names(args: list[str], field: str) -> None:
    res = CliRunner().invoke(cli, ["doctor", "--url", "https://h", *args],
                             standalone_mode=False)
    assert isinstance(res.exception, UsageError) and field in str(res.exception)
