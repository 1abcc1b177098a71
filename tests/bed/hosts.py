"""Test hosts: each a network namespace with its own root filesystem, sshd and (optionally) dockerd.

Why this design (test-environment.md §4, design B): playbooks must write real paths (/opt/harbor,
/data, /etc/logrotate.d) and start real daemons on several machines without changing the CI
machine. Each host is:

* netns ``hctl<n>-<name>`` with ``eth0`` = 10.200.<n>.(10+i)/24, a veth ``hctl<n>v<i>`` to bridge
  ``hctl<n>`` (10.200.<n>.1/24, root namespace); n = ``TestBed(network=n)``, default 0, so
  two beds can be up at once. No default route: hosts reach only their /24.
* an overlay root (lower = golden rootfs, upper/work per host) mounted in the root namespace, so
  the controller can read and assert on ``Host.root_path``;
* its own UTS, PID and mount namespaces; the mount namespace is ``pivot_root``ed (not chrooted)
  into the overlay, so its root IS the host's root and whatever joins it later (``docker exec``
  into a container of the host, ``nsenter``) lands inside the host, never on this machine;
  ``tini`` is PID 1 and runs ``sshd -D`` (and, with ``docker=True``, starts
  ``/etc/init.d/docker`` first);
* dockerd (optional): ``/var/lib/docker`` is a bind mount of a real directory of the controller
  (overlay2 cannot sit on overlayfs), ``/etc/docker/daemon.json`` keeps it off iptables and gives
  compose networks a per-host pool 10.200.(16*(i+1)).0/20. Published ports are served by
  docker-proxy on the host's address. ``service docker restart`` works inside the host.

API::

    bed = TestBed.allocate(base_dir)              # first free network n; or TestBed(dir, n)
    hosts = bed.up(["h1", "h2"], docker=True)     # -> list[Host]; waits for sshd (and dockerd)
    bed.hosts["h1"] -> Host(name, address, root_path, ssh_config, key)
    host.exec("cmd ...") -> CompletedProcess[str]  # runs inside the host via nsenter, no ssh
    host.ssh_argv("cmd") -> ["ssh", "-F", ssh_config, "h1", "cmd"]
    bed.reset("h1")                               # drop h1's writable layer and reboot it
    bed.inventory_path / bed.inventory_yaml_path / bed.ssh_config_path / bed.known_hosts_path
    bed.down()                                    # kill, unmount, delete all we created
    TestBed.down_recorded()                       # same for every recorded bed (after a crash)
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bed import _state
from tests.bed._run import BedError, run, unmount_all_under, wait_for
from tests.bed.dockerd import remove_cgroups
from tests.bed.golden import golden_root
from tests.bed.inventory import write_client_files, write_file

MAX_HOSTS = 14  # per-host docker pools 10.200.16.0/20 .. 10.200.224.0/20
NETWORKS = 16  # bed network n: bridge hctl<n>, 10.200.<n>.0/24 (pools start at 10.200.16.0)


def record_name(network: int) -> str:
    return f"testbed-hctl{network}.json"


def docker_pool(index: int) -> str:
    return f"10.200.{16 * (index + 1)}.0/20"


@dataclass(frozen=True)
class Host:
    """A running test host as Ansible and the tests see it."""

    name: str
    address: str
    root_path: Path  # the host's / as seen from the controller (overlay merged dir)
    ssh_config: Path
    key: Path  # the client's private key (root@host)
    index: int
    docker: bool
    network: int = 0

    @property
    def netns(self) -> str:
        return f"hctl{self.network}-{self.name}"

    def init_pid(self) -> int:
        """PID (in our namespace) of the host's PID 1 (tini)."""
        for pid in _netns_pids(self.netns):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = [ln for ln in status.splitlines() if ln.startswith("NSpid:")]
            if nspid and nspid[0].split()[-1] == "1":
                return pid
        raise BedError(f"host {self.name} is not running")

    def exec(
        self, command: str, *, check: bool = True, input: bytes | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``sh -c command`` inside the host (its namespaces and root), without ssh."""
        return run(
            [
                "nsenter",
                "-t",
                str(self.init_pid()),
                "--mount",
                "--uts",
                "--net",
                "--pid",
                "--root",
                "--wd=/",
                "/usr/bin/env",
                "-i",
                "HOME=/root",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "/bin/sh",
                "-c",
                command,
            ],
            check=check,
            input=input,
            timeout=timeout,
        )

    def ssh_argv(self, command: str | None = None) -> list[str]:
        argv = ["ssh", "-F", str(self.ssh_config), self.name]
        return argv + ([command] if command is not None else [])


class TestBed:
    """The set of test hosts under ``base_dir``; records everything it creates."""

    __test__ = False  # not a pytest test class

    def __init__(self, base_dir: str | os.PathLike[str], network: int = 0) -> None:
        if not 0 <= network < NETWORKS:
            raise BedError(f"network must be 0..{NETWORKS - 1}, got {network}")
        self.network = network
        self.bridge = f"hctl{network}"
        self.subnet = ipaddress.ip_network(f"10.200.{network}.0/24")
        self.gateway = f"10.200.{network}.1"
        self.base_dir = Path(base_dir).resolve()
        self.ssh_dir = self.base_dir / "ssh"
        self.ssh_config_path = self.ssh_dir / "ssh_config"
        self.known_hosts_path = self.ssh_dir / "known_hosts"
        self.client_key = self.ssh_dir / "id_ed25519"
        self.host_key = self.ssh_dir / "ssh_host_ed25519_key"
        self.inventory_path = self.base_dir / "inventory.ini"
        self.inventory_yaml_path = self.base_dir / "inventory.yml"
        self.record_path = _state.state_dir() / record_name(network)
        self.hosts: dict[str, Host] = {}
        self._bridge_created = False
        self._init: dict[str, subprocess.Popen[bytes]] = {}
        self._run_netns_premounted = True  # unknown until we create the bridge: leave it be
        self._run_netns_existed = True

    # ---- public -------------------------------------------------------------------------
    def up(self, names: list[str], docker: bool = True, timeout: float = 60) -> list[Host]:
        """Create and boot the hosts ``names``; returns them once sshd (and dockerd) answer."""
        _check_names(names)
        if len(names) > MAX_HOSTS:
            raise BedError(f"at most {MAX_HOSTS} hosts, got {len(names)}")
        golden = golden_root()
        other = _state.load(self.record_path)
        if other and other.get("base_dir") != str(self.base_dir):
            raise BedError(
                f"another test bed is up on {self.bridge} ({other.get('base_dir')}); "
                "use another network= or run `python -m tests.bed down` first"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._keys()
        try:
            self._bridge()
            for index, name in enumerate(names):
                host = Host(
                    name,
                    self.host_address(index),
                    self._host_dir(name) / "merged",
                    self.ssh_config_path,
                    self.client_key,
                    index,
                    docker,
                    self.network,
                )
                self.hosts[name] = host
            self._save()  # recorded before creation: a crash mid-way is still cleaned up
            for host in self.hosts.values():
                self._create(host, golden)  # /etc/hosts of each lists all of them
            self._write_client_files()
            for host in self.hosts.values():
                self._boot(host)
            for host in self.hosts.values():
                self._wait_ready(host, timeout)
        except BaseException:
            self.down()
            raise
        return list(self.hosts.values())

    def reset(self, name: str, timeout: float = 60) -> Host:
        """Throw away the host's writable layer (files, installed state) and boot it again."""
        host = self.hosts[name]
        self._halt(host)
        unmount_all_under(str(self._host_dir(name)))
        shutil.rmtree(self._host_dir(name))
        self._create_fs(host, golden_root())
        self._boot(host)
        self._wait_ready(host, timeout)
        return host

    def down(self) -> None:
        """Remove everything this bed created; safe to call twice or after a partial ``up``."""
        data = _state.load(self.record_path)
        if data and data.get("base_dir") == str(self.base_dir):
            self._bridge_created = self._bridge_created or bool(data.get("bridge_created"))
            self._run_netns_premounted = bool(data.get("run_netns_premounted", True))
            self._run_netns_existed = bool(data.get("run_netns_existed", True))
            for name, info in data.get("hosts", {}).items():
                self.hosts.setdefault(
                    name,
                    Host(
                        name,
                        info["address"],
                        self._host_dir(name) / "merged",
                        self.ssh_config_path,
                        self.client_key,
                        info["index"],
                        info["docker"],
                        self.network,
                    ),
                )
        errors: list[str] = []
        for host in list(self.hosts.values()):
            try:
                self._destroy(host)
            except BedError as exc:
                errors.append(str(exc))
        if self._bridge_created and Path(f"/sys/class/net/{self.bridge}").exists():
            run(["ip", "link", "del", self.bridge], check=False)
        self._bridge_created = False
        netns_dir = Path("/run/netns")
        if netns_dir.is_dir() and not any(netns_dir.iterdir()):
            if not self._run_netns_premounted and _is_mountpoint(str(netns_dir)):
                run(["umount", str(netns_dir)], check=False)  # `ip netns add` mounted it
            if not self._run_netns_existed:
                _state.rmdir_empty([str(netns_dir)])
        self.hosts.clear()
        for path in (self.ssh_dir, self.base_dir / "hosts"):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.inventory_path, self.inventory_yaml_path):
            path.unlink(missing_ok=True)
        if data is None or data.get("base_dir") == str(self.base_dir):
            self.record_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only if nothing else is left in it
            self.base_dir.rmdir()
        if errors:
            raise BedError("; ".join(errors))

    @classmethod
    def allocate(cls, base_dir: str | os.PathLike[str]) -> TestBed:
        """Claim the first free bed network, so parallel sessions never share a bridge."""
        state = _state.state_dir()
        with open(state / "allocate.lock", "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for network in range(NETWORKS):
                if (state / record_name(network)).exists():
                    continue
                if Path(f"/sys/class/net/hctl{network}").exists():
                    continue
                bed = cls(base_dir, network)
                bed._save()  # the claim: other allocators now skip this network
                return bed
        raise BedError(
            f"all {NETWORKS} test bed networks are in use; "
            "`python -m tests.bed down` clears crashed ones"
        )

    def host_address(self, index: int) -> str:
        return f"10.200.{self.network}.{10 + index}"

    def veth(self, host: Host) -> str:
        return f"{self.bridge}v{host.index}"

    @classmethod
    def down_recorded(cls, include_live: bool = False) -> list[str]:
        """Tear down beds whose owner process is gone (crashed session, ``python -m tests.bed
        up``); beds of running sessions only with ``include_live``."""
        done = []
        for network in range(NETWORKS):
            data = _state.load(_state.state_dir() / record_name(network))
            if data and (include_live or not _state.owner_alive(data)):
                cls(data["base_dir"], network).down()
                done.append(str(data["base_dir"]))
        return done

    @classmethod
    def recorded(cls, network: int = 0) -> dict[str, object] | None:
        return _state.load(_state.state_dir() / record_name(network))

    # ---- building blocks -------------------------------------------------------------------
    def _host_dir(self, name: str) -> Path:
        return self.base_dir / "hosts" / name

    def _save(self) -> None:
        _state.save(
            self.record_path,
            {
                "owner": _state.owner(),
                "base_dir": str(self.base_dir),
                "bridge": self.bridge,
                "bridge_created": self._bridge_created,
                "run_netns_premounted": self._run_netns_premounted,
                "run_netns_existed": self._run_netns_existed,
                "hosts": {
                    h.name: {"address": h.address, "index": h.index, "docker": h.docker}
                    for h in self.hosts.values()
                },
            },
        )

    def _keys(self) -> None:
        self.ssh_dir.mkdir(parents=True, exist_ok=True)
        for key in (self.client_key, self.host_key):
            if not key.exists():
                run(
                    [
                        "ssh-keygen",
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "harborctl-testbed",
                        "-f",
                        str(key),
                    ]
                )

    def _bridge(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            data = _state.load(self.record_path)
            if data and data.get("base_dir") == str(self.base_dir) and data.get("bridge_created"):
                self._bridge_created = True
                return
            raise BedError(f"interface {self.bridge} exists and is not ours; refusing to touch it")
        used = run(["ip", "-4", "-o", "addr", "show"]).stdout
        for line in used.splitlines():
            addr = ipaddress.ip_interface(line.split()[3])
            if addr.network.overlaps(self.subnet):
                raise BedError(f"{self.subnet} is already in use on this machine: {line.strip()}")
        self._run_netns_premounted = _is_mountpoint("/run/netns")
        self._run_netns_existed = os.path.isdir("/run/netns")
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_created = True
        self._save()
        run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def _create(self, host: Host, golden: Path) -> None:
        if host.netns in run(["ip", "netns", "list"]).stdout.split():
            raise BedError(f"network namespace {host.netns} exists already and is not ours")
        veth = self.veth(host)
        run(["ip", "netns", "add", host.netns])
        run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns]
        )
        run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        run(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        self._create_fs(host, golden)

    def _create_fs(self, host: Host, golden: Path) -> None:
        hdir = self._host_dir(host.name)
        for sub in ("upper", "work", "merged", "docker", "log"):
            (hdir / sub).mkdir(parents=True, exist_ok=True)
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={golden},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
                str(hdir / "merged"),
            ]
        )
        root = hdir / "merged"
        (root / "var/lib/docker").mkdir(parents=True, exist_ok=True)
        write_file(root / "etc/hostname", host.name + "\n")
        hosts_lines = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}", "::1 localhost"]
        hosts_lines += [f"{h.address} {h.name}" for h in self.hosts.values()]
        write_file(root / "etc/hosts", "\n".join(hosts_lines) + "\n")
        write_file(
            root / "root/.ssh/authorized_keys",
            Path(str(self.client_key) + ".pub").read_text(),
            0o600,
        )
        (root / "root/.ssh").chmod(0o700)
        write_file(root / "etc/ssh/ssh_host_ed25519_key", self.host_key.read_text(), 0o600)
        write_file(
            root / "etc/ssh/ssh_host_ed25519_key.pub", Path(str(self.host_key) + ".pub").read_text()
        )
        write_file(
            root / "etc/docker/daemon.json",
            json.dumps(
                {
                    "bridge": "none",
                    "iptables": False,
                    "ip-forward": False,
                    "ip-masq": False,
                    "storage-driver": "overlay2",
                    "default-address-pools": [{"base": docker_pool(host.index), "size": 24}],
                    "cgroup-parent": f"/{host.netns}",
                },
                indent=2,
            )
            + "\n",
        )

    def _boot(self, host: Host) -> None:
        """Start the host's PID 1 inside fresh UTS/PID/mount namespaces in its netns."""
        hdir = self._host_dir(host.name)
        r = shlex.quote(str(hdir / "merged"))
        inner = "/etc/init.d/docker start >/dev/null 2>&1; " if host.docker else ""
        inner += "exec /usr/sbin/sshd -D -e"
        setup = " && ".join(
            [
                f"hostname {shlex.quote(host.name)}",
                f"mount -t proc proc {r}/proc",
                f"mount --rbind /dev {r}/dev",
                f"mount -t tmpfs -o mode=1777 shm {r}/dev/shm",
                f"mount -t sysfs sysfs {r}/sys",  # sysfs of the host's netns
                f"mount -t tmpfs -o mode=755 cgroup {r}/sys/fs/cgroup",
                f"mount --rbind /sys/fs/cgroup {r}/sys/fs/cgroup",  # dockerd needs the hierarchies
                f"mount -t tmpfs -o mode=755 run {r}/run",
                f"mkdir -p {r}/run/sshd",
                f"mount --bind {shlex.quote(str(hdir / 'docker'))} {r}/var/lib/docker",
                # pivot_root, not chroot: the namespace's root becomes the host's, so what
                # joins it later (`docker exec`, nsenter) lands in the host, not on this machine.
                f"cd {r}",
                "pivot_root . .",
                "umount -l .",
                f"exec /usr/bin/tini -s -- /bin/sh -c {shlex.quote(inner)}",
            ]
        )
        log = open(hdir / "log" / "init.log", "ab")  # noqa: SIM115 - owned by the child
        with log:
            # nsenter (not `ip netns exec`): keep the root /sys so /sys/fs/cgroup can be bound.
            self._init[host.name] = subprocess.Popen(  # noqa: S603 - fixed argv
                [
                    "nsenter",
                    f"--net=/run/netns/{host.netns}",
                    "unshare",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    setup,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, host: Host, timeout: float) -> None:
        launcher = self._init.get(host.name)

        def sshd_up() -> bool:
            if launcher is not None and launcher.poll() is not None:
                raise BedError(f"host {host.name} init exited with {launcher.returncode}")
            return _tcp_open(host.address, 22)

        try:
            wait_for(sshd_up, what=f"sshd on {host.name}", timeout=timeout)
            if host.docker:
                wait_for(
                    lambda: (
                        host.exec("docker version >/dev/null 2>&1", check=False).returncode == 0
                    ),
                    what=f"dockerd on {host.name}",
                    timeout=timeout,
                    interval=0.2,
                )
        except BedError as exc:
            raise BedError(f"{exc}\n--- init log of {host.name}:\n{self._log(host)}") from None

    def _log(self, host: Host) -> str:
        """The host's boot output, plus dockerd's log from inside it, for failure messages."""
        text = ""
        for path in (
            self._host_dir(host.name) / "log" / "init.log",
            self._host_dir(host.name) / "merged" / "var/log/docker.log",
        ):
            with contextlib.suppress(FileNotFoundError):
                text += f"[{path.name}]\n" + path.read_text(errors="replace")[-3000:]
        return text

    def _halt(self, host: Host) -> None:
        """Kill the host's whole PID namespace and whatever ran in its cgroups.

        SIGKILL to the namespace's PID 1 makes the kernel kill every process in it (containers
        included); the launcher then reaps it and exits, so no zombie is left to the real init.
        """
        try:
            init = host.init_pid()
            os.kill(init, signal.SIGKILL)
            # Let the launcher (`unshare --fork`) reap it before anything else is killed.
            wait_for(
                lambda: not Path(f"/proc/{init}").exists(),
                what=f"init of {host.name} to be reaped",
                timeout=20,
            )
        except (BedError, ProcessLookupError):
            pass
        launcher = self._init.pop(host.name, None)
        if launcher is not None:
            try:
                launcher.wait(timeout=20)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait(timeout=20)
        for _ in range(3):
            pids = _netns_pids(host.netns) + _cgroup_pids(host.netns)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_for(_all_exited(pids), what=f"processes of {host.name} to exit", timeout=20)
        remove_cgroups(host.netns)

    def _destroy(self, host: Host) -> None:
        netns_exists = host.netns in run(["ip", "netns", "list"]).stdout.split()
        if netns_exists:
            self._halt(host)
        else:
            remove_cgroups(host.netns)
        unmount_all_under(str(self._host_dir(host.name)))
        if netns_exists:
            run(["ip", "netns", "del", host.netns])
        veth = self.veth(host)
        if Path(f"/sys/class/net/{veth}").exists():
            run(["ip", "link", "del", veth], check=False)
        shutil.rmtree(self._host_dir(host.name), ignore_errors=True)

    def _write_client_files(self) -> None:
        write_client_files(
            list(self.hosts.values()),
            network=self.network,
            host_key=self.host_key,
            client_key=self.client_key,
            known_hosts=self.known_hosts_path,
            ssh_config=self.ssh_config_path,
            inventory_ini=self.inventory_path,
            inventory_yaml=self.inventory_yaml_path,
        )


def _check_names(names: list[str]) -> None:
    if not names or len(set(names)) != len(names):
        raise BedError(f"host names must be unique and non-empty: {names}")
    for name in names:
        if not name.replace("-", "").isalnum() or len(name) > 20 or not name[0].isalpha():
            raise BedError(f"invalid host name {name!r}: use letters, digits, '-' (<= 20)")


def _netns_pids(netns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _all_exited(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(_state.pid_alive(p) for p in pids)


def _cgroup_pids(parent: str) -> list[int]:
    """Processes in the host's container cgroups (containers have their own netns)."""
    top = Path("/sys/fs/cgroup/pids") / parent
    pids: list[int] = []
    if top.is_dir():
        for procs in top.rglob("cgroup.procs"):
            try:
                pids += [int(p) for p in procs.read_text().split()]
            except (FileNotFoundError, OSError):
                continue
    return pids


def _is_mountpoint(path: str) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return any(line.split()[1] == path for line in fh)


def _tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False
