"""Test hosts: each a network namespace with its own root filesystem, sshd and (optionally) dockerd.

Why this design (test-environment.md §4, design B): playbooks must write real paths (/opt/harbor,
/data, /etc/logrotate.d) and start real daemons on several machines without changing the CI
machine. Each host is:

* a network namespace on the bed's bridge (:mod:`tests.bed.network`): bed ``n`` =
  ``TestBed(network=n)``, default 0, owns bridge ``hctl<n>`` and 10.200.<n>.0/24; host ``i``
  is ``hctl<n>-<name>`` at 10.200.<n>.(10+i), so two beds can be up at once;
* an overlay root over the cached golden root, readable from the controller at
  ``Host.root_path``, and a Docker data directory beside it (:mod:`tests.bed.hostfs`);
* its own UTS, PID and mount namespaces, ``pivot_root``ed into its root, so ``docker exec``
  on the host enters the container and never this machine; ``tini`` is PID 1 and runs
  ``sshd -D`` after ``/etc/init.d/docker start`` (:mod:`tests.bed.hostinit`);
* dockerd (optional) with ``/etc/docker/daemon.json`` off iptables and docker0, compose networks
  from a per-host pool 10.200.(16*(i+1)).0/20. Published ports are served by docker-proxy on
  the host's address. ``service docker restart`` works inside the host.

API::

    bed = TestBed.allocate(base_dir)              # first free network n; or TestBed(dir, n)
    hosts = bed.up(["h1", "h2"], docker=True)     # -> list[Host]; waits for sshd (and dockerd)
    bed.hosts["h1"] -> Host(name, address, root_path, ssh_config, key)
    host.exec("cmd ...") -> CompletedProcess[str]  # runs inside the host via nsenter, no ssh
    host.ssh_argv("cmd") -> ["ssh", "-F", ssh_config, "h1", "cmd"]
    bed.reset("h1")                               # drop h1's writable layer and reboot it
    bed.snapshot("h1", "installed")               # keep h1's layers (stops dockerd, reboots h1)
    bed.restore("h1", "installed")                # h1 exactly as at the snapshot, in seconds
    bed.inventory_path / bed.inventory_yaml_path / bed.ssh_config_path / bed.known_hosts_path
    bed.down()                                    # kill, unmount, delete all we created
    TestBed.down_recorded()                       # same for every recorded bed (after a crash)

Snapshots are for fault tests that start from an installed host: ``snapshot`` stops dockerd as
a shutdown would (its containers stop; those with a restart policy, all of Harbor's, start
again with the next dockerd), halts the host, copies its overlay upper layer and Docker data
directory, and boots it again; ``restore`` halts the host, brings the layers back (copying
only what changed since, so an installed Harbor host is back in a few seconds) and boots.
Anything written after the snapshot is gone, and the containers come back as after a reboot.
Snapshots live in ``<bed>/snapshots/<host>/<label>/`` and go with ``down``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.bed import _state, hostinit
from tests.bed._run import BedError, run
from tests.bed.golden import golden_root
from tests.bed.hostfs import HostFs
from tests.bed.inventory import write_client_files
from tests.bed.network import NETWORKS, BedNetwork

__all__ = ["MAX_HOSTS", "NETWORKS", "Host", "TestBed", "docker_pool", "record_name"]

MAX_HOSTS = 14  # per-host docker pools 10.200.16.0/20 .. 10.200.224.0/20
# How long a booting host may take until sshd and its dockerd answer: waits end as soon as
# they do; the bound only needs headroom for several hosts booting on a loaded machine.
READY_TIMEOUT = 180
SNAPSHOT_LABEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")


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
        pid = hostinit.init_pid(self.netns)
        if pid is None:
            raise BedError(f"host {self.name} is not running")
        return pid

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
        self.net = BedNetwork(network)
        self.network = network
        self.bridge = self.net.bridge
        self.subnet = self.net.subnet
        self.gateway = self.net.gateway
        self.base_dir = Path(base_dir).resolve()
        self.ssh_dir = self.base_dir / "ssh"
        self.ssh_config_path = self.ssh_dir / "ssh_config"
        self.known_hosts_path = self.ssh_dir / "known_hosts"
        self.client_key = self.ssh_dir / "id_ed25519"
        self.host_key = self.ssh_dir / "ssh_host_ed25519_key"
        self.inventory_path = self.base_dir / "inventory.ini"
        self.inventory_yaml_path = self.base_dir / "inventory.yml"
        self.snapshots_dir = self.base_dir / "snapshots"
        self.record_path = _state.state_dir() / record_name(network)
        self.hosts: dict[str, Host] = {}
        self._init: dict[str, subprocess.Popen[bytes]] = {}

    # ---- lifecycle ------------------------------------------------------------------------
    def up(
        self, names: list[str], docker: bool = True, timeout: float = READY_TIMEOUT
    ) -> list[Host]:
        """Create and boot the hosts ``names``; returns them once sshd (and dockerd) answer."""
        _check_names(names)
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
            ours = bool(other and other.get("bridge_created"))
            self.net.create_bridge(ours=ours, save=self._save)
            for index, name in enumerate(names):
                self.hosts[name] = self._host(name, self.net.address(index), index, docker)
            self._save()  # recorded before creation: a crash mid-way is still cleaned up
            for host in self.hosts.values():
                self.net.add_host(host.netns, host.index)
                self._create_fs(host, golden)  # /etc/hosts of each lists all of them
            self._write_client_files()
            for host in self.hosts.values():
                self._boot(host)
            for host in self.hosts.values():
                self._wait_ready(host, timeout)
        except BaseException:
            self.down()
            raise
        return list(self.hosts.values())

    def reset(self, name: str, timeout: float = READY_TIMEOUT) -> Host:
        """Throw away the host's writable layer (files, installed state) and boot it again."""
        host = self.hosts[name]
        self._halt(host)
        self._fs(name).remove()
        self._create_fs(host, golden_root())
        self._boot(host)
        self._wait_ready(host, timeout)
        return host

    def snapshot(self, name: str, label: str, timeout: float = READY_TIMEOUT) -> Path:
        """Keep the host's layers as they are now under ``label``; the host runs on after.

        dockerd is stopped first (containers stopped the way a shutdown stops them), so the
        copy is consistent; the host is then booted again, its containers restarted by their
        restart policy. Returns the snapshot directory.
        """
        host = self.hosts[name]
        dest = self._snapshot_dir(name, label)
        if host.docker:
            hostinit.stop_dockerd(host)
        self._halt(host)
        self._fs(name).save_layers(dest)
        self._boot(host)
        self._wait_ready(host, timeout)
        return dest

    def restore(self, name: str, label: str, timeout: float = READY_TIMEOUT) -> Host:
        """Bring the host back to snapshot ``label``: what it wrote since is gone."""
        host = self.hosts[name]
        src = self._snapshot_dir(name, label)
        if not src.is_dir():
            raise BedError(f"host {name} has no snapshot {label!r} (take one with snapshot())")
        self._halt(host)
        self._fs(name).load_layers(src, golden_root())
        self._boot(host)
        self._wait_ready(host, timeout)
        return host

    def down(self) -> None:
        """Remove everything this bed created; safe to call twice or after a partial ``up``."""
        data = _state.load(self.record_path)
        ours = data is not None and data.get("base_dir") == str(self.base_dir)
        if data is not None and ours:
            self.net.adopt(data)
            for name, info in data.get("hosts", {}).items():
                host = self._host(name, info["address"], info["index"], info["docker"])
                self.hosts.setdefault(name, host)
        errors: list[str] = []
        for host in list(self.hosts.values()):
            try:
                self._destroy(host)
            except BedError as exc:
                errors.append(str(exc))
        self.net.remove_bridge()
        self.hosts.clear()
        for path in (self.ssh_dir, self.base_dir / "hosts", self.snapshots_dir):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.inventory_path, self.inventory_yaml_path):
            path.unlink(missing_ok=True)
        if data is None or ours:
            self.record_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only if nothing else is left in it
            self.base_dir.rmdir()
        if errors:
            raise BedError("; ".join(errors))

    # ---- beds of this machine -------------------------------------------------------------
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

    @classmethod
    def down_recorded(cls, include_live: bool = False, base_dir: Path | None = None) -> list[str]:
        """Tear down beds whose owner process is gone (crashed session, ``python -m tests.bed
        up``); beds of running sessions only with ``include_live``; only the bed in
        ``base_dir`` (whoever owns it) when given."""
        done = []
        for network in range(NETWORKS):
            data = _state.load(_state.state_dir() / record_name(network))
            if not data:
                continue
            if base_dir is not None:
                chosen = data.get("base_dir") == str(base_dir.resolve())
            else:
                chosen = include_live or not _state.owner_alive(data)
            if chosen:
                cls(data["base_dir"], network).down()
                done.append(str(data["base_dir"]))
        return done

    @classmethod
    def recorded(cls, network: int = 0) -> dict[str, object] | None:
        return _state.load(_state.state_dir() / record_name(network))

    def host_address(self, index: int) -> str:
        return self.net.address(index)

    def veth(self, host: Host) -> str:
        return self.net.veth(host.index)

    # ---- building blocks -------------------------------------------------------------------
    def _host(self, name: str, address: str, index: int, docker: bool) -> Host:
        root = self._fs(name).merged
        return Host(
            name, address, root, self.ssh_config_path, self.client_key, index, docker, self.network
        )

    def _fs(self, name: str) -> HostFs:
        return HostFs(self.base_dir / "hosts" / name)

    def _snapshot_dir(self, name: str, label: str) -> Path:
        if not SNAPSHOT_LABEL.fullmatch(label):
            raise BedError(f"invalid snapshot label {label!r}: use a-z, 0-9, '.', '_', '-'")
        return self.snapshots_dir / name / label

    def _save(self) -> None:
        _state.save(
            self.record_path,
            {
                "owner": _state.owner(),
                "base_dir": str(self.base_dir),
                **self.net.record(),
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
                comment = "harborctl-testbed"
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])

    def _create_fs(self, host: Host, golden: Path) -> None:
        fs = self._fs(host.name)
        fs.mount(golden)
        fs.write_identity(
            name=host.name,
            hosts_lines=[f"{h.address} {h.name}" for h in self.hosts.values()],
            authorized_key=Path(str(self.client_key) + ".pub").read_text(),
            host_key=self.host_key,
        )
        fs.write_daemon_json(pool=docker_pool(host.index), cgroup_parent=f"/{host.netns}")

    def _boot(self, host: Host) -> None:
        fs = self._fs(host.name)
        self._init[host.name] = hostinit.boot(host, fs.merged, fs.docker, fs.log / "init.log")

    def _wait_ready(self, host: Host, timeout: float) -> None:
        hostinit.wait_ready(host, self._init.get(host.name), timeout, lambda: self._log(host))

    def _log(self, host: Host) -> str:
        """The host's boot output, plus dockerd's log from inside it, for failure messages."""
        fs = self._fs(host.name)
        text = ""
        for path in (fs.log / "init.log", fs.merged / "var/log/docker.log"):
            with contextlib.suppress(FileNotFoundError):
                text += f"[{path.name}]\n" + path.read_text(errors="replace")[-3000:]
        return text

    def _halt(self, host: Host) -> None:
        hostinit.halt(host, self._init.pop(host.name, None))

    def _destroy(self, host: Host) -> None:
        self._halt(host)
        self._fs(host.name).remove()
        self.net.remove_host(host.netns, host.index)

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
    if len(names) > MAX_HOSTS:
        raise BedError(f"at most {MAX_HOSTS} hosts, got {len(names)}")
    for name in names:
        if not name.replace("-", "").isalnum() or len(name) > 20 or not name[0].isalpha():
            raise BedError(f"invalid host name {name!r}: use letters, digits, '-' (<= 20)")
