"""Gather a target host's facts for preflight: one probe, run ON the host, prints JSON.

The same probe (a small, dependency-free Python 3 script fed to ``python3 -`` on stdin) runs
locally through subprocess or remotely over one paramiko SSH connection per host, so a
remote host is checked exactly like this one, and nothing is left behind on it. The probe
only collects raw text (``ss``, ``/proc/net/tcp``, ``docker ps``); parsing lives here as pure
functions so it is unit-tested without a host.

The connection and its host-key policy are :mod:`harbor_ops.hosts.ssh`'s. An unreachable
host, a refused key or an unknown or changed host key never raises: :func:`gather`
returns ``HostFacts(error=...)`` naming the host, which preflight reports as a failed
``ssh`` check (so the other hosts' results still show). :func:`hosts_from_inventory`
says which hosts to gather from when the operator passes an Ansible inventory.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import paramiko

from harbor_ops.core.errors import RemoteError, UsageError
from harbor_ops.hosts import probe, ssh
from harbor_ops.site.model import HostEntry

PROBE_TIMEOUT = 180.0



@dataclass
class HostFacts:
    """The raw probe output of one host, or why it could not be read."""

    host: str
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Listener:
    address: str  # "0.0.0.0", "::", "127.0.0.1", ...
    port: int
    process: str | None = None


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    ports: tuple[tuple[str, int], ...]  # published (host address, host port)


def probe_source(*, data_volume: str, hostname: str, install_dir: str,
                 journal: str | None = None, window_lock: str | None = None,
                 window_wait: float = 0) -> str:
    """The probe module's text plus the call that runs it: what ``python3 -`` reads."""
    args = json.dumps({"data_volume": data_volume, "hostname": hostname,
                       "install_dir": install_dir, "journal": journal,
                       "window_lock": window_lock, "window_wait": window_wait})
    return f"{_probe_text()}\nmain({args!r})\n"


@cache
def _probe_text() -> str:
    return Path(probe.__file__).read_text(encoding="utf-8")


def gather(entry: HostEntry, *, data_volume: str, hostname: str, install_dir: str,
           ssh_config: Path | None = None, journal: str | None = None,
           window_lock: str | None = None, window_wait: float = 0,
           accept_new_host_keys: bool = False) -> HostFacts:
    """Run the probe on ``entry`` (local or ssh). Never raises for host problems.

    ``journal`` (an upgrade journal path on the host) adds its tail to the facts;
    ``window_lock`` makes the probe first wait up to ``window_wait`` s for the upgrade
    window lock (``data["window"]`` says how long, or that it is still held)."""
    script = probe_source(data_volume=data_volume, hostname=hostname, install_dir=install_dir,
                          journal=journal, window_lock=window_lock, window_wait=window_wait)
    timeout = PROBE_TIMEOUT + window_wait
    if entry.connection == "local":
        return _run_local(entry, script, timeout)
    return _run_ssh(entry, script, ssh_config, accept_new_host_keys, timeout)


def _decode(host: str, rc: int, out: str, err: str) -> HostFacts:
    if rc != 0:
        tail = err.strip().splitlines()[-1:] or [f"exit status {rc}"]
        fix = ("install python3 on the host (Ansible needs it too)"
               if rc == 127 or "python3" in err else "run the probe by hand to see why")
        return HostFacts(host, error=f"the fact probe failed on {host}: {tail[0]}", fix=fix)
    try:
        return HostFacts(host, data=json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return HostFacts(host, error=f"the fact probe on {host} printed no JSON",
                         fix="check that the login shell prints nothing on non-interactive use")


def _run_local(entry: HostEntry, script: str, timeout: float = PROBE_TIMEOUT) -> HostFacts:
    try:
        p = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return HostFacts(entry.name, error=f"the fact probe on {entry.name} timed out after "
                         f"{timeout:.0f}s", fix="check for a hung docker daemon or NFS")
    return _decode(entry.name, p.returncode, p.stdout, p.stderr)


def _run_ssh(entry: HostEntry, script: str, ssh_config: Path | None,
             accept_new_host_keys: bool, timeout: float = PROBE_TIMEOUT) -> HostFacts:
    try:
        t = ssh.resolve(entry.name, address=entry.address, port=entry.port, user=entry.user,
                        key_file=entry.ssh_key_file, ssh_config=ssh_config,
                        accept_new_host_keys=accept_new_host_keys)
        client = ssh.connect(t)
    except RemoteError as exc:
        return HostFacts(entry.name, error=exc.message, fix=exc.hint)
    try:
        command = "python3 -" if t.user == "root" else "sudo -n python3 -"
        stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        stdin.write(script)
        stdin.channel.shutdown_write()
        out = stdout.read().decode("utf-8", "replace")
        err = stderr.read().decode("utf-8", "replace")
        rc = stdout.channel.recv_exit_status()
        return _decode(entry.name, rc, out, err)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        return HostFacts(entry.name, error=f"host {entry.name}: the fact probe over SSH to "
                         f"{t.where} failed: {ssh.reason(exc)}",
                         fix="check that sshd runs there and the host is not overloaded")
    finally:
        client.close()


# --------------------------------------------------------------------------- parsing


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def version_of(text: str | None) -> tuple[int, int, int] | None:
    """The first X.Y[.Z] in a tool's output (``v2.20.2``, ``20.10.24+dfsg1``, ``17.06.0-ce``)."""
    m = _VERSION.search(text or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _split_addr(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    host = host.strip("[]").split("%", 1)[0]
    if host in ("*", ""):
        host = "0.0.0.0"
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, int(port)


def parse_ss(text: str) -> list[Listener]:
    """``ss -ltnpH`` lines: ``LISTEN 0 128 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=1,fd=6))``."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        local = cols[3] if cols[0] == "LISTEN" else cols[2]
        addr = _split_addr(local)
        if addr is None:
            continue
        m = re.search(r'users:\(\("([^"]+)"', line)
        out.append(Listener(addr[0], addr[1], m.group(1) if m else None))
    return out


def _hex_addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    text = socket.inet_ntop(socket.AF_INET6, words)
    return text[7:] if text.startswith("::ffff:") and "." in text else text


def parse_proc_net_tcp(text: str) -> list[Listener]:
    """``/proc/net/tcp`` and ``tcp6`` rows in state 0A (LISTEN)."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 4 or cols[3] != "0A" or ":" not in cols[1]:
            continue
        hexaddr, hexport = cols[1].split(":")
        try:
            out.append(Listener(_hex_addr(hexaddr), int(hexport, 16)))
        except ValueError:
            continue
    return out


def listeners(data: dict[str, Any]) -> list[Listener]:
    ss = data.get("ss") or {}
    if ss.get("rc") == 0 and ss.get("out"):
        return parse_ss(ss["out"])
    return parse_proc_net_tcp(data.get("proc_net_tcp") or "")


def parse_docker_ps(text: str | None) -> list[Container]:
    """``docker ps --format '{{.Names}}\\t{{.Image}}\\t{{.Ports}}'`` lines."""
    out = []
    for line in (text or "").splitlines():
        parts = line.split("\t")
        if not parts or not parts[0]:
            continue
        ports = []
        for spec in (parts[2] if len(parts) > 2 else "").split(","):
            host_side = spec.strip().split("->", 1)
            if len(host_side) != 2:
                continue
            addr = _split_addr(host_side[0])
            if addr:
                ports.append(addr)
        out.append(Container(parts[0], parts[1] if len(parts) > 1 else "", tuple(ports)))
    return out


def hosts_from_inventory(path: Path) -> list[tuple[HostEntry, Path | None]]:
    """Hosts of an Ansible inventory (any format) through ``ansible-inventory --list``."""
    exe = Path(sys.executable).with_name("ansible-inventory")
    cmd = str(exe) if exe.exists() else shutil.which("ansible-inventory")
    if cmd is None:
        raise UsageError("--inventory: ansible-inventory is not installed")
    p = subprocess.run([cmd, "-i", str(path), "--list"], capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        raise UsageError(f"--inventory {path}: {p.stderr.strip().splitlines()[-1:]}")
    data = json.loads(p.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names: list[str] = []
    for group in data.values():
        for h in (group.get("hosts", []) if isinstance(group, dict) else []):
            if h not in names:
                names.append(h)
    out = []
    for name in names:
        v = hostvars.get(name, {})
        args = shlex.split(f"{v.get('ansible_ssh_common_args', '')} "
                           f"{v.get('ansible_ssh_extra_args', '')}")
        cfg = Path(args[args.index("-F") + 1]) if "-F" in args[:-1] else None
        key = v.get("ansible_ssh_private_key_file") or v.get("ansible_private_key_file")
        local = v.get("ansible_connection") == "local"
        out.append((HostEntry(name=name, address=v.get("ansible_host"),
                              connection="local" if local else "ssh",
                              user=str(v.get("ansible_user", "root")),
                              port=int(v.get("ansible_port", 22)),
                              ssh_key_file=Path(key) if key else None), cfg))
    return out
