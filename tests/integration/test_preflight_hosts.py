"""Preflight over real SSH against the test-bed hosts (netns + own rootfs + sshd + dockerd).

Facts come from the probe running ON each host through paramiko, so what these tests
assert (CPU count, the host's /data/database, a port held inside the host's network
namespace) is the remote host's, not the controller's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from harbor_ops.preflight.run import hosts_from_inventory, run_preflight
from harbor_ops.releases.bundle import inspect_bundle
from harbor_ops.site.load import load_site_text
from harbor_ops.site.model import HostEntry, Site

pytestmark = pytest.mark.integration


def _site(tmp_path: Path, **harbor: object) -> Site:
    data = {"harbor": {"version": "2.15.2", "hostname": "10.200.0.10",
                       "http": {"port": 8080}, "data_volume": "/data",
                       "database": {"password_env": "X"},
                       "harbor_admin_password_env": "Y", **harbor}}
    return load_site_text(yaml.safe_dump(data), base_dir=tmp_path)


def _by_name(results: list) -> dict:
    out: dict = {}
    for r in results:
        out.setdefault(r.name, []).append(r)
    return out


def test_facts_over_ssh_on_every_host_in_parallel(testbed, tmp_path: Path) -> None:
    names = sorted(testbed.hosts)
    for name in names:  # earlier test modules may have installed Harbor on a host
        testbed.reset(name)
    hosts = [HostEntry(name=n) for n in names]
    report = run_preflight(_site(tmp_path), hosts=hosts, ssh_config=testbed.ssh_config_path)
    assert sorted(report.results) == names
    for name in names:
        rs = _by_name(report.results[name])
        assert "ssh" not in rs, rs.get("ssh")
        assert rs["cpu"][0].verdict in ("pass", "warn") and "CPU" in rs["cpu"][0].reason
        assert rs["docker"][0].verdict in ("pass", "warn"), rs["docker"]
        assert rs["data_layout"][0].verdict == "pass"
        assert "no database yet" in rs["data_layout"][0].reason


def test_inventory_hosts_are_read_with_their_ssh_settings(testbed, tmp_path: Path) -> None:
    got = hosts_from_inventory(testbed.inventory_path)
    assert sorted(h.name for h, _ in got) == sorted(testbed.hosts)
    entry, cfg = got[0]
    assert entry.address == testbed.hosts[entry.name].address
    assert cfg == testbed.ssh_config_path
    report = run_preflight(_site(tmp_path), inventory=testbed.inventory_path,
                           skip=["ports", "disk"])
    assert all(r.name != "ssh" for rs in report.results.values() for r in rs)


def test_remote_data_layout_trap_and_occupied_port_are_failures(fresh_host, tmp_path: Path
                                                                ) -> None:
    fresh_host.exec("mkdir -p /data/database/pg13 && echo 13 > /data/database/pg13/PG_VERSION")
    listener = subprocess.Popen(  # a server inside the host's namespaces, on the http port
        ["nsenter", "-t", str(fresh_host.init_pid()), "--net", "--pid", "--mount", "--root",
         "/usr/bin/python3", "-c",
         "import socket,time; s=socket.socket();"
         " s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"  # TIME_WAIT from earlier
         " s.bind(('0.0.0.0', 8080)); s.listen();"
         "print('up', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "up"
        report = run_preflight(_site(tmp_path, version="2.12.4"), hosts=[HostEntry("h1")],
                               ssh_config=fresh_host.ssh_config)
    finally:
        listener.kill()
        listener.wait(timeout=10)
    rs = _by_name(report.results["h1"])
    layout = rs["data_layout"][0]
    assert layout.verdict == "fail" and "pg13" in layout.reason and "EMPTY" in layout.reason
    http = [r for r in rs["ports"] if "harbor.http.port" in r.reason][0]
    assert http.verdict == "fail" and "0.0.0.0:8080" in http.reason
    assert not report.ok
    assert "FAIL  data_layout" in str(report)


def test_wrong_key_and_unreachable_host_are_named(testbed, tmp_path: Path) -> None:
    wrong = tmp_path / "id_wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)],
                   check=True)
    gateway = str(testbed.gateway)
    hosts = [HostEntry("h1", ssh_key_file=wrong),
             HostEntry("nowhere", address=gateway, port=1)]  # our bridge; nothing listens
    report = run_preflight(_site(tmp_path), hosts=hosts, ssh_config=testbed.ssh_config_path)
    h1 = report.results["h1"][0]
    assert (h1.name, h1.verdict) == ("ssh", "fail") and "key refused" in h1.reason
    gone = report.results["nowhere"][0]
    assert (gone.name, gone.verdict) == ("ssh", "fail")
    assert "nowhere" in gone.reason and "unreachable" in gone.reason
    assert not report.ok


def test_inspect_the_harbor_shaped_test_bundle(tmp_path: Path) -> None:
    from tests.bed.bundle import build_bundle

    b = build_bundle("2.12.4", tmp_path)
    info = inspect_bundle(b)
    assert info.ok, info.problems
    assert str(info.version) == "2.12.4" and info.image_tarball_size > 0


def test_running_harbor_owns_its_ports_and_a_dirty_schema_fails(
        tmp_path: Path, docker_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Harbor-shaped 2.12.4 really installed with its own install.sh on a real dockerd."""
    from tests.bed.bundle import build_bundle
    from tests.integration.test_bundle import Harbor

    harbor = Harbor(tmp_path / "site", docker_engine)
    harbor.base.mkdir()
    bundle = build_bundle("2.12.4", tmp_path / "bundles", engine_env=docker_engine.env)
    try:
        harbor.install(bundle)
        harbor.wait_healthy()
        monkeypatch.setenv("DOCKER_HOST", docker_engine.env["DOCKER_HOST"])
        site = _site(tmp_path, version="2.12.4", data_volume=str(harbor.data),
                     http={"port": harbor.port})
        skip = ["cpu", "memory", "disk", "compose", "hostname"]
        report = run_preflight(site, bundle=bundle, skip=skip)
        rs = _by_name(report.results["localhost"])
        http = [r for r in rs["ports"] if "harbor.http.port" in r.reason][0]
        assert http.verdict == "pass" and "Harbor's own nginx" in http.reason, rs["ports"]
        assert rs["schema_dirty"][0].verdict == "pass", rs["schema_dirty"]
        assert "150" in rs["schema_dirty"][0].reason
        assert rs["data_layout"][0].verdict == "pass", rs["data_layout"]
        assert rs["bundle"][0].verdict == "pass"

        harbor.sql("UPDATE schema_migrations SET dirty = true")
        report = run_preflight(site, skip=skip)
        dirty = _by_name(report.results["localhost"])["schema_dirty"][0]
        assert dirty.verdict == "fail" and "restore from backup" in dirty.fix
    finally:
        harbor.down()
