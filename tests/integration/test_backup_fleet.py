"""Backups of three test-bed Harbor hosts from the controller, over real SSH, and back.

One installed bed serves every test of this module (file order): install on h1..h3, data
and a pushed image on each, ``backup create --all`` and ``verify --all`` as a user runs
them; h2 loses its database and secret key and comes back empty, ``restore --host h2``
brings every row, the key and harbor.yml back. Then the SSH session's own sshd is killed
at each phase of a backup (the host's main sshd lives on), and finally one host's link
goes down during the agent's nightly run. In between, a job holding h1's own
``/run/harborctl.lock`` (what a harborctl on the host, install.sh, or a second controller's
upgrade takes) makes the controller's backup of h1 refuse until it ends.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harbor_ops.agent import loop as agent_loop
from harbor_ops.agent.jobs import BACKUP_RETRY_ENV
from harbor_ops.backup import fleet
from harbor_ops.backup.catalog import list_backups
from harbor_ops.core.errors import HarborctlError, LockHeld
from harbor_ops.core.lock import LOCK_ENV, job_lock
from harbor_ops.hosts import joblock
from harbor_ops.hosts.joblock import HOST_LOCK, host_lock
from harbor_ops.install.run import install
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from tests.bed.bundle.builder import build_bundle
from tests.bed.fixtures import unavailable
from tests.bed.hosts import Host, TestBed
from tests.integration.harborwait import health_url, wait_healthy
from tests.integration.test_bundle import _tiny_oci_layout

pytestmark = pytest.mark.integration

VERSION = "2.15.2"
NAMES = ("h1", "h2", "h3")
ADMIN_PASSWORD = "it-Fleet-Admin-1"  # throw-away values for throw-away hosts
DB_PASSWORD = "it-Fleet-Db-2"
TABLES = {"harbor_user": "user_id", "project": "project_id", "repository": "repository_id",
          "artifact": "id", "audit_log": "id", "schema_migrations": "version"}


@dataclass
class Fleet:
    bed: TestBed
    hosts: dict[str, Host]
    config: Path
    site: Site
    base: Path

    def harborctl(self, *args: str, config: Path | None = None
                  ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, LOCK_ENV: str(self.base / "harborctl.lock")}
        return subprocess.run([sys.executable, "-m", "harbor_ops.cli.main", *args, "-c",
                               str(config or self.config)], capture_output=True, text=True,
                              env=env, timeout=900, check=False)

    def sql(self, host: str, query: str) -> list[str]:
        proc = self.hosts[host].exec(
            "docker exec -i harbor-db psql -U postgres -d registry -v ON_ERROR_STOP=1 -tA",
            input=query.encode())
        return [line for line in proc.stdout.splitlines() if line]

    def rows(self, host: str) -> dict[str, list[str]]:
        return {t: self.sql(host, f"SELECT * FROM {t} ORDER BY {key}")
                for t, key in TABLES.items()}


def _write_site(base: Path, hosts: list[Host], key: Path) -> Path:
    secrets = base / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "admin").write_text(ADMIN_PASSWORD + "\n")
    (secrets / "db").write_text(DB_PASSWORD + "\n")
    entries = "".join(f"  - {{name: {h.name}, address: {h.address}, ssh_key_file: {key}}}\n"
                      for h in hosts)
    config = base / "harborctl.yml"
    config.write_text(f"""\
harbor:
  version: {VERSION}
  hostname: {hosts[0].address}
  http: {{port: 8080}}
  harbor_admin_password_file: secrets/admin
  database: {{password_file: secrets/db}}
  data_volume: /data
install: {{dir: /opt/harbor, bundle_dir: /opt/harbor-bundles}}
backup:
  dir: {base}/backups
  jitter_minutes: 0
  parallel: 2
agent:
  status_file: {base}/state/status.json
  metrics_dir: {base}/metrics
hosts:
{entries}""")
    return config


def _fill(f: Fleet, host: str, n: int) -> None:
    f.sql(host, f"""
        INSERT INTO project (owner_id, name)
          SELECT 1, '{host}-team-' || i FROM generate_series(1, {n}) AS i;
        INSERT INTO repository (name, project_id, description, pull_count)
          SELECT p.name || '/app-' || j, p.project_id, 'repo ' || j, j
          FROM project p, generate_series(1, 3) AS j WHERE p.name LIKE '{host}-team-%';
        INSERT INTO artifact (project_id, repository_id, repository_name, digest, size,
                              media_type)
          SELECT r.project_id, r.repository_id, r.name,
                 'sha256:' || encode(sha256(convert_to(r.name || '#' || k, 'UTF8')), 'hex'),
                 k, 'application/vnd.oci.image.manifest.v1+json'
          FROM repository r, generate_series(1, 4) AS k;
        INSERT INTO audit_log (project_id, operation, resource_type, resource, username)
          SELECT a.project_id, 'push', 'artifact', a.repository_name || '@' || a.digest,
                 'admin' FROM artifact a;""")


def _skopeo(host: Host, auth_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    auth = auth_dir / f"auth-{host.name}.json"
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {f"{host.address}:8080": {"auth": token}}}))
    auth.chmod(0o600)
    return subprocess.run(["skopeo", *args[:1], "--quiet", "--authfile", str(auth), *args[1:]],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def fleet_bed(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = [testbed.reset(n) for n in NAMES]
    base = tmp_path_factory.mktemp("fleet")
    config = _write_site(base, hosts, testbed.client_key)
    site = load_site(config)
    # This session's own lock and ssh config, for in-process calls (restored at the end).
    saved = {k: os.environ.get(k) for k in ("HARBORCTL_SSH_CONFIG", LOCK_ENV)}
    os.environ["HARBORCTL_SSH_CONFIG"] = str(testbed.ssh_config_path)
    os.environ[LOCK_ENV] = str(base / "harborctl.lock")
    bundle = build_bundle(VERSION, tmp_path_factory.mktemp("bundles"))
    result = install(site, bundle=bundle, log_dir=base / "logs",
                     ssh_config=testbed.ssh_config_path, timeout=1200)
    assert all(t.failed == 0 for t in result.hosts.values()), result
    f = Fleet(testbed, {h.name: h for h in hosts}, config, site, base)
    layout = _tiny_oci_layout(base / "oci")
    for i, h in enumerate(hosts):
        _fill(f, h.name, 4 + i)
        pushed = _skopeo(h, base, "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                         f"docker://{h.address}:8080/library/hello:v1")
        assert pushed.returncode == 0, pushed.stderr
    # h1's dump lasts long enough to be cut mid-stream (about 30 MB of audit rows).
    f.sql("h1", "INSERT INTO audit_log (project_id, operation, resource_type, resource, "
          "username) SELECT 1, 'pull', 'artifact', md5(i::text) || repeat('x', 120), 'admin' "
          "FROM generate_series(1, 200000) AS i")
    yield f
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def first(fleet_bed: Fleet) -> dict[str, object]:
    """backup create --all, then verify --all, from the controller."""
    before = {h: fleet_bed.rows(h) for h in NAMES}
    created = fleet_bed.harborctl("backup", "create", "--all", "-o", "json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    verified = fleet_bed.harborctl("backup", "verify", "--all", "-o", "json")
    assert verified.returncode == 0, verified.stderr
    return {"created": doc, "verified": json.loads(verified.stdout), "rows": before}


def test_create_all_writes_one_backup_per_host_on_the_controller(fleet_bed: Fleet,
                                                                first: dict) -> None:
    doc = first["created"]
    assert doc["ok"] and [h["host"] for h in doc["hosts"]] == list(NAMES)
    for h in doc["hosts"]:
        manifest = h["result"]["manifest"]
        assert manifest["hostname"] == h["host"]
        assert manifest["row_counts"]["project"] == len(first["rows"][h["host"]]["project"])
        assert Path(h["result"]["path"]).parent == fleet_bed.base / "backups" / h["host"]
    for name in NAMES:  # nothing of the dump stayed on the Harbor host
        leftovers = fleet_bed.hosts[name].exec(
            "find / -xdev \\( -name '*.hbk*' -o -name '*.dump*' \\) -print", check=False)
        assert leftovers.stdout.strip() == "", leftovers.stdout
    assert all(h["result"]["restore_ok"] for h in first["verified"]["hosts"])


def test_one_of_several_hosts_needs_host_or_all(fleet_bed: Fleet, first: dict) -> None:
    res = fleet_bed.harborctl("backup", "list")
    assert res.returncode == 2 and "--host NAME" in res.stderr, res.stderr
    res = fleet_bed.harborctl("backup", "list", "--host", "h2", "-o", "json")
    assert res.returncode == 0 and len(json.loads(res.stdout)) == 1


def test_restore_host_brings_back_every_row_the_key_and_harbor_yml(
        fleet_bed: Fleet, first: dict) -> None:
    h2 = fleet_bed.hosts["h2"]
    key = "/data/secret/keys/secretkey"
    yml = "/opt/harbor/harbor/harbor.yml"
    key_before = h2.exec(f"base64 {key}").stdout
    yml_before = h2.exec(f"cat {yml}").stdout
    h2.exec(f"cd /opt/harbor/harbor && docker-compose -p harbor down >/dev/null 2>&1 && "
            f"rm -rf /data/database /data/secret && echo '# edited' >> {yml} "
            f"&& ./install.sh >/dev/null", timeout=600)
    wait_healthy(health_url(h2))
    assert h2.exec(f"base64 {key}").stdout != key_before  # a new, empty Harbor
    assert fleet_bed.rows("h2")["artifact"] == []
    res = fleet_bed.harborctl("backup", "restore", "--host", "h2", "--latest", "--yes",
                              "-o", "json")
    assert res.returncode == 0, res.stderr
    assert fleet_bed.rows("h2") == first["rows"]["h2"]
    assert h2.exec(f"base64 {key}").stdout == key_before
    assert h2.exec(f"cat {yml}").stdout == yml_before
    pulled = _skopeo(h2, fleet_bed.base, "copy", "--src-tls-verify=false",
                     f"docker://{h2.address}:8080/library/hello:v1",
                     f"dir:{fleet_bed.base / 'pulled'}")
    assert pulled.returncode == 0, pulled.stderr
    assert (fleet_bed.base / "pulled" / "manifest.json").is_file()


def _sealed_site(f: Fleet, identity: bool) -> Path:
    """The fleet's site with backup.encryption (age keys made by age-keygen) and an
    off-host copy on h1, backing up into a folder of its own."""
    keys = f.base / "age"
    if not keys.is_dir():
        if shutil.which("age-keygen") is None:
            unavailable("needs the age tool (Debian package age, see .ci/provision)")
        keys.mkdir(mode=0o700)
        subprocess.run(["age-keygen", "-o", str(keys / "identity.txt")], check=True,
                       capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(keys / "identity.txt")], check=True,
                               capture_output=True, text=True).stdout.strip()
    text = f.config.read_text().replace(f"  dir: {f.base}/backups\n", f"""\
  dir: {f.base}/sealed
  encryption: {{recipient: {recipient}{f", identity_file: {keys}/identity.txt"
                                          if identity else ""}}}
  remote: {{host: h1, path: {SEALED_REMOTE}, key_file: {f.bed.client_key}}}
""")
    config = f.base / ("sealed.yml" if identity else "sealed-no-identity.yml")
    config.write_text(text)
    return config


SEALED_REMOTE = "/var/backups/harbor-sealed"


def test_controller_copies_are_sealed_and_verify_restore_and_push_from_sealed(
        fleet_bed: Fleet, first: dict) -> None:
    """backup.encryption set: the controller's copy of h3 is age-encrypted from its first
    byte (no plain copy ever on its disk), verified, restored and pushed as it is."""
    f, h3 = fleet_bed, fleet_bed.hosts["h3"]
    probe = os.urandom(1 << 16)  # zstd stores random bytes as they are: findable if plain
    h3.exec("cat > /data/secret/keys/probe", input=probe)
    sealed = _sealed_site(f, identity=True)
    rows = f.rows("h3")
    made = f.harborctl("backup", "create", "--host", "h3", "-o", "json", config=sealed)
    assert made.returncode == 0, made.stderr
    path = Path(json.loads(made.stdout)["path"])
    assert path.name.endswith(".hbk.age") and path.parent == f.base / "sealed" / "h3"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        path.name, path.name + ".pushed.json"]  # no plain copy, no spool, no partial
    data = path.read_bytes()
    assert probe[1000:1064] not in data and data.startswith(b"age-encryption.org/v1\n")
    # pushed as it is: the off-host copy is the same sealed file, never sealed twice
    remote = f.hosts["h1"].root_path / SEALED_REMOTE.lstrip("/") / path.name
    assert remote.read_bytes() == data
    # without the identity: listed, but verify and restore refuse clearly
    blind = _sealed_site(f, identity=False)
    listed = f.harborctl("backup", "list", "--host", "h3", "-o", "json", config=blind)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["encrypted"]
    for args in (["verify"], ["restore", path.name, "--yes"]):
        res = f.harborctl("backup", *args, "--host", "h3", config=blind)
        assert res.returncode == 8 and "no identity can decrypt it" in res.stderr, res.stderr
    # with it: verify drills, restore brings the rows and the files back
    checked = f.harborctl("backup", "verify", "--host", "h3", "-o", "json", config=sealed)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["restore_ok"]
    f.sql("h3", "DELETE FROM audit_log; DELETE FROM artifact;")
    h3.exec("head -c 100 /dev/urandom > /data/secret/keys/probe")
    back = f.harborctl("backup", "restore", "--host", "h3", "--latest", "--yes",
                       config=sealed)
    assert back.returncode == 0, back.stderr
    assert f.rows("h3") == rows
    assert (h3.root_path / "data/secret/keys/probe").read_bytes() == probe
    backups = [p for p in path.parent.iterdir() if ".json" not in p.name]
    assert len(backups) == 2 and all(p.name.endswith(".hbk.age") for p in backups)  # +safety
    h3.exec("rm -f /data/secret/keys/probe")


def _kill_session_sshd(host: Host) -> int:
    """Kill the per-connection sshd processes (children of the host's main sshd)."""
    ps = host.exec("ps -eo pid=,ppid=,comm=").stdout.split("\n")
    procs = [line.split() for line in ps if line.strip()]
    sshd = {p[0]: p[1] for p in procs if len(p) == 3 and p[2] == "sshd"}
    sessions = [pid for pid, ppid in sshd.items() if ppid in sshd]
    if sessions:
        host.exec(f"kill -9 {' '.join(sessions)}", check=False)
    return len(sessions)


@pytest.mark.parametrize("phase", ["connected", "dumping", "mid-dump", "files"] * 3)
# connected: before the snapshot session; dumping: snapshot held, pg_dump starting;
# mid-dump: while the dump streams; files: the dump is in, SFTP starts.
def test_ssh_drop_mid_backup_lists_nothing_partial(fleet_bed: Fleet, first: dict,
                                                   phase: str) -> None:
    site, entry = fleet_bed.site, fleet_bed.site.hosts[0]
    host = fleet_bed.hosts[entry.name]
    backups = fleet.backup_dir(site, entry)
    # bounded: a mid-dump kill comes a random moment after the dump began; on a fast
    # machine the backup may finish first, and then it is simply tried again
    for _ in range(5):
        before = [e.name for e in list_backups(backups)]
        killer = _SessionKiller(host, phase)
        try:
            fleet.create_on_host(site, entry, progress=killer.progress)
        except HarborctlError as exc:
            error: HarborctlError | None = exc
        else:
            error = None
        killer.join()
        if error is not None:
            break
        assert phase == "mid-dump", "the session was killed, yet the backup succeeded"
    assert error is not None, "no kill landed while a backup ran, in 5 tries"
    assert killer.killed and killer.killed[0] >= 1
    assert "h1" in str(error), error
    assert [e.name for e in list_backups(backups)] == before
    assert not list(backups.glob("*.partial"))


class _SessionKiller:
    """A backup's progress callback that kills the SSH session at one phase; for mid-dump
    from a thread, a random moment after the dump began (joined before anything is read)."""

    TRIGGER = {"connected": "connected", "dumping": "dumping", "mid-dump": "dumping",
               "files": "host files"}

    def __init__(self, host: Host, phase: str) -> None:
        self.host, self.phase = host, phase
        self.killed: list[int] = []
        self._timer: threading.Timer | None = None

    def _kill(self) -> None:
        self.killed.append(_kill_session_sshd(self.host))

    def progress(self, msg: str) -> None:
        if self.TRIGGER[self.phase] not in msg or self.killed or self._timer:
            return
        if self.phase == "mid-dump":
            self._timer = threading.Timer(random.uniform(0.1, 0.3), self._kill)
            self._timer.start()
        else:
            self._kill()

    def join(self) -> None:
        if self._timer is not None:
            self._timer.join(timeout=60)


def test_next_run_succeeds_and_earlier_backups_still_verify(fleet_bed: Fleet,
                                                            first: dict) -> None:
    res = fleet_bed.harborctl("backup", "create", "--host", "h1", "-o", "json")
    assert res.returncode == 0, res.stderr
    for e in list_backups(fleet.backup_dir(fleet_bed.site, fleet_bed.site.hosts[0])):
        checked = fleet_bed.harborctl("backup", "verify", e.name, "--host", "h1", "--no-drill")
        assert checked.returncode == 0, checked.stderr


def _host_lock_free(host: Host) -> bool:
    return host.exec(f"flock -n {HOST_LOCK} true", check=False).returncode == 0


def test_a_job_holding_the_hosts_own_lock_refuses_the_backup_until_it_ends(
        fleet_bed: Fleet, first: dict) -> None:
    site, entry = fleet_bed.site, fleet_bed.site.hosts[0]
    host = fleet_bed.hosts[entry.name]
    backups = fleet.backup_dir(site, entry)
    before = [e.name for e in list_backups(backups)]
    # A nightly `harborctl backup create` ON h1, as its job lock holds the host's lock:
    # an flock and the holder line, for as long as it runs.
    started = host.exec(
        f"flock {HOST_LOCK} sh -c 'echo \"pid=$$ job=backup create since=$(date +%s)\" "
        f"> {HOST_LOCK}; exec sleep 300' </dev/null >/dev/null 2>&1 & echo $!")
    holder = started.stdout.strip()
    try:
        for _ in range(100):  # bounded: the background flock takes the lock at once
            if not _host_lock_free(host) and "job=" in host.exec(f"cat {HOST_LOCK}").stdout:
                break
            host.exec("sleep 0.1")
        else:
            raise AssertionError("the holder never took the host's lock")
        busy = fleet_bed.harborctl("backup", "create", "--host", "h1")
        assert busy.returncode == LockHeld.exit_code, (busy.returncode, busy.stderr)
        assert "holds the lock on h1 (pid=" in busy.stderr, busy.stderr
        assert "job=backup create" in busy.stderr, busy.stderr
        # A restore (the job that stops Harbor) is refused the same way, before any change.
        restore = fleet_bed.harborctl("backup", "restore", "--host", "h1", "--latest", "--yes")
        assert restore.returncode == LockHeld.exit_code, (restore.returncode, restore.stderr)
        assert "holds the lock on h1 (pid=" in restore.stderr, restore.stderr
        assert [e.name for e in list_backups(backups)] == before
        assert not list(backups.glob("*.partial"))
    finally:
        host.exec(f"pkill -9 -P {holder}; kill -9 {holder}", check=False)
    for _ in range(100):  # bounded: the kernel drops the lock with its holder
        if _host_lock_free(host):
            break
        host.exec("sleep 0.1")
    # Held for the whole backup (seen mid-dump), released after it.
    seen: list[str] = []

    def look(msg: str) -> None:
        if "dumping" in msg and not seen:
            seen.append("free" if _host_lock_free(host) else host.exec(
                f"cat {HOST_LOCK}").stdout.strip())

    result = fleet.create_on_host(site, entry, progress=look)
    assert result.path.exists()
    assert seen and "job=backup create controller=" in seen[0], seen
    assert _host_lock_free(host)
    # The exception path: refused by the controller's own lock after the host's was
    # taken, the backup leaves the host's lock free.
    with job_lock(host_lock(entry), job="backup prune"), pytest.raises(LockHeld):
        fleet.create_on_host(site, entry)
    assert _host_lock_free(host)


def _pids(host: Host, name: str) -> list[str]:
    return host.exec(f"pgrep -x {name}", check=False).stdout.split()


def test_a_drill_in_the_hosts_image_holds_its_lock_until_it_ends(fleet_bed: Fleet,
                                                                 first: dict) -> None:
    """`verify --host h1` drills in h1's own harbor-db image (its PostgreSQL major is not on
    the controller) and holds h1's lock while it runs. The drill's pg_restore is paused
    (SIGSTOP) so it surely still runs while a second backup and an upgrade's lock (what a
    second controller's `upgrade apply` takes) are refused with exit 7 naming the drill;
    once the drill ended, both go."""
    entry = fleet_bed.site.hosts[0]
    host = fleet_bed.hosts[entry.name]
    env = {**os.environ, LOCK_ENV: str(fleet_bed.base / "harborctl.lock")}
    verify = subprocess.Popen(
        [sys.executable, "-m", "harbor_ops.cli.main", "backup", "verify", "--host", "h1",
         "-o", "json", "-c", str(fleet_bed.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    paused: list[str] = []
    try:
        for _ in range(1200):  # bounded (about 2 min): the drill's restore begins
            paused = _pids(host, "pg_restore")
            if paused or verify.poll() is not None:
                break
            time.sleep(0.1)
        assert paused, f"no drill ran on h1: {verify.communicate()}"
        host.exec(f"kill -STOP {' '.join(paused)}")
        assert "job=backup verify controller=" in host.exec(f"cat {HOST_LOCK}").stdout
        refused: dict[str, str] = {}

        def upgrade_lock() -> None:  # beside the second backup: their waits overlap
            try:
                with joblock.hold_on_host(entry, job="upgrade apply",
                                          ssh_config=fleet_bed.bed.ssh_config_path):
                    refused["upgrade"] = "taken"
            except LockHeld as exc:
                refused["upgrade"] = exc.message

        other = threading.Thread(target=upgrade_lock)
        other.start()
        busy = fleet_bed.harborctl("backup", "create", "--host", "h1")
        other.join(timeout=120)
        assert busy.returncode == LockHeld.exit_code, (busy.returncode, busy.stderr)
        assert "holds the lock on h1 (pid=" in busy.stderr, busy.stderr
        assert "job=backup verify" in busy.stderr, busy.stderr
        assert "holds the lock on h1 (pid=" in refused["upgrade"], refused
        assert "job=backup verify" in refused["upgrade"], refused
    finally:
        if paused:
            host.exec(f"kill -CONT {' '.join(paused)}", check=False)
        out, err = verify.communicate(timeout=600)
    assert verify.returncode == 0, err
    assert json.loads(out)["restore_ok"] is True
    assert _host_lock_free(host)
    with joblock.hold_on_host(entry, job="upgrade apply",
                              ssh_config=fleet_bed.bed.ssh_config_path):
        assert "job=upgrade apply" in host.exec(f"cat {HOST_LOCK}").stdout
    again = fleet_bed.harborctl("backup", "create", "--host", "h1")
    assert again.returncode == 0, again.stderr


def _drill_containers(host: Host) -> list[str]:
    """The host's containers (running or not) of a restore drill in its harbor-db image."""
    out = host.exec("docker ps -a --no-trunc --format '{{.ID}} {{.Command}}'").stdout
    return [line.split()[0] for line in out.splitlines() if "pg_restore" in line]


def test_a_drill_in_the_hosts_image_killed_with_minus_9_leaves_nothing_there(
        fleet_bed: Fleet, first: dict) -> None:
    """harborctl killed with -9 while `verify --host h1` restores in h1's harbor-db image:
    the SSH connection drops with it, the container's restore reads the end of its input and
    fails, and the container (``--rm``) goes with its scratch volume; h1's lock is free."""
    host = fleet_bed.hosts["h1"]
    assert _drill_containers(host) == []
    volumes = host.exec("docker volume ls -q").stdout.split()
    env = {**os.environ, LOCK_ENV: str(fleet_bed.base / "harborctl.lock")}
    verify = subprocess.Popen(
        [sys.executable, "-m", "harbor_ops.cli.main", "backup", "verify", "--host", "h1",
         "-o", "json", "-c", str(fleet_bed.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(1200):  # bounded (about 2 min): the drill's restore begins
            if _pids(host, "pg_restore") or verify.poll() is not None:
                break
            time.sleep(0.1)
        assert _pids(host, "pg_restore"), f"no drill ran on h1: {verify.communicate()}"
        assert _drill_containers(host), "the drill runs in no container of harbor-db's image"
        verify.kill()  # no finally, no goodbye to sshd: only the kernel closes the socket
        verify.wait(timeout=30)
        left = _drill_containers(host)
        for _ in range(600):  # bounded (about 60 s)
            if not left and not _pids(host, "pg_restore"):
                break
            time.sleep(0.1)
            left = _drill_containers(host)
        assert left == [], "the killed drill's container stayed on h1"
        assert host.exec("docker volume ls -q").stdout.split() == volumes
        assert _host_lock_free(host)
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait(timeout=30)
        for container in _drill_containers(host):
            host.exec(f"docker rm -f -v {container}", check=False)
    again = fleet_bed.harborctl("backup", "verify", "--host", "h1", "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["restore_ok"] is True


def test_agent_backs_up_the_others_when_one_host_is_unreachable(
        fleet_bed: Fleet, first: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    site, bed = fleet_bed.site, fleet_bed.bed
    monkeypatch.setenv(BACKUP_RETRY_ENV, "0.2")
    # The bed's ssh config with a short connect timeout for h3 only: each of the agent's
    # three tries on the host whose link is down fails in 2 s instead of the bed's 10 (the
    # same failure); the reachable hosts keep the bed's timeouts on a loaded machine.
    impatient = fleet_bed.base / "ssh_config.impatient"
    impatient.write_text("Host h3\n  ConnectTimeout 2\n\n" + bed.ssh_config_path.read_text())
    monkeypatch.setenv("HARBORCTL_SSH_CONFIG", str(impatient))
    before = {e.name: {b.name for b in list_backups(fleet.backup_dir(site, e))}
              for e in site.hosts}
    veth = bed.veth(fleet_bed.hosts["h3"])
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        runner = agent_loop.Agent(site)
        rec = runner.run_job("backup")
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    assert rec.result == "failed" and "h3" in (rec.error or "")
    for e in site.hosts:  # (the run also prunes: count what is new, not how many)
        new = {b.name for b in list_backups(fleet.backup_dir(site, e))} - before[e.name]
        assert len(new) == (0 if e.name == "h3" else 1), (e.name, new)
    status = json.loads(site.agent.status_file.read_text())
    assert {h: status["hosts"][h]["backup"]["result"] for h in NAMES} == {
        "h1": "ok", "h2": "ok", "h3": "failed"}
    assert site.agent.metrics_dir is not None
    prom = (site.agent.metrics_dir / "harborctl.prom").read_text()
    assert 'harborctl_host_job_success{job="backup",host="h3"} 0' in prom
    assert 'harborctl_host_job_success{job="backup",host="h1"} 1' in prom
