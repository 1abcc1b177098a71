"""A test host's processes: boot its PID 1, wait until it serves, stop dockerd, halt it.

Boot: in the host's netns, ``unshare`` makes fresh UTS, PID and mount namespaces; the launcher
mounts /proc, /dev, /sys (the netns' own), the cgroup hierarchies dockerd needs, /run and the
Docker data directory under the host's root, then ``pivot_root``s into it and detaches this
machine's root. Why ``pivot_root`` and not ``chroot``: a process that later joins the mount
namespace (``docker exec`` into a container of the host, ``nsenter``) lands on the
namespace's root. With chroot that root stayed this machine's, so an exec ran this machine's
programs on this machine's files; with pivot_root it is the host's, as on a real machine.
``tini`` is PID 1 and runs ``sshd -D`` (after ``/etc/init.d/docker start`` with docker).

Halt: SIGKILL to the namespace's PID 1 makes the kernel kill every process in it; containers
(own PID namespaces, the host's cgroup parent) are killed through their cgroups.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.bed import _state
from tests.bed._run import BedError, run, wait_for
from tests.bed.dockerd import remove_cgroups
from tests.bed.network import tcp_open

if TYPE_CHECKING:
    from tests.bed.hosts import Host

# dockerd's own shutdown-timeout for containers is 15 s; the rest is headroom for a loaded
# machine (a bound on a wait that ends as soon as dockerd has exited)
DOCKERD_STOP_TIMEOUT = 120
EXIT_TIMEOUT = 60  # init reaped, launcher and stray processes gone (same kind of bound)


def boot(host: Host, root: Path, docker_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the host's PID 1 inside fresh UTS/PID/mount namespaces in its netns."""
    r = shlex.quote(str(root))
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
            f"mkdir -p {r}/run/sshd {r}/run/lock",
            f"chmod 1777 {r}/run/lock",  # as Debian's boot makes it (flock -n files)
            f"mount --bind {shlex.quote(str(docker_dir))} {r}/var/lib/docker",
            # The old root goes on top of the new one, then is detached: the namespace's root
            # is now the host's (see the module docstring), nothing of this machine is left.
            f"cd {r}",
            "pivot_root . .",
            "umount -l .",
            f"exec /usr/bin/tini -s -- /bin/sh -c {shlex.quote(inner)}",
        ]
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # nsenter (not `ip netns exec`): keep the root /sys so /sys/fs/cgroup can be bound.
        return subprocess.Popen(  # noqa: S603 - fixed argv
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
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(
    host: Host,
    launcher: subprocess.Popen[bytes] | None,
    timeout: float,
    log_text: Callable[[], str],
) -> None:
    """Until sshd answers (and ``docker version`` does inside the host); else the boot log."""

    def sshd_up() -> bool:
        if launcher is not None and launcher.poll() is not None:
            raise BedError(f"host {host.name} init exited with {launcher.returncode}")
        return tcp_open(host.address, 22)

    try:
        wait_for(sshd_up, what=f"sshd on {host.name}", timeout=timeout)
        if host.docker:
            wait_for(
                lambda: host.exec("docker version >/dev/null 2>&1", check=False).returncode == 0,
                what=f"dockerd on {host.name}",
                timeout=timeout,
                interval=0.2,
            )
    except BedError as exc:
        raise BedError(f"{exc}\n--- init log of {host.name}:\n{log_text()}") from None


def stop_dockerd(host: Host) -> None:
    """Stop the host's dockerd as a shutdown would (SIGTERM), waiting until it has exited.

    dockerd stops its containers first; those with a restart policy start again with the next
    dockerd, as after a reboot. Nothing to do when dockerd is not running.
    """
    pid = host.exec("cat /var/run/docker.pid 2>/dev/null", check=False).stdout.strip()
    if not pid.isdigit():
        return
    host.exec(f"kill -TERM {pid}", check=False)
    wait_for(
        lambda: host.exec(f"kill -0 {pid} 2>/dev/null", check=False).returncode != 0,
        what=f"dockerd on {host.name} to stop",
        timeout=DOCKERD_STOP_TIMEOUT,
        interval=0.2,
    )


def init_pid(netns: str) -> int | None:
    """PID (in our namespace) of the PID 1 of the host in ``netns``, None when it is down."""
    for pid in netns_pids(netns):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # exited meanwhile (ENOENT, or ESRCH while it is being reaped)
            continue
        nspid = [ln for ln in status.splitlines() if ln.startswith("NSpid:")]
        if nspid and nspid[0].split()[-1] == "1":
            return pid
    return None


def halt(host: Host, launcher: subprocess.Popen[bytes] | None) -> None:
    """Kill the host's whole PID namespace and whatever ran in its cgroups.

    SIGKILL to the namespace's PID 1 makes the kernel kill every process in it; the launcher
    (``unshare --fork``) then reaps it and exits, so no zombie is left to the real init.
    """
    init = init_pid(host.netns)
    if init is not None:
        with contextlib.suppress(ProcessLookupError, BedError):  # the sweep below follows
            os.kill(init, signal.SIGKILL)
            wait_for(
                lambda: not Path(f"/proc/{init}").exists(),
                what=f"init of {host.name} to be reaped",
                timeout=EXIT_TIMEOUT,
            )
    if launcher is not None:
        try:
            launcher.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait(timeout=EXIT_TIMEOUT)
    for _ in range(3):
        pids = netns_pids(host.netns) + cgroup_pids(host.netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(_all_exited(pids), what=f"processes of {host.name} to exit",
                 timeout=EXIT_TIMEOUT)
    remove_cgroups(host.netns)
    remove_bridges(host.netns)


def remove_bridges(netns: str) -> None:
    """Delete the bridges the host's dockerd made in its network namespace, which outlives
    the halt: a real reboot starts without them. A stale bridge left behind keeps its route
    to a compose network's subnet, and when the next boot's dockerd makes that network anew
    (a bed snapshot restored), the stale, link-down route wins and the published ports reset
    every connection."""
    out = run(["ip", "-n", netns, "-o", "link", "show", "type", "bridge"], check=False).stdout
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name:
            run(["ip", "-n", netns, "link", "del", name], check=False)


def netns_pids(netns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def cgroup_pids(parent: str) -> list[int]:
    """Processes in the host's container cgroups (containers have their own netns)."""
    top = Path("/sys/fs/cgroup/pids") / parent
    pids: list[int] = []
    if top.is_dir():
        for procs in top.rglob("cgroup.procs"):
            try:
                pids += [int(p) for p in procs.read_text().split()]
            except OSError:
                continue
    return pids


def _all_exited(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(_state.pid_alive(p) for p in pids)
