"""`harborctl trust` on real test hosts: the CA where each runtime looks, idempotently, and
afterwards doctor (judging trust as docker on that host would) finds no TLS problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.doctor.context import DoctorOptions
from harbor_ops.doctor.run import parse_resolve, run_doctor
from harbor_ops.doctor.trust import TrustResult, trust
from tests.bed.hosts import TestBed
from tests.bed.inventory import ansible_vars, inventory_ini_text, write_file
from tests.integration import doctor_stack as ds

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds.Stack]:
    tmp = tmp_path_factory.mktemp("trust")
    (tmp / "storage").mkdir()
    s = ds.Stack(tmp, tmp / "storage")
    try:
        s.start_registry()
        yield s
    finally:
        s.close()


def test_trust_puts_the_ca_where_each_runtime_looks(testbed: TestBed, stack: ds.Stack,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARBORCTL_STATE_DIR", str(tmp_path / "state"))
    url = stack.start_front(ds.Front())
    hostport = f"{ds.HOST}:{stack.front_port}"
    hosts = [testbed.reset("h1")]  # one client keeps the test short; the play is per host
    clients = testbed.base_dir / "trust-clients.ini"
    write_file(clients, inventory_ini_text(hosts, ansible_vars(
        ssh_config=testbed.ssh_config_path, client_key=testbed.client_key)))

    def run(dry_run: bool) -> TrustResult:
        return trust(None, url=url, ca=stack.ca_file, clients=clients,
                     ssh_config=testbed.ssh_config_path, dry_run=dry_run, os_store=True)

    plan = run(True)
    assert {h.name for h in hosts} == set(plan.hosts)
    assert all(t.changed > 0 for t in plan.hosts.values())
    assert not (testbed.hosts["h1"].root_path / "etc/docker/certs.d" / hostport).exists()

    first = run(False)
    assert all(t.changed > 0 and t.failed == 0 for t in first.hosts.values())
    assert first.log_path is not None and first.log_path.is_relative_to(tmp_path)
    again = run(False)
    assert all(t.changed == 0 and t.failed == 0 for t in again.hosts.values()), again

    ca = stack.ca_file.read_text().strip()
    for host in hosts:
        root = host.root_path
        for folder in ("etc/docker/certs.d", "etc/containerd/certs.d", "etc/containers/certs.d"):
            assert (root / folder / hostport / "ca.crt").read_text().strip() == ca
        toml = (root / "etc/containerd/certs.d" / hostport / "hosts.toml").read_text()
        assert f'server = "https://{hostport}"' in toml
        assert f'ca = "/etc/containerd/certs.d/{hostport}/ca.crt"' in toml
        bundle = host.exec("cat /etc/ssl/certs/ca-certificates.crt").stdout
        assert ca.splitlines()[1] in bundle  # update-ca-certificates ran on the host

    # doctor on that client: trust judged from the host's own docker certs.d, no --ca
    report = run_doctor(DoctorOptions(
        url=url, resolve=parse_resolve((stack.resolve,)),
        docker_certs_dir=hosts[0].root_path / "etc/docker/certs.d"), keep_result=False)
    assert not [f for f in report.findings if f.id.startswith("tls-")], report.findings
    tls_check = next(c for c in report.checks if c.name == "tls")
    assert tls_check.status == "ok" and "etc/docker/certs.d" in tls_check.detail
