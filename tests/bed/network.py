"""A bed's network: one bridge, and one network namespace with a veth pair per host.

Bed ``n`` owns bridge ``hctl<n>`` (10.200.<n>.1/24, root namespace). Host ``i`` lives in netns
``hctl<n>-<name>`` whose ``eth0`` is 10.200.<n>.(10+i)/24, the peer of veth ``hctl<n>v<i>`` on
the bridge. No default route: hosts reach only their /24. Two beds on different ``n`` never
share an interface, so parallel sessions do not see each other.

Why the bookkeeping of ``/run/netns``: ``ip netns add`` creates and mounts it the first time;
a clean teardown undoes that only when this bed caused it, so it must remember what it found.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bed import _state
from tests.bed._run import BedError, run

NETWORKS = 16  # bed network n: bridge hctl<n>, 10.200.<n>.0/24 (docker pools from 10.200.16.0)
RUN_NETNS = "/run/netns"


class BedNetwork:
    """Bridge ``hctl<n>`` and the hosts' namespaces; remembers what it created."""

    def __init__(self, network: int) -> None:
        if not 0 <= network < NETWORKS:
            raise BedError(f"network must be 0..{NETWORKS - 1}, got {network}")
        self.network = network
        self.bridge = f"hctl{network}"
        self.subnet = ipaddress.ip_network(f"10.200.{network}.0/24")
        self.gateway = f"10.200.{network}.1"
        self.created = False
        self._run_netns_premounted = True  # unknown until we create the bridge: leave it be
        self._run_netns_existed = True

    def address(self, index: int) -> str:
        return f"10.200.{self.network}.{10 + index}"

    def veth(self, index: int) -> str:
        return f"{self.bridge}v{index}"

    def record(self) -> dict[str, Any]:
        """What a crashed session's ``down`` needs to undo exactly what this bed did."""
        return {
            "bridge": self.bridge,
            "bridge_created": self.created,
            "run_netns_premounted": self._run_netns_premounted,
            "run_netns_existed": self._run_netns_existed,
        }

    def adopt(self, record: dict[str, Any]) -> None:
        """Take over the bookkeeping of a recorded bed (ours, from an earlier process)."""
        self.created = self.created or bool(record.get("bridge_created"))
        self._run_netns_premounted = bool(record.get("run_netns_premounted", True))
        self._run_netns_existed = bool(record.get("run_netns_existed", True))

    def create_bridge(self, ours: bool, save: Callable[[], None]) -> None:
        """Create the bridge (``ours``: it exists from our own earlier ``up``, keep it).

        ``save`` is called as soon as the bridge exists, so a crash right after still lets
        ``down`` find and delete it.
        """
        if Path(f"/sys/class/net/{self.bridge}").exists():
            if ours:
                self.created = True
                return
            raise BedError(f"interface {self.bridge} exists and is not ours; refusing to touch it")
        for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
            addr = ipaddress.ip_interface(line.split()[3])
            if addr.network.overlaps(self.subnet):
                raise BedError(f"{self.subnet} is already in use on this machine: {line.strip()}")
        self._run_netns_premounted = is_mountpoint(RUN_NETNS)
        self._run_netns_existed = os.path.isdir(RUN_NETNS)
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.created = True
        save()
        run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

    def add_host(self, netns: str, index: int) -> None:
        """The host's namespace, with ``eth0`` at its address on the bridge and ``lo`` up."""
        if netns_exists(netns):
            raise BedError(f"network namespace {netns} exists already and is not ours")
        veth = self.veth(index)
        run(["ip", "netns", "add", netns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", veth, "master", self.bridge, "up"])
        run(["ip", "-n", netns, "addr", "add", f"{self.address(index)}/24", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])

    def remove_host(self, netns: str, index: int) -> None:
        """Delete the namespace (its processes must be gone) and the veth; no-op when absent."""
        if netns_exists(netns):
            run(["ip", "netns", "del", netns])
        veth = self.veth(index)
        if Path(f"/sys/class/net/{veth}").exists():
            run(["ip", "link", "del", veth], check=False)

    def remove_bridge(self) -> None:
        """Delete the bridge if we made it, and /run/netns if ``ip netns`` made it for us."""
        if self.created and Path(f"/sys/class/net/{self.bridge}").exists():
            run(["ip", "link", "del", self.bridge], check=False)
        self.created = False
        netns_dir = Path(RUN_NETNS)
        if netns_dir.is_dir() and not any(netns_dir.iterdir()):
            if not self._run_netns_premounted and is_mountpoint(RUN_NETNS):
                run(["umount", RUN_NETNS], check=False)  # `ip netns add` mounted it
            if not self._run_netns_existed:
                _state.rmdir_empty([RUN_NETNS])


def netns_exists(netns: str) -> bool:
    return netns in run(["ip", "netns", "list"]).stdout.split()


def is_mountpoint(path: str) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return any(line.split()[1] == path for line in fh)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False
