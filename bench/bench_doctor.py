"""A full `harborctl doctor` (push probe included) against the same checks done by hand.

The endpoint is the healthy Harbor-shaped stack of the doctor tests (real distribution
registry in token mode behind real nginx with TLS, the core stand-in for /api/v2.0).
"By hand" is one shell script of curl and skopeo doing what doctor does: the TLS handshake
against the CA, GET /v2/ for the challenge, ping, a token, an authorized GET /v2/, a push of
a >2 MiB layer, a pull back, a delete, health and systeminfo. Goal: doctor under 1.5x of
the script, and under 5 s. Needs root (nginx, registry) and skopeo.
Run: .venv/bin/python -m bench.bench_doctor
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harbor_ops.doctor.context import DoctorOptions
from harbor_ops.doctor.probe import LAYER_BYTES
from harbor_ops.doctor.run import run_doctor
from tests.integration import doctor_stack as ds

ROUNDS = 5

BY_HAND = r"""
set -eu
B="https://127.0.0.1:$PORT"; REF="docker://127.0.0.1:$PORT/library/bench:$TAG"
c() { curl -sS --max-time 5 --cacert "$CA" -o /dev/null -w '%{http_code} ' "$@"; }
c "$B/v2/"
c "$B/api/v2.0/ping"
SCOPE="service=harbor-registry&scope=repository:library/bench:pull,push,delete"
TOKEN=$(curl -sS --max-time 5 --cacert "$CA" -K "$CURLRC" "$B/service/token?$SCOPE" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
c -K - "$B/v2/" <<<"header = \"Authorization: Bearer $TOKEN\""
skopeo copy -q --dest-cert-dir "$CERTS" --dest-authfile "$AUTH" "oci:$OCI:v1" "$REF"
skopeo inspect --cert-dir "$CERTS" --authfile "$AUTH" --raw "$REF" >/dev/null
skopeo copy -q --src-cert-dir "$CERTS" --src-authfile "$AUTH" "$REF" "dir:$PULL"
skopeo delete --cert-dir "$CERTS" --authfile "$AUTH" "$REF"
c "$B/api/v2.0/health"
c -K "$CURLRC" "$B/api/v2.0/systeminfo"
"""


def oci_layout(folder: Path) -> None:
    """An OCI image layout with one random layer of the probe's size (tag v1)."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    layer = os.urandom(LAYER_BYTES)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [put(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{hashlib.sha256(layer).hexdigest()}",
                    "size": len(layer)}]}).encode()
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))


def _credential_files(tmp: Path, url: str) -> dict[str, str]:
    """curl's and skopeo's credential files (0600): no password on a command line."""
    auth = base64.b64encode(f"{ds.ADMIN}:{ds.ADMIN_PASSWORD}".encode()).decode()
    files = {"CURLRC": (tmp / "curlrc", f'user = "{ds.ADMIN}:{ds.ADMIN_PASSWORD}"\n'),
             "AUTH": (tmp / "auth.json", json.dumps({"auths": {url.split("://")[1]:
                                                              {"auth": auth}}}))}
    for path, text in files.values():
        path.write_text(text)
        path.chmod(0o600)
    return {name: str(path) for name, (path, _) in files.items()}


def main() -> None:
    if shutil.which("skopeo") is None or shutil.which("curl") is None:
        sys.exit("bench_doctor needs skopeo and curl (see .ci/provision)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "storage").mkdir()
        stack = ds.Stack(tmp, tmp / "storage")
        try:
            stack.start_registry(realm_host="127.0.0.1")
            stack.start_front(ds.Front())
            url = f"https://127.0.0.1:{stack.front_port}"
            certs = tmp / "certs.d"
            certs.mkdir()
            shutil.copy(stack.ca_file, certs / "ca.crt")
            oci_layout(tmp / "oci")
            env = {**os.environ, "PORT": str(stack.front_port), "CA": str(stack.ca_file),
                   "PW": ds.ADMIN_PASSWORD, "CERTS": str(certs), "OCI": str(tmp / "oci"),
                   **_credential_files(tmp, url)}
            hand, doc, cli = [], [], []
            for i in range(ROUNDS):
                shutil.rmtree(tmp / "pull", ignore_errors=True)
                t0 = time.perf_counter()
                subprocess.run(["bash", "-c", BY_HAND], check=True, capture_output=True,
                               env={**env, "TAG": f"r{i}", "PULL": str(tmp / "pull")})
                hand.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                report = run_doctor(DoctorOptions(url=url, ca=stack.ca_file,
                                                  username=ds.ADMIN,
                                                  password=ds.ADMIN_PASSWORD),
                                    keep_result=False)
                doc.append(time.perf_counter() - t0)
                assert not report.has_errors, report
                assert next(c for c in report.checks if c.name == "push-probe").status == "ok"
                t0 = time.perf_counter()
                subprocess.run([str(Path(sys.executable).with_name("harborctl")), "doctor",
                                "--url", url, "--ca", str(stack.ca_file), "--username",
                                ds.ADMIN, "--password-env", "PW", "-o", "json"], check=True,
                               capture_output=True,
                               env={**env, "HARBORCTL_STATE_DIR": str(tmp / "state")})
                cli.append(time.perf_counter() - t0)
        finally:
            stack.close()
    h, d, c = (statistics.median(x) for x in (hand, doc, cli))
    print(f"by hand (curl + skopeo push/inspect/pull/delete): {h:.2f} s (median of {ROUNDS})")
    print(f"doctor, in process (12 checks, push probe):      {d:.2f} s  ratio {d / h:.2f}")
    print(f"harborctl doctor (CLI, with interpreter start):  {c:.2f} s  ratio {c / h:.2f}")
    print(f"goal: ratio < 1.5 and < 5 s: {'met' if c / h < 1.5 and c < 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
