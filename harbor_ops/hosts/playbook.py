"""Run harborctl's playbooks: build the ansible-playbook command, run it, stream progress.

Why split in two: :func:`build_command` decides everything that matters for safety (no
secret on the command line, the extra-vars file 0600, check mode, which inventory) and is
tested without running Ansible; :func:`run_playbook` only executes it and turns the
``harborctl_events`` callback's JSON lines into one progress line per task and host.
The playbooks and the callback plugin ship in the wheel (core.assets finds them).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from harbor_ops.core.assets import shipped_dir
from harbor_ops.core.errors import RemoteError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.hosts import ssh
from harbor_ops.site.model import HostEntry

CALLBACK = "harborctl_events"
EVENTS_FD_ENV = "HARBORCTL_EVENTS_FD"
EXTRA_VARS_FILE = "extra-vars.json"
CONFIG_FILE = "ansible.cfg"
# How often ansible-playbook's strategy loop looks for finished tasks: Ansible's 1 ms made it
# spin through every host a thousand times a second while install.sh ran (about a fifth of
# a CPU on 8 hosts, taken from the hosts' own install.sh on a small controller); 10 ms adds
# at most that to a task and costs next to nothing. Settable only in an ansible.cfg.
INTERNAL_POLL_INTERVAL = "0.01"
INVENTORY_FILE = "inventory.yml"
HOST_GROUP = "harbor"
REMOTE_PYTHON = "/usr/bin/python3"


def playbook_dir() -> Path:
    """The folder holding the playbooks, roles/ and callback_plugins/."""
    return shipped_dir("playbooks")


def playbook_path(name: str) -> Path:
    return playbook_dir() / name


def ansible_playbook_executable() -> str:
    """ansible-playbook next to this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise RemoteError("ansible-playbook not found", hint="install ansible-core")
    return found


def inventory_data(hosts: Sequence[HostEntry]) -> dict[str, Any]:
    """An Ansible YAML inventory (group ``harbor``) from the site file's ``hosts:``."""
    entries: dict[str, dict[str, Any]] = {}
    for h in hosts:
        if h.connection == "local":
            # The controller's own interpreter: it is the one known to exist here.
            entries[h.name] = {"ansible_connection": "local",
                               "ansible_python_interpreter": sys.executable}
            continue
        entry: dict[str, Any] = {"ansible_connection": "ssh", "ansible_user": h.user,
                                 "ansible_port": h.port}
        if h.address:
            entry["ansible_host"] = h.address
        if h.ssh_key_file:
            entry["ansible_ssh_private_key_file"] = str(h.ssh_key_file)
        entries[h.name] = entry
    return {"all": {"children": {HOST_GROUP: {"hosts": entries}}}}


def user_config() -> Path | None:
    """The ansible.cfg Ansible itself would read in harborctl's private working folders
    ($ANSIBLE_CONFIG, ~/.ansible.cfg, /etc/ansible/ansible.cfg, in Ansible's order), or None."""
    where = [os.environ.get("ANSIBLE_CONFIG", ""), str(Path("~/.ansible.cfg").expanduser()),
             "/etc/ansible/ansible.cfg"]
    for name in where:
        path = Path(name) if name else None
        if path is not None and path.is_dir():
            path = path / "ansible.cfg"
        if path is not None and path.is_file():
            return path
    return None


def write_config(path: Path) -> None:
    """harborctl's own ansible.cfg (0600): only the poll interval.

    Written only where the user has none (:func:`user_config`): a user's file is never
    copied, since Ansible resolves its relative paths against where it lies."""
    atomic_write(path, f"[defaults]\ninternal_poll_interval = {INTERNAL_POLL_INTERVAL}\n",
                 mode=0o600)


def build_command(*, playbook: Path, work_dir: Path, log_path: Path,
                  extra_vars: dict[str, Any], hosts: Sequence[HostEntry] = (),
                  inventory: Path | None = None, forks: int | None = None,
                  check: bool = False, ssh_config: Path | None = None,
                  accept_new_host_keys: bool = False,
                  limit: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The ansible-playbook argv and the environment additions for one run.

    Its only side effect is writing files into ``work_dir`` (which the caller keeps
    private): the extra vars as JSON, mode 0600, passed as ``-e @file`` so that no value
    ever appears in a process list; without ``inventory``, a YAML inventory built from
    ``hosts``; and, where the user has no ansible.cfg of their own, one with harborctl's
    poll interval (a user's file is read by Ansible as it is). Host keys follow
    :mod:`harbor_ops.hosts.ssh`'s policy (checking is forced on whatever an ansible.cfg
    says); ``ssh_config`` is passed to ssh with ``-F``.
    """
    if inventory is None and not hosts:
        raise ValueError("build_command needs hosts or an inventory")
    work_dir.mkdir(parents=True, exist_ok=True)
    vars_file = work_dir / EXTRA_VARS_FILE
    atomic_write(vars_file, json.dumps(extra_vars, indent=2, sort_keys=True, default=str),
                 mode=0o600)
    if inventory is None:
        inventory = work_dir / INVENTORY_FILE
        atomic_write(inventory, yaml.safe_dump(inventory_data(hosts), sort_keys=True),
                     mode=0o600)
    if forks is None:
        forks = max(1, min(len(hosts) or 10, 20))
    argv = [ansible_playbook_executable(), "-i", str(inventory), "--forks", str(forks),
            "-e", f"@{vars_file}"]
    if check:
        argv += ["--check", "--diff"]
    if limit:
        argv += ["--limit", limit]
    argv.append(str(playbook))
    plugins = playbook_dir() / "callback_plugins"
    env: dict[str, str] = {}
    if user_config() is None:  # a user's own ansible.cfg is read as it is, where it is
        write_config(work_dir / CONFIG_FILE)
        env["ANSIBLE_CONFIG"] = str(work_dir / CONFIG_FILE)
    env |= {
        "ANSIBLE_CALLBACK_PLUGINS": str(plugins),
        "ANSIBLE_CALLBACKS_ENABLED": CALLBACK,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
        "ANSIBLE_DISPLAY_OK_HOSTS": "false",
        "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false",
        "ANSIBLE_LOG_PATH": str(log_path),
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "true",
        "ANSIBLE_LOCAL_TEMP": str(work_dir / "ansible-tmp"),
        # This run's own SSH masters: a connection opened before a host key changed is
        # never reused by a later run.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work_dir / "cp"),
        "ANSIBLE_ROLES_PATH": str(playbook_dir() / "roles"),
        "ANSIBLE_TIMEOUT": "20",
    }
    if inventory == work_dir / INVENTORY_FILE:
        env["ANSIBLE_PYTHON_INTERPRETER"] = REMOTE_PYTHON
    env["ANSIBLE_HOST_KEY_CHECKING"] = "true"
    env["ANSIBLE_SSH_ARGS"] = ssh.ansible_ssh_args(ssh_config,
                                                   accept_new_host_keys=accept_new_host_keys)
    return argv, env


# ------------------------------------------------------------------------------ running


@dataclass
class HostTally:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"ok": self.ok, "changed": self.changed, "failed": self.failed,
                "skipped": self.skipped, "unreachable": self.unreachable}


@dataclass
class Failure:
    host: str
    task: str
    status: str  # failed | unreachable
    msg: str

    def __str__(self) -> str:
        return f"{self.host}: {self.task}: {self.status}" + (f": {self.msg}" if self.msg else "")


@dataclass
class PlaybookOutcome:
    returncode: int | None = None
    elapsed: float = 0.0
    hosts: dict[str, HostTally] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    output_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failures


def progress_line(event: dict[str, Any]) -> str | None:
    """The line a person sees for one event, or None for events not worth a line."""
    t = float(event.get("t", 0.0))
    kind = event.get("event")
    if kind == "task_result":
        line = f"[{t:6.1f}s] {event.get('host')}: {event.get('task')} ... {event.get('status')}"
        if event.get("msg"):
            line += f": {event['msg']}"
        return line
    if kind == "playbook_start":
        return f"[{t:6.1f}s] playbook {event.get('playbook')}"
    if kind == "recap":
        parts = [f"{h}: " + " ".join(f"{k}={v}" for k, v in c.items() if k in HostTally().to_dict())
                 for h, c in (event.get("hosts") or {}).items()]
        return f"[{t:6.1f}s] recap " + "; ".join(parts)
    return None


def parse_event(line: str) -> dict[str, Any] | None:
    """One JSON line of the callback, or None for anything else (never raises)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def apply_event(outcome: PlaybookOutcome, event: dict[str, Any]) -> None:
    """Fold one event into the outcome (failures as they happen, tallies from the recap)."""
    if event.get("event") == "task_result" and event.get("status") in ("failed", "unreachable"):
        outcome.failures.append(Failure(str(event.get("host")), str(event.get("task")),
                                        str(event["status"]), str(event.get("msg") or "")))
    elif event.get("event") == "recap":
        for host, counts in (event.get("hosts") or {}).items():
            outcome.hosts[host] = HostTally(**{k: int(counts.get(k, 0))
                                               for k in HostTally().to_dict()})


class PlaybookRun:
    """One ansible-playbook process; iterate it for progress lines, then read ``outcome``."""

    def __init__(self, argv: list[str], env: dict[str, str], *, output_path: Path,
                 cwd: Path | None = None, timeout: float = 3600,
                 hold_fds: tuple[int, ...] = ()) -> None:
        self.argv, self.env, self.cwd, self.timeout = argv, env, cwd, timeout
        self.hold_fds = hold_fds
        self.outcome = PlaybookOutcome(output_path=output_path)

    def __iter__(self) -> Iterator[str]:
        started = time.monotonic()
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARBORCTL_EVENTS")}
        env.update(self.env)
        env[EVENTS_FD_ENV] = str(write_fd)
        out_path = self.outcome.output_path
        assert out_path is not None
        with open(out_path, "ab") as out:
            try:
                proc = subprocess.Popen(  # noqa: S603 - argv built by build_command
                    self.argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT,
                    pass_fds=(write_fd, *self.hold_fds),
                    start_new_session=True, preexec_fn=_die_with(os.getpid()))
            finally:
                os.close(write_fd)
            timer = threading.Timer(self.timeout, _kill_group, args=(proc,))
            timer.daemon = True
            timer.start()
            try:
                with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as events:
                    yield from self._read(events)
                self.outcome.returncode = proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    _kill_group(proc)
                    proc.wait()
        self.outcome.elapsed = time.monotonic() - started

    def _read(self, events: IO[str]) -> Iterator[str]:
        for raw in events:
            event = parse_event(raw)
            if event is None:
                continue
            apply_event(self.outcome, event)
            line = progress_line(event)
            if line:
                yield line


PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """In the child before exec: SIGTERM when harborctl dies, even by ``kill -9``.

    A playbook that outlived harborctl would go on changing a host while the next run (which
    resumes from the host's journal) starts beside it. Linux only; elsewhere a no-op.
    """
    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # harborctl died before the signal was armed
            os._exit(143)
    return arm


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop ansible-playbook and its workers: the session we started for it, nothing else."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)


def run_playbook(argv: list[str], env: dict[str, str], *, output_path: Path,
                 cwd: Path | None = None, timeout: float = 3600,
                 hold_fds: tuple[int, ...] = ()) -> PlaybookRun:
    """Start-on-iteration handle: ``for line in run: ...`` then ``run.outcome``.

    ``hold_fds`` are inherited by ansible-playbook (a work folder's owner lock: the folder
    counts as in use until the playbook too has ended)."""
    return PlaybookRun(argv, env, output_path=output_path, cwd=cwd, timeout=timeout,
                       hold_fds=hold_fds)
