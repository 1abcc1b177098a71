"""`harborctl doctor` against a real registry behind real nginx, broken one way per test.

What a user would notice: each client-side failure of Harbor's troubleshooting table is
named by its stable id with evidence, a healthy endpoint gets nothing above info (exit 0),
any error exits 13, and no password appears in what doctor prints or keeps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.doctor.context import DoctorOptions
from harbor_ops.doctor.findings import DoctorReport
from harbor_ops.doctor.run import parse_resolve, run_doctor
from tests.bed.fixtures import unavailable
from tests.integration import doctor_stack as ds
from tests.integration.pgfixture import small_tmpfs

pytestmark = pytest.mark.integration

HARBORCTL = str(Path(sys.executable).with_name("harborctl"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds.Stack]:
    for tool in (ds.REGISTRY, ds.NGINX, str(ds.FAKETIME_LIB)):
        if not Path(tool).exists():
            unavailable(f"{tool} is not installed (see .ci/provision)")
    if os.geteuid() != 0:
        unavailable("doctor's storage tests mount a tmpfs: run as root")
    tmp = tmp_path_factory.mktemp("doctor")
    with small_tmpfs(tmp / "storage", "48m") as storage:
        s = ds.Stack(tmp, storage)
        try:
            yield s
        finally:
            s.close()


def doctor(stack: ds.Stack, url: str, *, ca: Path | None = None, login: bool = True,
           **kw: object) -> DoctorReport:
    opts = DoctorOptions(url=url, ca=stack.ca_file if ca is None else ca,
                         username=ds.ADMIN if login else None,
                         password=ds.ADMIN_PASSWORD if login else None,
                         resolve=parse_resolve((stack.resolve,)), timeout=5.0,
                         docker_certs_dir=stack.tmp / "no-docker" / "certs.d",
                         **kw)  # type: ignore[arg-type]
    return run_doctor(opts, keep_result=False)


def ids(report: DoctorReport) -> set[str]:
    return {f.id for f in report.findings}


def test_healthy_endpoint_has_nothing_above_info(stack: ds.Stack, tmp_path: Path) -> None:
    stack.start_registry()
    url = stack.start_front(ds.Front())
    ds.push_image(stack, "library/app", "v1")
    certs = tmp_path / "docker" / "certs.d"
    (certs / f"{ds.HOST}:{stack.front_port}").mkdir(parents=True)
    shutil.copy(stack.ca_file, certs / f"{ds.HOST}:{stack.front_port}" / "ca.crt")
    pw = tmp_path / "pw"
    pw.write_text(ds.ADMIN_PASSWORD + "\n")
    state = tmp_path / "state"
    proc = subprocess.run(
        [HARBORCTL, "doctor", "--url", url, "--username", ds.ADMIN, "--password-file", str(pw),
         "--resolve", stack.resolve, "--image", "library/app:v1",
         "--docker-certs-dir", str(certs), "-o", "json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HARBORCTL_STATE_DIR": str(state)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert [f for f in out["findings"] if f["severity"] != "info"] == []
    assert set(out) >= {"url", "findings", "checks"}
    by_name = {c["name"]: c for c in out["checks"]}
    assert by_name["push-probe"]["status"] == "ok", by_name["push-probe"]
    assert by_name["image"]["status"] == "ok" and "2/2 blobs" in by_name["image"]["detail"]
    assert by_name["systeminfo"]["status"] == "ok" and out["harbor"] is True
    assert all(set(c) >= {"name", "status", "seconds"} for c in out["checks"])
    last = state / "doctor-last.json"
    assert last.stat().st_mode & 0o777 == 0o600
    for text in (proc.stdout, proc.stderr, last.read_text()):
        assert ds.ADMIN_PASSWORD not in text


def test_unknown_authority(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(cert="untrusted")))
    assert "tls-unknown-authority" in ids(report)
    # credentials never travel over a TLS connection the client would not trust
    assert next(c for c in report.checks if c.name == "push-probe").status == "skip"


def test_name_mismatch(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(cert="wrong-name")))
    assert ids(report) >= {"tls-name-mismatch"}
    assert "tls-unknown-authority" not in ids(report)
    assert "other.doctor.test" in next(f.evidence for f in report.findings
                                       if f.id == "tls-name-mismatch")


def test_expired(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(cert="expired")))
    assert "tls-expired" in ids(report)
    assert "tls-unknown-authority" not in ids(report)


def test_leaf_without_intermediate(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(cert="leaf-only")))
    assert "tls-incomplete-chain" in ids(report)
    assert "tls-unknown-authority" not in ids(report)


def test_plain_http_on_the_https_port(stack: ds.Stack) -> None:
    stack.start_registry()
    url = stack.start_front(ds.Front(tls=False)).replace("http://", "https://")
    assert ids(doctor(stack, url)) == {"http-to-https"}


def test_https_port_called_with_http(stack: ds.Stack) -> None:
    stack.start_registry()
    url = stack.start_front(ds.Front()).replace("https://", "http://")
    assert "http-to-https" in ids(doctor(stack, url, login=False))


def test_http_external_url_behind_tls_front(stack: ds.Stack) -> None:
    stack.start_registry(realm_scheme="http")
    try:
        report = doctor(stack, stack.start_front(ds.Front()))
    finally:
        stack.start_registry()
    assert "realm-mismatch" in ids(report)
    assert 'realm="http://' in next(f.evidence for f in report.findings
                                    if f.id == "realm-mismatch")


def test_outer_proxy_body_limit(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(max_body="1m")))
    assert "body-too-large" in ids(report)
    assert "nginx" in next(f.evidence for f in report.findings if f.id == "body-too-large")


def test_proxy_drops_authorization(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(strip_auth=True)))
    assert "auth-header-stripped" in ids(report)


def test_server_clock_ten_minutes_off(stack: ds.Stack) -> None:
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(clock_offset="+10m")))
    skew = [f for f in report.findings if f.id == "clock-skew"]
    assert skew and skew[0].severity == "error", report.findings
    assert "ahead" in skew[0].summary


def test_manifest_names_a_missing_blob(stack: ds.Stack) -> None:
    stack.start_registry()
    url = stack.start_front(ds.Front())
    _, layer = ds.push_image(stack, "library/broken", "v1")
    algo, hexd = layer.split(":")
    data = stack.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"
    data.unlink()
    report = doctor(stack, url, image="library/broken:v1", push_probe=False)
    assert "blob-unknown" in ids(report)
    assert layer in next(f.evidence for f in report.findings if f.id == "blob-unknown")


def test_stopped_component(stack: ds.Stack) -> None:
    stack.start_registry()
    url = stack.start_front(ds.Front())
    ds.stop(stack.registry)
    try:
        report = doctor(stack, url)
    finally:
        stack.start_registry()
    unhealthy = [f for f in report.findings if f.id == "component-unhealthy"]
    assert any("registry" in f.summary for f in unhealthy), report.findings


def test_nearly_full_storage(stack: ds.Stack) -> None:
    stack.start_registry()
    url = stack.start_front(ds.Front())
    st = os.statvfs(stack.storage)
    filler = stack.storage / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - st.f_blocks * st.f_frsize // 50))
    try:
        report = doctor(stack, url, push_probe=False)
    finally:
        filler.unlink()
    assert "disk-low" in ids(report)
    assert next(f for f in report.findings if f.id == "disk-low").severity == "error"


def test_nothing_listening(stack: ds.Stack) -> None:
    url = f"https://{ds.HOST}:{ds.free_port()}"
    report = doctor(stack, url)
    assert ids(report) == {"tcp-unreachable"}
    proc = subprocess.run([HARBORCTL, "doctor", "--url", url, "--resolve", stack.resolve],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HARBORCTL_STATE_DIR": str(stack.tmp / "st")})
    assert proc.returncode == 13, proc.stdout + proc.stderr
    assert "tcp-unreachable" in proc.stdout and "Traceback" not in proc.stderr


def test_a_port_that_accepts_but_never_answers(stack: ds.Stack) -> None:
    """TCP connects, TLS never starts: doctor says timeout within its bound, no hang."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"https://{ds.HOST}:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        report = run_doctor(DoctorOptions(url=url, resolve=parse_resolve((stack.resolve,)),
                                          timeout=1.0), keep_result=False)
        # the socket never answers: returning at all is the bound; the limit only tells a
        # hang (tens of the 1 s timeouts) apart from a slow, loaded machine
        assert time.monotonic() - t0 < 120
    assert ids(report) == {"timeout"}


def test_proxy_drops_the_port_from_host(stack: ds.Stack) -> None:
    """nginx's `proxy_set_header Host $host` loses the port: uploads go to the wrong URL."""
    stack.start_registry()
    report = doctor(stack, stack.start_front(ds.Front(host_header="$host")))
    found = [f for f in report.findings if f.id == "upload-location-mismatch"]
    assert found and f"https://{ds.HOST}/v2/" in found[0].evidence, report.findings


@pytest.fixture(scope="module")
def plain_registry(stack: ds.Stack) -> Iterator[str]:
    """A plain registry:2 with htpasswd (no Harbor API), as many sites run beside Harbor."""
    if shutil.which("htpasswd") is None:
        unavailable("htpasswd (apache2-utils) is not installed (see .ci/provision)")
    folder = stack.tmp / "plain"
    folder.mkdir()
    line = subprocess.run(["htpasswd", "-Bbn", "alice", "alice-pw-1"], check=True,
                          capture_output=True, text=True).stdout
    (folder / "htpasswd").write_text(line)
    port = ds.free_port()
    (folder / "config.yml").write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-only-not-secret"},
        "auth": {"htpasswd": {"realm": "plain", "path": str(folder / "htpasswd")}}}))
    proc = subprocess.Popen([ds.REGISTRY, "serve", str(folder / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ds.wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        ds.stop(proc)


def test_plain_registry_with_basic_auth(plain_registry: str) -> None:
    opts = dict(url=plain_registry, username="alice", timeout=5.0)
    report = run_doctor(DoctorOptions(password="alice-pw-1", **opts),  # type: ignore[arg-type]
                        keep_result=False)
    assert report.findings == [] and report.harbor is False
    assert next(c for c in report.checks if c.name == "push-probe").status == "ok"
    wrong = run_doctor(DoctorOptions(password="not-it", **opts),  # type: ignore[arg-type]
                       keep_result=False)
    assert "auth-failed" in ids(wrong)
