"""The controller-side files that let ssh, paramiko and Ansible reach the test hosts.

A bed's hosts share one client key, one host key and one /24, so the known_hosts, ssh_config
and inventory texts are pure functions of the host list; :func:`write_client_files` writes
them all at once after the hosts exist. Kept apart from :mod:`tests.bed.hosts` (namespaces,
mounts, processes) so the texts can be read and tested without booting anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.bed.hosts import Host


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def known_hosts_text(hosts: Sequence[Host], host_pub: str) -> str:
    """Every host by name and address, all with the bed's one host key (``host_pub``)."""
    kind, key = host_pub.split()[:2]
    return "".join(f"{h.name},{h.address} {kind} {key}\n" for h in hosts)


def ssh_config_text(hosts: Sequence[Host], *, network: int, client_key: Path,
                    known_hosts: Path) -> str:
    """One ``Host`` block per name, then the shared settings (also for bare addresses)."""
    names = " ".join(h.name for h in hosts)
    blocks = [f"Host {h.name}\n  HostName {h.address}\n" for h in hosts]
    blocks.append(
        f"Host {names} 10.200.{network}.*\n  User root\n  IdentityFile {client_key}\n"
        f"  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  LogLevel ERROR\n"
        f"  ConnectTimeout 10\n"
    )
    return "\n".join(blocks)


def ansible_vars(*, ssh_config: Path, client_key: Path) -> dict[str, Any]:
    """Group vars of ``harbor``: Ansible's ssh reads the bed's ssh_config."""
    return {
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": f"-F {ssh_config}",
        "ansible_ssh_pipelining": True,
        "ansible_ssh_private_key_file": str(client_key),
    }


def inventory_ini_text(hosts: Sequence[Host], common: dict[str, Any]) -> str:
    lines = (
        ["[harbor]"]
        + [f"{h.name} ansible_host={h.address} harbor_testbed_root={h.root_path}" for h in hosts]
        + ["", "[harbor:vars]"]
        + [f"{k}={v}" for k, v in common.items()]
    )
    return "\n".join(lines) + "\n"


def inventory_yaml_text(hosts: Sequence[Host], common: dict[str, Any]) -> str:
    inventory = {
        "all": {
            "children": {
                "harbor": {
                    "hosts": {
                        h.name: {"ansible_host": h.address, "harbor_testbed_root": str(h.root_path)}
                        for h in hosts
                    },
                    "vars": common,
                }
            }
        }
    }
    # JSON is valid YAML; no yaml dependency needed here.
    return json.dumps(inventory, indent=2) + "\n"


def write_client_files(hosts: Sequence[Host], *, network: int, host_key: Path,
                       client_key: Path, known_hosts: Path, ssh_config: Path,
                       inventory_ini: Path, inventory_yaml: Path) -> None:
    """known_hosts, ssh_config and both inventories for ``hosts``."""
    host_pub = Path(str(host_key) + ".pub").read_text()
    write_file(known_hosts, known_hosts_text(hosts, host_pub))
    write_file(ssh_config, ssh_config_text(hosts, network=network, client_key=client_key,
                                           known_hosts=known_hosts))
    common = ansible_vars(ssh_config=ssh_config, client_key=client_key)
    write_file(inventory_ini, inventory_ini_text(hosts, common))
    write_file(inventory_yaml, inventory_yaml_text(hosts, common))
