"""Where the machine's CPU went during one timed run of a benchmark.

The run's CPU-seconds (all CPUs, from /proc/stat) are split three ways:

- the controller: this process and every process it starts during the run (harborctl,
  ansible-playbook and its workers, ssh/scp clients, the SSH masters that outlive their
  parent). They are counted through a cgroup of their own: this process moves into it for
  the run and out again, what it forks stays there however it is re-parented;
- everything else on the machine: on the test bed, the hosts' sshd, the module runs and
  commands on the hosts, their dockerd, and the containers (the containers' own share is
  read from the hosts' container cgroups where the bed puts them);
- idle: CPU time nobody used, also per tenth of the run and after a given moment (the
  last host's install.sh, say), from /proc/stat sampled every 0.25 s.

Needs root and a cgroup v2 hierarchy (the unified one of a hybrid setup will do); without
them only the machine's totals are printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SAMPLE_EVERY = 0.25
TICK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, idle) clock ticks of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal, idle + iowait


def process_stat(pid: int | str) -> tuple[str, int, float, str]:
    """(command name, parent pid, CPU-seconds used: utime + stime, start time in ticks) of a
    live process, from /proc/<pid>/stat (the name may hold spaces and parentheses: the
    fields are read after its last ")")."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    return comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK, rest[19]


def unified_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, if it is."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                return Path(left.split()[4])
    return None


def own_cgroup(mount: Path) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    raise OSError("no cgroup v2 entry in /proc/self/cgroup")


def usage_seconds(cgroup: Path) -> float | None:
    """CPU-seconds of a cgroup and its descendants (v2 cpu.stat, or v1 cpuacct.usage), None
    where neither is there (v1's cpu.stat carries no usage)."""
    with contextlib.suppress(OSError, ValueError):
        for line in (cgroup / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    with contextlib.suppress(OSError, ValueError):
        return int((cgroup / "cpuacct.usage").read_text()) / 1e9
    return None


def containers_seconds(parents: list[str]) -> float | None:
    """CPU-seconds so far of the containers under these cgroup parents (0 for a parent not
    made yet), from the first hierarchy that accounts CPU for any of them; else None."""
    hierarchies = [CGROUP_ROOT, *sorted(CGROUP_ROOT.iterdir())] if CGROUP_ROOT.is_dir() else []
    for hierarchy in hierarchies:
        found = [usage_seconds(hierarchy / p) for p in parents]
        if any(u is not None for u in found):
            return sum(u or 0.0 for u in found)
    return None


@dataclass
class Split:
    """One run's CPU, in CPU-seconds."""

    wall: float = 0.0
    cpus: int = os.cpu_count() or 1
    busy: float = 0.0
    idle: float = 0.0
    controller: float | None = None
    containers: float | None = None
    # Of the controller's: long-lived processes, by kind (sampled; see Measure._tree)
    parts: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, busy, idle)

    def idle_after(self, t: float) -> tuple[float, float]:
        """Idle CPU-seconds after ``t`` seconds into the run, and the seconds that covers."""
        later = [s for s in self.samples if s[0] >= t]
        if not later:
            return 0.0, 0.0
        return self.samples[-1][2] - later[0][2], self.samples[-1][0] - later[0][0]

    def idle_by_tenth(self) -> list[float]:
        """Idle CPU-seconds in each tenth of the run (to the sampling's 0.25 s)."""
        def idle_at(t: float) -> float:
            return max((s for s in self.samples if s[0] <= t), default=(0.0, 0.0, 0.0))[2]
        marks = [self.wall * i / 10 for i in range(11)]
        return [idle_at(b) - idle_at(a) for a, b in zip(marks, marks[1:], strict=False)]

    def lines(self) -> list[str]:
        avail = self.busy + self.idle
        out = [f"CPU {avail:.1f} CPU-s ({self.cpus} CPUs x {self.wall:.1f} s): "
               f"busy {self.busy:.1f}, idle {self.idle:.1f}"]
        if self.controller is not None:
            rest = self.busy - self.controller
            parts = [f"controller {self.controller:.1f} (this process, harborctl, Ansible, ssh "
                     f"clients)", f"the rest {rest:.1f} (hosts: sshd, commands and modules, "
                     "dockerd, containers"]
            if self.containers is not None:
                parts[-1] += f"; containers {self.containers:.1f}, the rest without them "
                parts[-1] += f"{rest - self.containers:.1f}"
            out.append(", ".join(parts) + ")")
            if self.parts:
                known = sum(self.parts.values())
                out.append("controller: " + ", ".join(f"{k} {v:.1f}" for k, v in self.parts.items())
                           + f", the rest (workers, ssh clients) {self.controller - known:.1f}")
        out.append("idle CPU-s per tenth of the run: "
                   + " ".join(f"{x:.1f}" for x in self.idle_by_tenth()))
        return out


class Measure:
    """``with Measure(container_parents) as m:`` ... then ``m.split``."""

    def __init__(self, container_parents: list[str]) -> None:
        self.parents = container_parents
        self.split = Split()
        self._stop = threading.Event()
        self._cgroup: Path | None = None
        self._home: Path | None = None
        self._thread = threading.Thread(target=self._sample, name="cpu-sampler", daemon=True)
        self._seen: dict[tuple[str, str], tuple[str, float]] = {}

    def _sample(self) -> None:
        while True:
            busy, idle = machine_ticks()
            t = time.perf_counter() - self._t0
            self.split.samples.append((t, (busy - self._b0) / TICK, (idle - self._i0) / TICK))
            self._tree()
            if self._stop.wait(SAMPLE_EVERY):
                return

    def _tree(self) -> None:
        """The controller's long-lived processes: ansible-playbook's main process (its own
        CPU, not its workers') and the SSH masters, their CPU as last seen."""
        if self._cgroup is None:
            return
        with contextlib.suppress(OSError):
            pids = (self._cgroup / "cgroup.procs").read_text().split()
            for pid in pids:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    comm, ppid, cpu, start = process_stat(pid)
                    if ppid == os.getpid() and comm.startswith("ansible-playboo"):
                        kind = "ansible-playbook's main process"
                    elif comm == "ssh" and Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(
                            b"\0").endswith(b"[mux]"):
                        kind = "SSH masters"
                    else:
                        continue
                    self._seen[(pid, start)] = (kind, cpu)

    def __enter__(self) -> Measure:
        mount = unified_mount()
        if mount is not None and os.geteuid() == 0:
            try:
                self._home = own_cgroup(mount)
                cg = self._home / f"bench-controller-{os.getpid()}-{time.monotonic_ns()}"
                cg.mkdir()
                self._cgroup = cg
                (cg / "cgroup.procs").write_text(f"{os.getpid()}\n")
            except OSError as exc:
                print(f"      (no controller cgroup: {exc}; the split is not measured)")
                self._leave()
        self._c0 = containers_seconds(self.parents)
        self._self0 = sum(os.times()[:2])
        self._b0, self._i0 = machine_ticks()
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, idle = machine_ticks()
        self.split.wall = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.split.busy = (busy - self._b0) / TICK
        self.split.idle = (idle - self._i0) / TICK
        if self._cgroup is not None:
            self._tree()
            self.split.controller = usage_seconds(self._cgroup) or 0.0
            self.split.parts["this process (harborctl in it)"] = sum(os.times()[:2]) - self._self0
            for kind, cpu in self._seen.values():
                self.split.parts[kind] = self.split.parts.get(kind, 0.0) + cpu
        c1 = containers_seconds(self.parents)
        if c1 is not None:
            self.split.containers = c1 - (self._c0 or 0.0)
        self._leave()

    def _leave(self) -> None:
        """Back to our own cgroup; what we started there (SSH masters that outlive the run)
        is ended by its PID, then the cgroup is removed."""
        if self._home is not None:
            with contextlib.suppress(OSError):
                (self._home / "cgroup.procs").write_text(f"{os.getpid()}\n")
        cg, self._cgroup = self._cgroup, None
        if cg is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                with contextlib.suppress(OSError):
                    cg.rmdir()
                return
            for pid in pids:  # only processes this run started (see the module docstring)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            time.sleep(0.1)
