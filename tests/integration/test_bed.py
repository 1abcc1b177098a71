"""The test bed itself: real hosts over real SSH, isolation, reset, dockerd on a host, cleanup.

If these fail, every other integration test is meaningless, so they assert what the other
tests rely on: distinct hosts reachable with Ansible, a working Docker engine on each host
(import/run/compose/published port), and a teardown that leaves the CI machine as it was.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paramiko
import pytest

from tests.bed._state import cmdline, pid_alive
from tests.bed._state import descendants as _descendants
from tests.bed.dockerd import DockerEngine
from tests.bed.fixtures import BED_TOOLS, ENGINE_TOOLS, require, unavailable
from tests.bed.hosts import Host, TestBed

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")

COMPOSE = """\
version: "2.4"
services:
  web:
    image: local/busybox:bed
    command:
      - sh
      - -c
      - mkdir -p /www && echo hello-from-$$HOSTNAME-web > /www/index.html
        && exec httpd -f -p 8080 -h /www
    environment: [HOSTNAME]
    ports: ["18080:8080"]
  probe:
    image: local/busybox:bed
    command: ["sh", "-c", "until wget -qO- http://web:8080/; do sleep 0.2; done; exec sleep 3600"]
"""


def busybox_tar(tmp_path: Path) -> bytes:
    """A minimal image rootfs: busybox with its applet links, /tmp and /etc."""
    if not BUSYBOX.is_file():
        unavailable("busybox-static is not installed (/bin/busybox)")
    root = tmp_path / "bbroot"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    (root / "etc").mkdir()
    (root / "bin/busybox").write_bytes(BUSYBOX.read_bytes())
    (root / "bin/busybox").chmod(0o755)
    applets = ("sh", "httpd", "wget", "sleep", "echo", "mkdir", "cat", "hostname", "head", "ls")
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")
    return subprocess.run(
        ["tar", "-C", str(root), "-c", "."], check=True, capture_output=True
    ).stdout


def ssh(host: Host, command: str, input: bytes | None = None) -> str:
    proc = subprocess.run(host.ssh_argv(command), input=input, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout.decode()


def paramiko_client(host: Host, known_hosts: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        username="root",
        key_filename=str(host.key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def test_four_hosts_have_own_identity_over_paramiko(testbed: TestBed) -> None:
    assert len(testbed.hosts) >= 4
    for host in testbed.hosts.values():
        client = paramiko_client(host, testbed.known_hosts_path)
        try:
            _, out, _ = client.exec_command(
                "hostname; ip -4 -o addr show dev eth0; echo $HOME; ip route"
            )
            lines = out.read().decode()
        finally:
            client.close()
        assert lines.splitlines()[0] == host.name
        assert f"inet {host.address}/24" in lines
        assert "/root" in lines
        assert "default" not in lines  # hosts have no way out of 10.200.0.0/24


def test_ansible_ping_reaches_every_host(testbed: TestBed) -> None:
    ansible = Path(sys.executable).with_name("ansible")
    proc = subprocess.run(
        [str(ansible), "-i", str(testbed.inventory_path), "harbor", "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("SUCCESS") == len(testbed.hosts)


def test_hosts_cannot_see_each_others_files(testbed: TestBed) -> None:
    h1, h2 = testbed.hosts["h1"], testbed.hosts["h2"]
    ssh(h1, "mkdir -p /opt/harbor && echo secret > /opt/harbor/only-on-h1")
    assert (h1.root_path / "opt/harbor/only-on-h1").read_text() == "secret\n"
    assert not (h2.root_path / "opt/harbor/only-on-h1").exists()
    assert "absent" in ssh(h2, "test -e /opt/harbor/only-on-h1 || echo absent")
    assert not Path("/opt/harbor/only-on-h1").exists()  # nor does the controller
    # and each host has its own process table
    assert "sshd" in ssh(h2, "ps -e -o comm=") and "dockerd" in ssh(h2, "ps -e -o comm=")
    assert ssh(h2, "ps -e -o pid= | wc -l").strip() != "0"
    assert ssh(h2, "cat /proc/1/comm").strip() == "tini"
    assert ssh(h2, "getent hosts h1").split()[0] == h1.address


def test_reset_drops_the_writable_layer(testbed: TestBed) -> None:
    h3 = testbed.hosts["h3"]
    ssh(h3, "echo x > /etc/marker && docker network create leftover >/dev/null")
    testbed.reset("h3")
    assert not (h3.root_path / "etc/marker").exists()
    assert "absent" in ssh(h3, "test -e /etc/marker || echo absent")
    assert "leftover" not in ssh(h3, "docker network ls --format '{{.Name}}'")


def test_snapshot_and_restore_bring_an_installed_host_back(
    testbed: TestBed, tmp_path: Path
) -> None:
    """What fault tests start from: a host as it was at the snapshot, containers running."""
    h3 = testbed.hosts["h3"]
    ssh(h3, "docker import - local/busybox:snap >/dev/null", input=busybox_tar(tmp_path))
    ssh(
        h3,
        "docker run -d --name keeper --restart always --network none local/busybox:snap "
        "sh -c 'trap \"exit 0\" TERM; while :; do sleep 1; done' >/dev/null "
        "&& mkdir -p /data && echo before > /data/kept",
    )
    started = time.monotonic()
    testbed.snapshot("h3", "installed")
    snapshot_s = time.monotonic() - started
    assert _running(h3, "keeper")  # the host runs on after a snapshot
    ssh(h3, "echo after > /data/after && docker rm -f keeper >/dev/null")
    ssh(h3, "docker network create after-snapshot >/dev/null")
    for _ in range(2):  # a snapshot serves any number of restores
        started = time.monotonic()
        testbed.restore("h3", "installed")
        restore_s = time.monotonic() - started
        assert not (h3.root_path / "data/after").exists()
        assert "absent" in ssh(h3, "test -e /data/after || echo absent")
        assert ssh(h3, "cat /data/kept") == "before\n"
        assert _running(h3, "keeper")
        assert "after-snapshot" not in ssh(h3, "docker network ls --format '{{.Name}}'")
        ssh(h3, "echo after > /data/after")
    print(f"snapshot {snapshot_s:.1f} s, restore {restore_s:.1f} s")  # shown with -s


def _running(host: Host, container: str) -> bool:
    """Whether ``container`` runs (polled: dockerd restarts it a moment after it starts;
    bounded by 120 s, generous for a loaded machine)."""
    probe = f"docker inspect -f '{{{{.State.Running}}}}' {container} 2>/dev/null"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ssh(host, f"{probe} || true").strip() == "true":
            return True
        time.sleep(0.1)
    return False


def test_fresh_host_fixture_gives_a_clean_h1(testbed: TestBed, fresh_host: Host) -> None:
    assert fresh_host.name == "h1"
    assert not (fresh_host.root_path / "opt/harbor/only-on-h1").exists()


def test_dockerd_on_host_runs_images_and_compose(testbed: TestBed, tmp_path: Path) -> None:
    h2 = testbed.hosts["h2"]
    ssh(h2, "docker import - local/busybox:bed >/dev/null", input=busybox_tar(tmp_path))
    assert (
        ssh(h2, "docker run --rm local/busybox:bed echo ok-from-container").strip()
        == "ok-from-container"
    )
    ssh(h2, f"mkdir -p /opt/proj && cat > /opt/proj/docker-compose.yml <<'EOF'\n{COMPOSE}EOF")
    ssh(h2, "cd /opt/proj && HOSTNAME=$(hostname) docker-compose up -d 2>&1")
    # service DNS on a user-defined network, inside the host
    ssh(
        h2,
        "cd /opt/proj && end=$(( $(date +%s) + 90 )); while [ $(date +%s) -lt $end ]; do "
        "docker logs proj_probe_1 2>&1 | grep -q hello && exit 0; sleep 0.1; done; "
        "docker-compose logs; exit 1",
    )
    # the published port, from the controller, at the host's address
    with urllib.request.urlopen(f"http://{h2.address}:18080/", timeout=10) as response:
        assert response.read().decode().strip() == "hello-from-h2-web"
    # compose networks come from the host's own pool inside 10.200.0.0/16
    subnet = ssh(
        h2, "docker network inspect proj_default --format '{{(index .IPAM.Config 0).Subnet}}'"
    ).strip()
    assert subnet.startswith("10.200.")
    ssh(h2, "cd /opt/proj && docker-compose down 2>&1")


def test_docker_exec_on_a_host_enters_the_container(testbed: TestBed, tmp_path: Path) -> None:
    """``docker exec`` (backup, preflight, restore, upgrade use it) must run in the container,
    not on the controller: the host's mount namespace has the host's root (pivot_root)."""
    h4 = testbed.hosts["h4"]
    marker = tmp_path / "only-on-the-controller"
    marker.write_text("controller\n")
    ssh(h4, "docker import - local/busybox:exec >/dev/null", input=busybox_tar(tmp_path))
    ssh(
        h4,
        "docker rm -f execprobe >/dev/null 2>&1; docker run -d --name execprobe --network none "
        "local/busybox:exec sh -c 'echo in-container > /only-in-container; exec sleep 600' "
        ">/dev/null; end=$(( $(date +%s) + 90 )); while [ $(date +%s) -lt $end ]; do "
        "docker exec execprobe cat /only-in-container >/dev/null 2>&1 && exit 0; sleep 0.1; "
        "done; exit 1",
    )
    try:
        assert ssh(h4, "docker exec execprobe cat /only-in-container") == "in-container\n"
        listing = set(ssh(h4, "docker exec execprobe ls /").split())
        assert listing == {"bin", "dev", "etc", "only-in-container", "proc", "sys", "tmp"}
        assert "absent" in ssh(
            h4, f"docker exec execprobe sh -c 'test -e {marker} || echo absent'"
        )
        root_line = ssh(h4, "docker exec execprobe head -1 /proc/self/mountinfo")
        assert " / / " in root_line and "upperdir=/var/lib/docker/overlay2/" in root_line
        # the host itself: its namespace's root is its own overlay, nothing of this machine
        host_root = ssh(h4, "head -1 /proc/self/mountinfo")
        assert f"upperdir={testbed.base_dir}/hosts/h4/upper" in host_root
        assert "absent" in ssh(h4, f"test -e {marker} || echo absent")
    finally:
        ssh(h4, "docker rm -f execprobe >/dev/null")


def test_controller_engine_imports_saves_and_loads(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    docker_engine.run("import", "-", "local/busybox:ctl", input=busybox_tar(tmp_path))
    assert docker_engine.run("run", "--rm", "local/busybox:ctl", "echo", "hi").stdout == "hi\n"
    archive = tmp_path / "img.tar"
    docker_engine.run("save", "-o", str(archive), "local/busybox:ctl")
    docker_engine.run("rmi", "local/busybox:ctl")
    docker_engine.run("load", "-i", str(archive))
    assert "local/busybox" in docker_engine.run("images", "--format", "{{.Repository}}").stdout


def _mounts() -> str:
    return Path("/proc/self/mounts").read_text()


def _netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_engine_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    require(ENGINE_TOOLS)
    engine = DockerEngine(tmp_path / "engine")
    engine.start()
    engine.run("import", "-", "local/busybox:gone", input=busybox_tar(tmp_path))
    engine.run("run", "-d", "--network", "none", "local/busybox:gone", "sleep", "600")
    pid = engine.pid
    family = [pid, *_descendants(pid)] if pid else []
    engine.stop()
    assert family and not any(pid_alive(p) for p in family)
    assert not [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit()
        and pid_alive(int(p.name))
        and str(engine.exec_root) in " ".join(cmdline(int(p.name)))
    ]
    assert str(tmp_path / "engine") not in _mounts()
    assert str(engine.exec_root) not in _mounts()
    assert not (tmp_path / "engine").exists() and not engine.exec_root.exists()


def test_bed_down_leaves_nothing_behind(tmp_path: Path) -> None:
    """A second bed on its own network (bridge), so the session bed can stay up meanwhile."""
    require(BED_TOOLS)
    base = tmp_path / "bed"
    bed = TestBed.allocate(base)
    try:
        hosts = bed.up(["a1", "a2"], docker=True)
        assert hosts[0].address == f"10.200.{bed.network}.10"
        pids = [h.init_pid() for h in hosts]
        ssh(hosts[0], "docker import - local/busybox:a >/dev/null", input=busybox_tar(tmp_path))
        ssh(hosts[0], "docker run -d local/busybox:a sleep 600 >/dev/null && echo ok >/etc/x")
        assert (hosts[0].root_path / "etc/x").exists()
        bed.snapshot("a2", "kept")  # snapshots live in the bed directory and go with it
    finally:
        # the documented way out for tools outside the suite: one bed, by its directory
        down = subprocess.run(
            [sys.executable, "-m", "tests.bed", "down", "--dir", str(base)],
            capture_output=True,
            text=True,
            timeout=600,  # a hang guard: halting hosts is slow on a loaded machine
            cwd=Path(__file__).resolve().parents[2],
        )
        if down.returncode != 0:
            bed.down()
    assert down.returncode == 0, down.stdout + down.stderr
    assert str(base) in down.stdout
    assert not any(pid_alive(p) for p in pids)
    # other sessions may be running beds meanwhile: look only for what this bed could leave
    assert not [n for n in _netns() if n.startswith(f"hctl{bed.network}-")]
    # exactly its bridge and veths: hctl1 is a prefix of another session's hctl10, hctl11v2 ...
    ours = re.compile(rf"{bed.bridge}(v\d+)?")
    assert not [n for n in os.listdir("/sys/class/net") if ours.fullmatch(n)]
    assert str(base) not in _mounts() and hosts[0].netns not in _mounts()
    assert not base.exists()
    assert TestBed.recorded(network=bed.network) is None
    assert not list(Path("/sys/fs/cgroup/pids").glob(f"hctl{bed.network}-a*"))
