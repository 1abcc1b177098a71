"""`harborctl upgrade apply` on a real test-bed host: one hop 2.14.4 -> 2.15.2 with data.

The host gets Harbor 2.14.4 through `harborctl install` (the Harbor-shaped bundle: real
PostgreSQL, real pg_upgrade 15 -> 18 in 2.15.2's harbor-db, real registry and nginx), rows in
Harbor's key tables and a pushed image; then the site file's harbor.version becomes 2.15.2
and `upgrade apply` runs: verified backup from the controller, images loaded while 2.14.4
serves, the window, the gate. Everything is checked on the host as an operator would.
The tests in this module share one host and run in file order.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.core.errors import UpgradePathError
from harbor_ops.install.run import install
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from harbor_ops.upgrade.apply import ApplyResult, Options, apply, status
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed
from tests.integration.test_bundle import _tiny_oci_layout
from tests.integration.test_install import ADMIN_PASSWORD, write_site

pytestmark = pytest.mark.integration

OLD, NEW = "2.14.4", "2.15.2"
ROWS_SQL = """
INSERT INTO harbor_user (username, realname) SELECT 'user' || i, 'User ' || i
  FROM generate_series(1, 40) i;
INSERT INTO project (owner_id, name) SELECT 1, 'proj' || i FROM generate_series(1, 25) i;
INSERT INTO repository (name, project_id) SELECT 'proj' || (i % 25 + 1) || '/repo' || i, 1
  FROM generate_series(1, 200) i;
INSERT INTO artifact (project_id, repository_id, repository_name, digest, size)
  SELECT 1, i, 'proj/repo' || i, 'sha256:' || md5(i::text), i * 1000
  FROM generate_series(1, 200) i;
"""
COUNT_SQL = ("SELECT (SELECT count(*) FROM project), (SELECT count(*) FROM repository), "
             "(SELECT count(*) FROM artifact), (SELECT count(*) FROM harbor_user)")


@pytest.fixture(scope="module", autouse=True)
def private_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """This machine's /run/harborctl.lock belongs to whoever else runs harborctl here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARBORCTL_LOCK_FILE", str(tmp_path_factory.mktemp("lock") / "harborctl.lock"))
        yield


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bundles")
    for v in (OLD, NEW):
        build_bundle(v, d)
    return d


def _site_at(site_dir: Path, host: Host, key: Path, version: str) -> Site:
    write_site(site_dir, host, key)
    path = site_dir / "harborctl.yml"
    path.write_text(path.read_text().replace("version: 2.15.2", f"version: {version}"))
    return load_site(path)


def psql(host: Host, sql: str) -> str:
    p = host.exec(f"docker exec -i harbor-db psql -U postgres -d registry -tAc \"{sql}\"")
    return p.stdout.strip()


@pytest.fixture(scope="module")
def installed(testbed: TestBed, bundles: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Path, str]:
    """h1 on Harbor 2.14.4 with rows and a pushed image; returns (host, site dir, counts)."""
    host = testbed.reset("h1")
    site_dir = tmp_path_factory.mktemp("site")
    site = _site_at(site_dir, host, testbed.client_key, OLD)
    install(site, bundle=bundles / f"harbor-offline-installer-v{OLD}.tgz",
            log_dir=site_dir / "logs", ssh_config=testbed.ssh_config_path, timeout=900)
    host.exec("docker exec -i harbor-db psql -v ON_ERROR_STOP=1 -U postgres -d registry",
              input=ROWS_SQL.encode())
    if shutil.which("skopeo"):
        _push(host, site_dir)
    return host, site_dir, psql(host, COUNT_SQL)


def _auth(host: Host, folder: Path) -> Path:
    auth = folder / "auth.json"
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"{host.address}:80": {"auth": token}}}))
    auth.chmod(0o600)
    return auth


def _push(host: Host, folder: Path) -> None:
    layout = _tiny_oci_layout(folder / "oci")
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--authfile",
                    str(_auth(host, folder)), f"oci:{layout}:v1",
                    f"docker://{host.address}:80/library/hello:v1"], check=True, timeout=120)


def _opts(testbed: TestBed, site_dir: Path, bundles: Path) -> Options:
    return Options(bundle_dir=bundles, ssh_config=testbed.ssh_config_path,
                   log_dir=site_dir / "logs", backup_dir=site_dir / "backups",
                   health_retries=36)


@pytest.fixture(scope="module")
def upgraded(testbed: TestBed, installed: tuple[Host, Path, str],
             bundles: Path) -> tuple[ApplyResult, list[str]]:
    host, site_dir, _ = installed
    site = _site_at(site_dir, host, testbed.client_key, NEW)
    lines: list[str] = []
    result = apply(site, to=NEW, host=None, opts=_opts(testbed, site_dir, bundles),
                   progress=lines.append)
    print(json.dumps(result.to_dict()["hosts"][0]["hops_run"], indent=1))  # shown with -s
    return result, lines


def test_refusal_before_anything_changes_when_a_stop_has_no_bundle(
        testbed: TestBed, installed: tuple[Host, Path, str], tmp_path: Path) -> None:
    host, site_dir, _ = installed
    site = _site_at(site_dir, host, testbed.client_key, NEW)
    empty = tmp_path / "no-bundles"
    empty.mkdir()
    result = apply(site, to=NEW, host=None, opts=_opts(testbed, site_dir, empty))
    assert isinstance(result.error, UpgradePathError)
    assert "no bundle for stop 2.15.2" in result.error.message
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{OLD}"
    assert host.exec("test -e /var/lib/harborctl/upgrade.journal", check=False).returncode != 0


def test_the_hop_ends_on_the_new_release(upgraded: tuple[ApplyResult, list[str]],
                                         installed: tuple[Host, Path, str]) -> None:
    result, lines = upgraded
    assert result.error is None, (result.error, "\n".join(lines[-30:]))
    host_out = result.hosts[0]
    assert (host_out.outcome, host_out.on_release) == ("done", NEW)
    hop = host_out.hops[0]
    assert hop["outcome"] == "done" and hop["downtime_seconds"] > 0
    names = [s["step"] for s in hop["steps"]]
    assert names == ["backup", "unpack", "load_images", "configure", "count_rows", "stop",
                     "snapshot", "switch", "start", "gate", "finish"]
    host = installed[0]
    assert host.exec("readlink /opt/harbor/harbor").stdout.strip() == f"harbor-{NEW}"
    assert f"harbor-core:v{NEW}" in host.exec("docker ps --format '{{.Image}}'").stdout


def test_every_row_survives_and_the_schema_matches(upgraded: tuple[ApplyResult, list[str]],
                                                   installed: tuple[Host, Path, str]) -> None:
    host, _, before = installed
    assert psql(host, COUNT_SQL) == before
    assert psql(host, "SELECT version, dirty FROM schema_migrations") == "180|f"
    # pg_upgrade converted the data: only pg18 is left, owned by uid 999, mode 0700
    assert host.exec("ls /data/database").stdout.split() == ["pg18"]
    assert host.exec("stat -c '%u %a' /data/database/pg18").stdout.strip() == "999 700"


def test_the_image_pushed_before_can_be_pulled(upgraded: tuple[ApplyResult, list[str]],
                                               installed: tuple[Host, Path, str],
                                               tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    host = installed[0]
    out = tmp_path / "pulled"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--authfile",
                    str(_auth(host, tmp_path)), f"docker://{host.address}:80/library/hello:v1",
                    f"dir:{out}"], check=True, timeout=120)
    assert (out / "manifest.json").is_file()


def test_journal_backup_and_snapshot(upgraded: tuple[ApplyResult, list[str]],
                                     installed: tuple[Host, Path, str]) -> None:
    host, site_dir, _ = installed
    assert host.exec("stat -c %a /var/lib/harborctl/upgrade.journal").stdout.strip() == "600"
    assert host.exec("test -e /var/lib/harborctl/upgrade.window", check=False).returncode != 0
    assert host.exec("ls -A /data/.harborctl-upgrade").stdout.strip() == ""  # dropped
    backups = list((site_dir / "backups" / "h1").glob("harbor-h1-*.hbk"))
    assert len(backups) == 1, "the per-hop backup is on the controller"
    drill = json.loads(Path(f"{backups[0]}.verified.json").read_text())
    assert drill["ok"] and drill["restore_ok"], drill


def test_a_second_apply_does_nothing(testbed: TestBed, installed: tuple[Host, Path, str],
                                     upgraded: tuple[ApplyResult, list[str]],
                                     bundles: Path) -> None:
    host, site_dir, _ = installed
    site = _site_at(site_dir, host, testbed.client_key, NEW)
    again = apply(site, to=NEW, host=None, opts=_opts(testbed, site_dir, bundles))
    assert again.error is None and again.hosts[0].outcome == "up_to_date"
    st = status(site, host=None, opts=_opts(testbed, site_dir, bundles)).to_dict()
    assert st["hosts"][0]["plan"]["journal"]["outcome"] == "done"
