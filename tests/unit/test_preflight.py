"""Preflight checks as pure functions over probe facts, plus the real local probe."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from harbor_ops.core.errors import UsageError
from harbor_ops.hosts import facts
from harbor_ops.preflight import run as preflight
from harbor_ops.preflight.run import CHECKS, Context, run_preflight
from harbor_ops.site.load import load_site_text
from harbor_ops.site.model import HostEntry, Site
from tests.unit.test_bundle_inspect import make_bundle

GIB = 1 << 30


def make_site(version: str = "2.15.2", *, http_port: int = 8080, front: bool = False,
              **harbor: Any) -> Site:
    data: dict[str, Any] = {"harbor": {"version": version, "hostname": "harbor.test.internal",
                                       "http": {"port": http_port}, "data_volume": "/data",
                                       "database": {"password_env": "X"},
                                       "harbor_admin_password_env": "Y", **harbor}}
    if front:
        data["front"] = {"listen": "0.0.0.0:80", "server_name": "harbor.test.internal",
                         "upstream": f"http://127.0.0.1:{http_port}"}
    return load_site_text(yaml.safe_dump(data))


def ran(out: str = "", rc: int = 0, err: str = "") -> dict[str, Any]:
    return {"rc": rc, "out": out, "err": err}


MISSING = ran(rc=127, err="not found")


def ctx(version: str = "2.15.2", site: Site | None = None, bundle_size: int | None = None,
        **f: Any) -> Context:
    base: dict[str, Any] = {
        "nproc": 4, "mem_total_kb": 8 * 1024 * 1024,
        "disk": {"path": "/", "free": 100 * GIB, "total": 200 * GIB},
        "database": {"path": "/data/database", "exists": False, "entries": [], "pg_dirs": [],
                     "root_pg_version": False, "size": 0, "readable": True},
        "docker": ran("26.1.5+dfsg1"), "compose_v2": ran("2.24.6"), "compose_v1": MISSING,
        "ss": ran(""), "proc_net_tcp": "", "getent": ran("10.200.0.10 harbor.test.internal"),
        "containers": "", "install_entries": [], "install_current": None,
        "nginx_harbor_confs": [],
    }
    base.update(f)
    return Context(site or make_site(version), "h1", base, None, bundle_size)


def verdict(result: preflight.CheckResult | list[preflight.CheckResult]) -> str:
    rs = result if isinstance(result, list) else [result]
    return max((r.verdict for r in rs), key=["skip", "pass", "warn", "fail"].index)


@pytest.mark.parametrize(("nproc", "mem_gib", "cpu", "mem"), [
    (1, 2, "fail", "fail"), (2, 3.8, "warn", "warn"), (4, 7.7, "pass", "pass"),
    (8, 64, "pass", "pass"), (3, 3.5, "warn", "fail"),
])
def test_cpu_and_memory(nproc: int, mem_gib: float, cpu: str, mem: str) -> None:
    c = ctx(nproc=nproc, mem_total_kb=int(mem_gib * 1024 * 1024))
    assert preflight.check_cpu(c).verdict == cpu
    assert preflight.check_memory(c).verdict == mem


def test_disk_counts_images_pg_upgrade_and_backup() -> None:
    db = {"path": "/data/database", "exists": True, "entries": ["pg15"], "pg_dirs": ["pg15"],
          "root_pg_version": False, "size": 10 * GIB, "readable": True}
    # bundle 2 GiB * 3 + db 10 GiB + backup 3 GiB = 19 GiB
    tight = ctx(database=db, bundle_size=2 * GIB,
                disk={"path": "/data", "free": 18 * GIB, "total": 200 * GIB})
    r = preflight.check_disk(tight)
    assert r.verdict == "fail"
    assert "needs 19.0 GiB" in r.reason and "18.0 GiB free on /data" in r.reason
    roomy = ctx(database=db, bundle_size=2 * GIB,
                disk={"path": "/data", "free": 20 * GIB, "total": 200 * GIB})
    assert preflight.check_disk(roomy).verdict == "pass"


@pytest.mark.parametrize(("version", "docker", "want"), [
    ("2.13.0", "19.03.15", "warn"),       # above install.sh's 17.06, below documented 20.10
    ("2.13.0", "20.10.24+dfsg1", "pass"),
    ("2.9.0", "20.10.5", "warn"),         # documented 20.10.10 for 2.9-2.12
    ("2.0.0", "17.06.0-ce", "pass"),
    ("2.15.2", "17.03.2-ce", "fail"),     # below the enforced 17.06
])
def test_docker_versions(version: str, docker: str, want: str) -> None:
    r = preflight.check_docker(ctx(version, docker=ran(docker)))
    assert r.verdict == want, r.reason
    assert docker.split("+")[0].split("-")[0] in r.reason


def test_docker_missing_and_stopped() -> None:
    assert "not installed" in preflight.check_docker(ctx(docker=MISSING)).reason
    stopped = ran(rc=1, err="Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    assert "not running" in preflight.check_docker(ctx(docker=stopped)).reason


@pytest.mark.parametrize(("version", "v2", "v1", "want", "words"), [
    ("2.12.4", None, "1.26.2", "fail", "no `version:` key"),   # install.sh misses this one
    ("2.12.4", None, "1.27.4", "pass", "1.27.4"),
    ("2.11.2", None, "1.26.2", "pass", "1.26.2"),               # compose file still has version:
    ("2.11.2", None, "1.17.0", "fail", "older than 1.18.0"),
    ("2.13.5", None, "1.29.2", "warn", "documents only Compose v2"),
    ("2.13.5", "2.2.3", None, "warn", ">= 2.3.0"),
    ("2.13.5", "v2.24.6", None, "pass", "plugin"),
    ("2.15.2", "2.24.6", "1.29.2", "pass", "plugin"),
    ("2.5.3", "2.24.6", None, "fail", "runs only `docker-compose`"),
    ("2.5.3", None, "2.24.6", "warn", "Compose v2"),
    ("2.5.3", "2.24.6", "1.29.2", "pass", "docker-compose 1.29.2"),
    ("2.5.4", "2.0.1", None, "pass", "plugin"),                 # 2.5.4 accepts any v2
    ("2.15.2", None, None, "fail", "neither"),
])
def test_compose_table(version: str, v2: str | None, v1: str | None, want: str,
                       words: str) -> None:
    r = preflight.check_compose(ctx(version, compose_v2=ran(v2) if v2 else MISSING,
                                    compose_v1=ran(v1) if v1 else MISSING))
    assert r.verdict == want, r.reason
    assert words in r.reason



def test_compose_that_does_not_answer_in_time_is_not_called_missing() -> None:
    slow = ran(rc=124, err="timed out after 60s")
    r = preflight.check_compose(ctx("2.15.2", compose_v2=slow, compose_v1=MISSING))
    assert r.verdict == "fail"
    assert "did not answer in time" in r.reason and "neither" not in r.reason
    ok = preflight.check_compose(ctx("2.15.2", compose_v2=ran("2.24.6"), compose_v1=slow))
    assert ok.verdict == "pass", ok.reason

def _db(*entries: str, root: bool = False, size: int = 0) -> dict[str, Any]:
    return {"path": "/data/database", "exists": True, "entries": list(entries),
            "pg_dirs": [e for e in entries if e.startswith("pg")], "root_pg_version": root,
            "size": size, "readable": True}


@pytest.mark.parametrize(("target", "db", "installed", "want", "words"), [
    ("2.15.2", _db(), [], "pass", "no database yet"),
    ("2.15.2", _db("pg15"), [], "pass", "converts pg15 -> pg18"),
    ("2.14.4", _db("pg15"), [], "pass", "pg15 is what"),
    ("2.12.4", _db("pg13"), [], "fail", "NEW, EMPTY"),
    ("2.12.4", _db("pg13"), [], "fail", "upgrade plan --from"),
    ("2.7.0", _db("PG_VERSION", "base", root=True), [], "fail", "refuses"),
    ("2.4.0", _db("PG_VERSION", "base", root=True), [], "pass", "converts 9.6"),
    ("2.15.2", _db("pg13", "pg15"), [], "fail", "several clusters"),
    ("2.15.2", _db("lost+found", "junk"), [], "fail", "no Harbor database layout"),
    # installed version known from the install dir: the planner names the safe path
    ("2.12.4", _db("pg13"), ["harbor-v2.8.6"], "fail", "2.8.6 -> 2.10."),
    ("2.10.3", _db("pg13"), ["harbor-v2.8.6"], "pass", "convert"),
    ("2.14.4", _db("pg15"), ["harbor-v2.15.1"], "fail", "downgrade"),
])
def test_data_layout(target: str, db: dict[str, Any], installed: list[str], want: str,
                     words: str) -> None:
    r = preflight.check_data_layout(ctx(target, database=db, install_entries=installed))
    assert r.verdict == want, r
    assert words in r.reason + " " + r.fix


def test_installed_version_prefers_the_running_harbor_core() -> None:
    f = {"containers": "harbor-core\tgoharbor/harbor-core:v2.9.5\t\n",
         "install_entries": ["harbor-v2.8.6"]}
    v, source = preflight.installed_version(f)
    assert str(v) == "2.9.5" and "harbor-core" in source


@pytest.mark.parametrize(("out", "rc", "want"), [
    ("171|f", 0, "pass"), ("160|t", 0, "fail"), ("", 0, "pass"),
    ("190|f", 0, "fail"), ("", 1, "warn"),
])
def test_schema_dirty(out: str, rc: int, want: str) -> None:
    r = preflight.check_schema_dirty(ctx("2.14.4", schema=ran(out, rc=rc, err="boom")))
    assert r.verdict == want, r
    if out == "160|t":
        assert "restore from backup" in r.fix
    assert preflight.check_schema_dirty(ctx()).verdict == "skip"


def test_hostname() -> None:
    assert preflight.check_hostname(ctx()).verdict == "pass"
    bad = ctx(site=make_site(hostname="harbor.invalid.test"), getent=ran(rc=2))
    r = preflight.check_hostname(bad)
    assert r.verdict == "fail" and "does not resolve on h1" in r.reason
    assert preflight.check_hostname(ctx(site=make_site(hostname="10.200.0.5"))).verdict == "pass"


SS = """LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=10,fd=6))
LISTEN 0 4096 127.0.0.1:1514 0.0.0.0:* users:(("docker-proxy",pid=11,fd=4))
LISTEN 0 128 [::]:8080 [::]:* users:(("python3",pid=12,fd=3))
LISTEN 0 128 *:9090 *:*
"""


def test_parse_ss_and_proc_net_tcp() -> None:
    ls = facts.parse_ss(SS)
    assert [(x.address, x.port, x.process) for x in ls] == [
        ("0.0.0.0", 80, "nginx"), ("127.0.0.1", 1514, "docker-proxy"),
        ("::", 8080, "python3"), ("0.0.0.0", 9090, None)]
    proc = ("  sl  local_address rem_address   st\n"
            "   0: 0100007F:05EA 00000000:0000 0A 0 0\n"
            "   1: 00000000:1F90 00000000:0000 01 0 0\n"
            "   0: " + "0" * 32 + ":0050 " + "0" * 32 + ":0000 0A\n")
    assert [(x.address, x.port) for x in facts.parse_proc_net_tcp(proc)] == [
        ("127.0.0.1", 1514), ("::", 80)]


def test_ports_owned_by_harbor_pass_foreign_ones_fail() -> None:
    containers = ("nginx\tgoharbor/nginx-photon:v2.15.2\t0.0.0.0:8080->8080/tcp\n"
                  "harbor-log\tgoharbor/harbor-log:v2.15.2\t127.0.0.1:1514->10514/tcp\n")
    rs = preflight.check_ports(ctx(ss=ran(SS), containers=containers))
    by_port = {r.reason.split(" ")[0]: r for r in rs}
    assert by_port["0.0.0.0:8080"].verdict == "pass" and "Harbor's own" in by_port[
        "0.0.0.0:8080"].reason
    assert by_port["127.0.0.1:1514"].verdict == "pass"
    rs = preflight.check_ports(ctx(ss=ran(SS)))
    assert {r.verdict for r in rs} == {"fail"}
    assert any("in use by python3" in r.reason for r in rs)


def test_front_port_held_by_our_nginx_passes() -> None:
    site = make_site(front=True)
    c = ctx(site=site, ss=ran(SS.splitlines()[0]), nginx_harbor_confs=["/etc/nginx/conf.d/h"])
    front = [r for r in preflight.check_ports(c) if "front.listen" in r.reason]
    assert front[0].verdict == "pass"
    c = ctx(site=site, ss=ran(SS.splitlines()[0]))
    assert [r for r in preflight.check_ports(c) if "front.listen" in r.reason][0].verdict == "fail"


def test_skip_names_are_validated() -> None:
    assert preflight.validate_skip(["cpu", "ports"]) == {"cpu", "ports"}
    with pytest.raises(UsageError) as exc:
        preflight.validate_skip(["cpu", "prots"])
    assert "prots" in str(exc.value) and "ports" in str(exc.value)
    assert all(name in str(exc.value) for name in CHECKS)


# ------------------------------------------------------------------ the real local probe


def test_local_probe_reads_this_machine(tmp_path: Path) -> None:
    got = facts.gather(HostEntry(name="here", connection="local"),
                       data_volume=str(tmp_path / "data"), hostname="localhost",
                       install_dir=str(tmp_path / "opt"))
    assert got.ok, got.error
    d = got.data
    assert d["nproc"] >= 1 and d["mem_total_kb"] > 0
    assert d["disk"]["path"] == str(tmp_path) and d["disk"]["free"] > 0
    assert d["database"]["exists"] is False
    assert d["getent"]["rc"] == 0


def test_occupied_port_fails_on_this_host(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        site = make_site(http_port=port, data_volume=str(tmp_path / "data"))
        report = run_preflight(site, skip=["docker", "compose"])
    ports = [r for r in report.results["localhost"] if r.name == "ports"]
    bad = [r for r in ports if r.verdict == "fail"]
    assert len(bad) == 1 and f":{port} (harbor.http.port) is in use" in bad[0].reason
    assert not report.ok
    assert "FAIL  ports" in str(report)


def test_report_with_a_real_bundle_and_a_data_dir(tmp_path: Path) -> None:
    (tmp_path / "data" / "database" / "pg13").mkdir(parents=True)
    (tmp_path / "data" / "database" / "pg13" / "PG_VERSION").write_text("13\n")
    b = make_bundle(tmp_path / "harbor-offline-installer-v2.12.4.tgz", version="2.12.4")
    site = make_site("2.12.4", data_volume=str(tmp_path / "data"))
    report = run_preflight(site, bundle=b, skip=["docker", "compose", "ports"])
    by_name = {r.name: r for r in report.results["localhost"]}
    assert by_name["bundle"].verdict == "pass" and "2.12.4" in by_name["bundle"].reason
    assert by_name["data_layout"].verdict == "fail"
    assert "EMPTY" in by_name["data_layout"].reason
    assert by_name["docker"].verdict == "skip"
    d = report.to_dict()
    assert d["ok"] is False and d["target"] == "2.12.4"
    assert [r["name"] for r in d["hosts"]["localhost"]].count("ports") == 1


def test_bundle_of_another_version_fails_naming_both(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "harbor-offline-installer-v2.14.4.tgz", version="2.14.4")
    site = make_site("2.15.2", data_volume=str(tmp_path / "data"))
    report = run_preflight(site, bundle=b, skip=["docker", "compose", "ports", "data_layout"])
    r = next(r for r in report.results["localhost"] if r.name == "bundle")
    assert r.verdict == "fail" and "2.14.4" in r.reason and "2.15.2" in r.reason


def test_unreachable_ssh_host_is_a_named_failure(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = make_site(data_volume=str(tmp_path / "data"))
    host = HostEntry(name="ghost", address="127.0.0.1", port=port)
    report = run_preflight(site, hosts=[host])
    rs = report.results["ghost"]
    assert rs[0].name == "ssh" and rs[0].verdict == "fail"
    assert "ghost" in rs[0].reason and "unreachable" in rs[0].reason
    assert {r.verdict for r in rs if r.name in ("cpu", "disk", "ports")} == {"skip"}
    assert not report.ok
