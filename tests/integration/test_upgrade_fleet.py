"""`harborctl upgrade apply` on two test-bed hosts: the rollout and the host's job lock.

Both hosts get Harbor 2.14.4 with rows in one `harborctl install`. First run, one host at a
time, h1 first, with the double's ``core-unhealthy`` switch for 2.15.2 on h1: while h1's
hop runs, harborctl's own lock code run ON h1 (a nightly backup there) is refused with the
documented busy message naming the upgrade, and so is a second controller's `apply --host
h1`; h2's backup from the controller still runs. h1's hop fails its gate and is rolled back
(exit 11); h2 never starts and stays on 2.14.4, healthy, every row. Second run, without
the switch, as a user runs it (`harborctl upgrade apply --parallel 2 -o json`), to 2.16.0:
a release harborctl's tables do not know, learned from the test bed's 2.16.0 double in the
bundle folder (tests/bed/unreleased.py: harbor-db 15 -> 18, schema 180, template _version
2.15.0); the dry run says what was learned and plans one hop; both hosts' hops run at the
same time and both reach 2.16.0 with every row; per-host JSON outcomes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import harbor_ops
from harbor_ops.core.errors import UpgradeRolledBack
from harbor_ops.core.lock import LOCK_ENV
from harbor_ops.install.run import install
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from harbor_ops.upgrade.apply import ApplyResult, Options, apply
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed
from tests.bed.unreleased import build_unreleased
from tests.integration.test_backup_fleet import _write_site
from tests.integration.upgradefixture import COUNT_SQL, ROWS_SQL, journal, psql

pytestmark = pytest.mark.integration

OLD, NEW, LEARNED = "2.14.4", "2.15.2", "2.16.0"
NAMES = ("h1", "h2")


def _site_file(base: Path, hosts: list[Host], key: Path, version: str) -> Path:
    config = _write_site(base, hosts, key)
    config.write_text(config.read_text().replace("version: 2.15.2", f"version: {version}"))
    return config


def _site(base: Path, hosts: list[Host], key: Path, version: str) -> Site:
    return load_site(_site_file(base, hosts, key, version))


def _opts(base: Path, bundles: Path, bed: TestBed) -> Options:
    return Options(bundle_dir=bundles, ssh_config=bed.ssh_config_path, log_dir=base / "logs",
                   backup_dir=base / "upgrade-backups", health_retries=12)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bundles")
    for v in (OLD, NEW):
        build_bundle(v, d)
    build_unreleased(d)
    return d


@pytest.fixture(scope="module")
def fleet(testbed: TestBed, bundles: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Host], Path,
                                                                       dict[str, str]]]:
    """h1 and h2 on 2.14.4 with rows; (hosts, base dir, row counts per host)."""
    hosts = {n: testbed.reset(n) for n in NAMES}
    base = tmp_path_factory.mktemp("fleet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LOCK_ENV, str(base / "harborctl.lock"))  # this controller's locks
        site = _site(base, list(hosts.values()), testbed.client_key, OLD)
        install(site, bundle=bundles / f"harbor-offline-installer-v{OLD}.tgz",
                log_dir=base / "logs", ssh_config=testbed.ssh_config_path, timeout=1200)
        for h in hosts.values():
            h.exec("docker exec -i harbor-db psql -v ON_ERROR_STOP=1 -U postgres -d registry",
                   input=ROWS_SQL.encode())
        yield hosts, base, {n: psql(h, COUNT_SQL) for n, h in hosts.items()}


def _lock_code_on(host: Host) -> str:
    """harborctl's own job lock, run on the host as `harborctl backup create` there takes
    it: a copy of harbor_ops.core (stdlib only) under /tmp on the host."""
    pkg = Path(harbor_ops.__file__).parent
    dest = host.root_path / "tmp/lockcheck/harbor_ops"
    (dest / "core").mkdir(parents=True, exist_ok=True)
    shutil.copy(pkg / "__init__.py", dest / "__init__.py")
    for name in ("__init__.py", "errors.py", "lock.py"):
        shutil.copy(pkg / "core" / name, dest / "core" / name)
    probe = ("from harbor_ops.core.lock import job_lock\n"
             "from harbor_ops.core.errors import LockHeld\n"
             "try:\n    with job_lock(job='backup create'):\n        print('took the lock')\n"
             "except LockHeld as e:\n    print(e.message)\n")
    got = host.exec(f"cd /tmp/lockcheck && /usr/bin/python3 -c {shlex.quote(probe)}")
    return got.stdout.strip()


class DuringTheHop:
    """Checks run while h1's hop runs (its journal has a step of this run begun)."""

    def __init__(self, hosts: dict[str, Host], base: Path, site: Site, bundles: Path,
                 bed: TestBed) -> None:
        self.hosts, self.base, self.site, self.bundles, self.bed = hosts, base, site, bundles, bed
        self.done, self.seen = threading.Event(), {}  # type: ignore[var-annotated]
        self.thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not self.done.is_set():
            if any(e["step"] == "load_images" for e in journal(self.hosts["h1"])):
                self._check()
                return
            time.sleep(0.3)

    def _check(self) -> None:
        second = subprocess.run(
            [str(Path(sys.executable).with_name("harborctl")), "upgrade", "apply", "--yes",
             "--host", "h1", "-c", str(self.site.path), "--bundle-dir", str(self.bundles),
             "--ssh-config", str(self.bed.ssh_config_path), "--log-dir",
             str(self.base / "logs2"), "--backup-dir", str(self.base / "backups2")],
            env={**os.environ, LOCK_ENV: str(self.base / "second-controller.lock")},
            capture_output=True, text=True, timeout=300, check=False)
        self.seen["second"] = (second.returncode, second.stderr)
        self.seen["on_host"] = _lock_code_on(self.hosts["h1"])
        self.seen["h2_lock"] = _lock_code_on(self.hosts["h2"])
        backup = subprocess.run(
            [str(Path(sys.executable).with_name("harborctl")), "backup", "create", "--host",
             "h2", "-c", str(self.site.path), "-o", "json"],
            env={**os.environ, "HARBORCTL_SSH_CONFIG": str(self.bed.ssh_config_path)},
            capture_output=True, text=True, timeout=300, check=False)
        self.seen["h2_backup"] = (backup.returncode, backup.stderr[-1000:])
        self.seen["h1_journal_after"] = journal(self.hosts["h1"])


@pytest.fixture(scope="module")
def first_run(fleet: tuple[dict[str, Host], Path, dict[str, str]], bundles: Path,
              testbed: TestBed) -> tuple[ApplyResult, dict[str, object]]:
    hosts, base, _ = fleet
    hosts["h1"].exec(f"mkdir -p /data/bed-faults && echo v{NEW} > /data/bed-faults/core-unhealthy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(LOCK_ENV, str(base / "harborctl.lock"))
        site = _site(base, list(hosts.values()), testbed.client_key, NEW)
        during = DuringTheHop(hosts, base, site, bundles, testbed)
        during.thread.start()
        try:
            result = apply(site, to=NEW, host=None, opts=_opts(base, bundles, testbed))
        finally:
            during.done.set()
            during.thread.join()
    return result, during.seen


def test_a_backup_on_the_host_is_refused_during_the_hop(
        first_run: tuple[ApplyResult, dict[str, object]]) -> None:
    _, seen = first_run
    assert str(seen.get("on_host", "")).startswith(
        "another harborctl job holds the lock (pid="), seen
    assert "job=upgrade h1 controller=" in str(seen["on_host"])
    assert "lock /run/harborctl.lock" in str(seen["on_host"])
    assert seen["h2_lock"] == "took the lock"  # h2 is not being upgraded yet


def test_a_second_controller_is_refused_and_another_hosts_backup_runs(
        first_run: tuple[ApplyResult, dict[str, object]]) -> None:
    _, seen = first_run
    rc, err = seen["second"]  # type: ignore[misc]
    assert rc == 7, err
    assert "another harborctl job holds the lock on h1" in err and "job=upgrade h1" in err
    rc, err = seen["h2_backup"]  # type: ignore[misc]
    assert rc == 0, err
    # the refused controller changed nothing: the hop went on (its journal is one run)
    assert len({e["run"] for e in seen["h1_journal_after"]}) == 1  # type: ignore[union-attr]


def test_a_failed_host_stops_the_rollout_and_the_other_stays_healthy(
        first_run: tuple[ApplyResult, dict[str, object]],
        fleet: tuple[dict[str, Host], Path, dict[str, str]]) -> None:
    result, _ = first_run
    hosts, _, counts = fleet
    assert isinstance(result.error, UpgradeRolledBack) and result.error.exit_code == 11
    doc = result.to_dict()
    assert doc["exit_code"] == 11
    by = {h["host"]: h for h in doc["hosts"]}
    assert (by["h1"]["outcome"], by["h1"]["on_release"]) == ("rolled_back", OLD)
    assert (by["h2"]["outcome"], by["h2"]["on_release"]) == ("not_started", OLD)
    assert by["h2"]["hops_run"] == []
    for name, host in hosts.items():
        assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{OLD}"
        assert psql(host, COUNT_SQL) == counts[name]
        assert psql(host, "SELECT version, dirty FROM schema_migrations") == "171|f"
        assert host.exec("cat /run/harborctl.lock", check=False).stdout.strip() == ""
    assert journal(hosts["h2"]) == []


def _harborctl(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("harborctl")), *args],
                          env={**os.environ, LOCK_ENV: str(base / "harborctl.lock")},
                          capture_output=True, text=True, timeout=1800, check=False)


@pytest.fixture(scope="module")
def second_run(first_run: object, fleet: tuple[dict[str, Host], Path, dict[str, str]],
               bundles: Path, testbed: TestBed) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the dry run's JSON, the run's JSON), to 2.16.0 learned from its bundle."""
    hosts, base, _ = fleet
    hosts["h1"].exec("rm -f /data/bed-faults/core-unhealthy")
    config = _site_file(base, list(hosts.values()), testbed.client_key, LEARNED)
    common = ["-c", str(config), "--bundle-dir", str(bundles), "--ssh-config",
              str(testbed.ssh_config_path), "--log-dir", str(base / "logs"), "--backup-dir",
              str(base / "upgrade-backups"), "--health-retries", "24", "-o", "json"]
    plan = _harborctl(base, "upgrade", "apply", "--dry-run", *common)
    assert plan.returncode == 0, plan.stderr[-3000:]
    run = _harborctl(base, "upgrade", "apply", "--yes", "--parallel", "2", *common)
    assert run.stdout.strip(), run.stderr[-3000:]
    return json.loads(plan.stdout), {**json.loads(run.stdout), "rc": run.returncode,
                                     "stderr": run.stderr[-3000:]}


def test_the_dry_run_says_what_was_learned_from_the_bundle(
        second_run: tuple[dict[str, Any], dict[str, Any]]) -> None:
    plan, _ = second_run
    assert [x["version"] for x in plan["learned"]] == [LEARNED]
    learned = plan["learned"][0]
    assert learned["harbor_db"] == {"from": "15", "to": "18"}
    assert (learned["schema_version"], learned["schema_file"]) == (180, "0180_2.15.0_schema.up.sql")
    assert learned["harbor_yml_version"] == "2.15.0"
    assert "jobservice.job_loggers" in learned["harbor_yml_keys"]
    for h in plan["hosts"]:
        hops = h["plan"]["hops"]
        assert [(x["from"], x["to"], x["db_outcome"]) for x in hops] == [
            (OLD, LEARNED, "convert")], h
        assert hops[0]["schema_migrations"] == {"from": 171, "to": 180}


def test_parallel_hosts_reach_the_learned_release_at_the_same_time(
        second_run: tuple[dict[str, Any], dict[str, Any]],
        fleet: tuple[dict[str, Host], Path, dict[str, str]]) -> None:
    hosts, _, counts = fleet
    _, doc = second_run
    assert doc["rc"] == 0 and doc["exit_code"] == 0, doc["stderr"]
    assert {(h["host"], h["outcome"], h["on_release"]) for h in doc["hosts"]} == {
        ("h1", "done", LEARNED), ("h2", "done", LEARNED)}
    spans = {}
    for name, host in hosts.items():
        run = journal(host)[-1]["run"]
        times = [float(str(e["t"])) for e in journal(host) if e["run"] == run]
        spans[name] = (min(times), max(times))
        assert f"harbor-core:v{LEARNED}" in host.exec("docker ps --format '{{.Image}}'").stdout
        assert psql(host, COUNT_SQL) == counts[name]
        assert psql(host, "SELECT version, dirty FROM schema_migrations") == "180|f"
        assert host.exec("ls /data/database").stdout.split() == ["pg18"]
        assert host.exec("cat /run/harborctl.lock", check=False).stdout.strip() == ""
    # the two hops overlapped in time: each began before the other ended
    assert spans["h1"][0] < spans["h2"][1] and spans["h2"][0] < spans["h1"][1], spans
