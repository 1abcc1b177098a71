"""A private Docker engine on the controller that leaves the machine's networking alone.

Why: tests need a real engine (``docker import/save/load``, ``docker-compose up``), but the stock
daemon creates docker0, iptables chains and a DROP forward policy. This one runs with
``--bridge=none --iptables=false --ip-forward=false``, its own data/exec root and socket, and
user-defined networks (compose) drawn from ``address_pool`` inside 10.200.0.0/16.

API::

    engine = DockerEngine(base_dir)          # base_dir: a directory we own (created if missing)
    engine.start()                           # returns once `docker version` answers
    engine.env -> {"DOCKER_HOST": "unix://<tmp>/hctl-docker-<hash>/docker.sock"}  (short path)
    engine.run("image", "ls", check=True, input=None) -> CompletedProcess[str]
    engine.compose(project_dir, "up", "-d")  # docker-compose 1.29 against this engine
    engine.stop()                            # kill our dockerd (+children), unmount, delete data

A record under ``/run/harborctl-testbed/engines/`` lets ``python -m tests.bed down`` stop an
engine left behind by a crashed session (``stop_recorded_engines()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bed import _state
from tests.bed._run import BedError, run, unmount_all_under, wait_for

DEFAULT_POOL = "10.200.240.0/20"
# dockerd/containerd create these even with their own exec root; removed when we made them.
SIDE_EFFECT_DIRS = ["/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd"]


def docker_cli() -> str:
    """Prefer Debian's CLI (matches dockerd 20.10); a newer CLI in /usr/local also works."""
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise BedError("no docker CLI found (apt-get install docker.io)")
    return found


class DockerEngine:
    """One dockerd we started, identified by its PID and its data root."""

    def __init__(self, base_dir: str | os.PathLike[str], address_pool: str = DEFAULT_POOL) -> None:
        self.base_dir = Path(base_dir).resolve()
        tag = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:10]
        self.data_root = self.base_dir / "data"
        # Sockets live in the exec root and must stay under 104 bytes (containerd's limit),
        # however deep base_dir is (pytest's tmp paths are not short).
        self.exec_root = Path(tempfile.gettempdir()) / f"hctl-docker-{tag}"
        self.socket = self.exec_root / "docker.sock"
        self.pidfile = self.base_dir / "dockerd.pid"
        self.log_path = self.base_dir / "dockerd.log"
        self.address_pool = address_pool
        self.cgroup_parent = f"hctl-docker-{tag}"
        self._record = _state.state_dir() / "engines" / f"{tag}.json"
        self.pid: int | None = None
        self._created_dirs: list[str] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for any docker client (CLI, docker-compose, docker SDK)."""
        return {"DOCKER_HOST": f"unix://{self.socket}"}

    def start(self, timeout: float = 180) -> None:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.access(dockerd, os.X_OK):
            raise BedError("dockerd is not installed (apt-get install docker.io)")
        for path in (self.data_root, self.exec_root):
            path.mkdir(parents=True, exist_ok=True)
        self._created_dirs = _state.missing(SIDE_EFFECT_DIRS)
        args = [
            dockerd,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "-H",
            f"unix://{self.socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--default-address-pool",
            f"base={self.address_pool},size=24",
            "--cgroup-parent",
            f"/{self.cgroup_parent}",
            "--shutdown-timeout",
            "5",  # containers get 5 s to stop, not 10+ per teardown
        ]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = proc.pid
        _state.save(
            self._record,
            {
                "base_dir": str(self.base_dir),
                "pid": proc.pid,
                "owner": _state.owner(),
                "exec_root": str(self.exec_root),
                "created_dirs": self._created_dirs,
            },
        )

        def ready() -> bool:
            if proc.poll() is not None:
                raise BedError(f"dockerd exited with {proc.returncode}")
            try:
                return self.run("version", check=False, timeout=5).returncode == 0
            except subprocess.TimeoutExpired:
                return False  # socket is up, API not yet: keep polling within the deadline

        try:
            wait_for(
                ready, what="dockerd to answer `docker version`", timeout=timeout, interval=0.1
            )
        except BedError as exc:
            tail = self._log_tail()
            self.stop()
            raise BedError(f"{exc}\n--- dockerd log:\n{tail}") from None
        except BaseException:
            self.stop()
            raise

    def run(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine."""
        return run([docker_cli(), *args], env=self.env, check=check, input=input, timeout=timeout)

    def compose(
        self, project_dir: str | os.PathLike[str], *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run Debian's docker-compose 1.29 (v1) in ``project_dir`` against this engine."""
        compose = shutil.which("docker-compose")
        if compose is None:
            raise BedError("docker-compose is not installed (apt-get install docker-compose)")
        return run(
            ["sh", "-c", 'cd "$0" && exec "$@"', str(project_dir), compose, *args],
            env=self.env,
            check=check,
        )

    def stop(self, purge: bool = True, timeout: float = 30, grace: int = 2) -> None:
        """Stop our dockerd and its children, unmount what it left, optionally delete its data.

        ``purge`` also deletes the log; pass ``purge=False`` to keep data and log for a post-mortem.
        Running containers get ``grace`` seconds to stop (dockerd alone would wait 10 s each).
        """
        record = _state.load(self._record) or {}
        created = self._created_dirs or list(record.get("created_dirs", []))
        pid = self.pid or (int(record["pid"]) if "pid" in record else None)
        if "exec_root" in record:  # TMPDIR may differ in the process cleaning up
            self.exec_root = Path(record["exec_root"])
            self.socket = self.exec_root / "docker.sock"
        if pid is not None and self._is_ours(pid):
            family = _state.descendants(pid)
            try:
                running = self.run("ps", "-q", check=False, timeout=10).stdout.split()
                if running:
                    self.run("stop", "-t", str(grace), *running, check=False, timeout=60)
            except subprocess.TimeoutExpired:
                pass  # a hung daemon still gets SIGTERM, then SIGKILL
            os.kill(pid, signal.SIGTERM)  # dockerd stops its containers and containerd
            try:
                wait_for(
                    lambda: not _state.pid_alive(pid),
                    what="dockerd to exit",
                    timeout=timeout,
                    interval=0.1,
                )
            except BedError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _reap(pid)
            for child in family:
                if _state.pid_alive(child):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
        for shim in self._shims():  # also after a crash, when dockerd itself is long gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim, signal.SIGKILL)
        self.pid = None
        unmount_all_under(str(self.exec_root))
        unmount_all_under(str(self.base_dir))
        remove_cgroups(self.cgroup_parent)
        if purge:
            for path in (self.data_root, self.exec_root, self.base_dir / "exec"):
                shutil.rmtree(path, ignore_errors=True)
            for path in (self.socket, self.pidfile, self.log_path):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only if nothing else is left in it
                self.base_dir.rmdir()
        self._record.unlink(missing_ok=True)
        if not any(self._record.parent.glob("*.json")):  # no other engine may need them
            _state.rmdir_empty(created)

    def _shims(self) -> list[int]:
        """containerd shims re-parent to PID 1; ours name our exec root in their argv."""
        marker = str(self.exec_root) + "/"
        shims = []
        for entry in Path("/proc").iterdir():
            argv = _state.cmdline(int(entry.name)) if entry.name.isdigit() else []
            if argv and "containerd-shim" in argv[0] and any(marker in a for a in argv):
                shims.append(int(entry.name))
        return shims

    def _is_ours(self, pid: int) -> bool:
        """Only a live dockerd whose argv names our data root counts as ours."""
        argv = _state.cmdline(pid)
        return _state.pid_alive(pid) and str(self.data_root) in argv

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return "(no log)"


def _reap(pid: int) -> None:
    """Collect the exit status if dockerd is our direct child (avoids a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def remove_cgroups(parent: str) -> None:
    """Remove the (empty) cgroup directories runc made under ``parent`` in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    for hierarchy in [root, *root.iterdir()] if root.is_dir() else []:
        top = hierarchy / parent
        if not top.is_dir():
            continue
        dirs = sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        )
        for path in [*dirs, top]:
            deadline = time.monotonic() + 10  # a killed process leaves its cgroup a moment later
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)


def recorded_engines() -> list[str]:
    """Base dirs of engines some session started and has not stopped yet."""
    records = (_state.load(r) for r in sorted((_state.state_dir() / "engines").glob("*.json")))
    return [str(r["base_dir"]) for r in records if r]


def stop_recorded_engines(include_live: bool = False, under: Path | None = None) -> list[str]:
    """Stop engines whose owner process is gone (crashed session, ``python -m tests.bed up``);
    engines of running sessions only with ``include_live``; only those whose directory is in
    ``under`` (whoever owns them) when given. Returns their base dirs."""
    stopped = []
    for record in sorted((_state.state_dir() / "engines").glob("*.json")):
        data = _state.load(record)
        if not data:
            continue
        if under is not None:
            if not Path(data["base_dir"]).is_relative_to(under.resolve()):
                continue
        elif _state.owner_alive(data) and not include_live:
            continue
        DockerEngine(data["base_dir"]).stop()
        stopped.append(str(data["base_dir"]))
    return stopped
