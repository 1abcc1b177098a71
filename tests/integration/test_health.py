"""The agent's health job against a Harbor that serves HTTPS (real nginx, real certificates).

What an operator would notice: on an HTTPS site the job reports healthy when Harbor is
healthy (it used to probe plain http and fail every time), names the unhealthy component,
and refuses a certificate that does not chain to the site's own or does not name the site.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from harbor_ops.agent import jobs
from harbor_ops.core.errors import HealthError
from harbor_ops.site.load import load_site_text
from harbor_ops.site.model import Site
from tests.bed.fixtures import unavailable
from tests.integration import doctor_pki as pki
from tests.integration.doctor_stack import free_port, stop, wait_port

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HOST = "harbor.health.test"
HEALTHY = {"status": "healthy", "components": [
    {"name": "core", "status": "healthy"}, {"name": "registry", "status": "healthy"}]}


class Harbor:
    """nginx answering /api/v2.0/health over TLS on loopback, as Harbor's own nginx does."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        root = pki.ca("Health Test Root")
        intermediate = pki.ca("Health Test Intermediate", root)
        stranger = pki.ca("Some Other CA")
        certs = tmp / "certs"
        certs.mkdir()
        self.pairs = {
            "good": pki.write_pair(certs, "good", pki.leaf(intermediate, [HOST]), intermediate),
            "other-ca": pki.write_pair(certs, "other", pki.leaf(stranger, [HOST])),
            "wrong-name": pki.write_pair(certs, "wrong", pki.leaf(intermediate, ["x.test"]),
                                         intermediate),
        }
        self.nginx: subprocess.Popen[bytes] | None = None

    def serve(self, pair: str, doc: dict[str, object] = HEALTHY) -> None:
        stop(self.nginx)
        crt, key = self.pairs[pair]
        (self.tmp / "health.json").write_text(json.dumps(doc))
        user = "user root root;\n" if os.geteuid() == 0 else ""
        n = self.tmp
        (n / "nginx.conf").write_text(
            f"{user}pid {n}/nginx.pid;\nerror_log {n}/error.log warn;\ndaemon off;\n"
            "events { worker_connections 16; }\n"
            f"http {{\n  client_body_temp_path {n}/body;\n  proxy_temp_path {n}/proxy;\n"
            f"  fastcgi_temp_path {n}/fcgi;\n  uwsgi_temp_path {n}/uwsgi;\n"
            f"  scgi_temp_path {n}/scgi;\n  access_log off;\n"
            f"  server {{\n    listen 127.0.0.1:{self.port} ssl;\n    server_name {HOST};\n"
            f"    ssl_certificate {crt};\n    ssl_certificate_key {key};\n"
            f"    location = /api/v2.0/health {{ default_type application/json; "
            f"alias {n}/health.json; }}\n  }}\n}}\n")
        self.nginx = subprocess.Popen([NGINX, "-p", f"{n}/", "-c", str(n / "nginx.conf"),
                                       "-e", str(n / "error.log")])
        wait_port(self.port, self.nginx)

    def site(self, pair: str = "good") -> Site:
        """The site file of this Harbor: https with the certificate it was given."""
        crt, key = self.pairs[pair]
        data = {"harbor": {"version": "2.15.2", "hostname": HOST,
                           "http": {"port": free_port()},  # nothing listens there
                           "https": {"port": self.port, "certificate": str(crt),
                                     "private_key": str(key)},
                           "harbor_admin_password_env": "X",
                           "database": {"password_env": "Y"}, "data_volume": "/data"}}
        return load_site_text(yaml.safe_dump(data), base_dir=self.tmp)


@pytest.fixture(scope="module")
def harbor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harbor]:
    if not Path(NGINX).exists():
        unavailable(f"{NGINX} is not installed (see .ci/provision)")
    h = Harbor(tmp_path_factory.mktemp("https-harbor"))
    try:
        yield h
    finally:
        stop(h.nginx)


def test_health_job_verifies_an_https_harbor(harbor: Harbor) -> None:
    harbor.serve("good")
    assert jobs.health(harbor.site()) == {"components": 2}


def test_health_job_names_the_unhealthy_component(harbor: Harbor) -> None:
    harbor.serve("good", {"status": "unhealthy", "components": [
        {"name": "core", "status": "healthy"}, {"name": "jobservice", "status": "unhealthy"}]})
    with pytest.raises(HealthError, match="unhealthy: jobservice"):
        jobs.health(harbor.site())


@pytest.mark.parametrize(("served", "words"), [
    ("other-ca", "unable to get local issuer certificate"),
    ("wrong-name", "Hostname mismatch"),
])
def test_health_job_refuses_a_certificate_it_cannot_verify(harbor: Harbor, served: str,
                                                           words: str) -> None:
    harbor.serve(served)
    with pytest.raises(HealthError, match="TLS failed") as exc:
        jobs.health(harbor.site("good"))
    assert words.lower() in str(exc.value).lower()
    assert f"https://{HOST}:{harbor.port}/api/v2.0/health" in str(exc.value)
