"""testinfra verifier: what a user checks after the harbor role converged on a test host."""

from __future__ import annotations

import json

VERSION_DIR = "/opt/harbor/harbor"
CONTAINERS = ("harbor-log", "registry", "registryctl", "harbor-db", "harbor-core",
              "harbor-portal", "harbor-jobservice", "redis", "nginx")


def test_containers_run(host):  # type: ignore[no-untyped-def]
    names = host.check_output("docker ps --filter status=running --format '{{.Names}}'").split()
    assert set(CONTAINERS) <= set(names)


def test_harbor_yml_is_private(host):  # type: ignore[no-untyped-def]
    yml = host.file(f"{VERSION_DIR}/harbor.yml")
    assert yml.exists and yml.mode == 0o600 and yml.user == "root"


def test_data_owners(host):  # type: ignore[no-untyped-def]
    database = host.file("/data/database")
    assert database.uid == 999 and database.mode == 0o700
    assert host.file("/data/registry").uid == 10000


def test_logrotate_file_is_valid(host):  # type: ignore[no-untyped-def]
    host.run_expect([0], "logrotate -d /etc/logrotate.d/harbor")


def test_health_through_the_front(host):  # type: ignore[no-untyped-def]
    address = host.check_output("hostname -I").split()[0]
    body = host.check_output(f"curl -fsS -H 'Host: {address}' http://127.0.0.1/api/v2.0/health")
    assert json.loads(body)["status"] == "healthy"
