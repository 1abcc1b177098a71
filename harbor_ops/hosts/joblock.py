"""One job at a time per Harbor host: its lock on the controller and on the host itself.

Why two locks: the controller's per-host lock (``<HARBORCTL_LOCK_FILE>.<host>``) only keeps
this controller's own jobs apart. A nightly ``harborctl backup`` running ON the Harbor host,
install's ``install.sh`` step, or a second controller takes the host's
``/run/harborctl.lock`` (with flock), so every job that stops, dumps or restores an SSH
host's Harbor (upgrade, and the controller's backup create, restore and drill there) holds
that one too. It is held by one ``flock`` process on the host, started over ssh (a channel
of the job's own paramiko connection when it has one, else an OpenSSH login), that lives
as long as its ssh session: harborctl closes the session's stdin to release it, and when
the session ends any other way (harborctl killed, even by ``kill -9``; the connection cut)
the holder sees end-of-file and the kernel drops the lock, so a crash never leaves the host
locked. A host reached with ``connection: local`` is this machine: its lock is the
controller's own.

Policy when the host's lock is busy: wait at most :data:`LOCK_WAIT_SECONDS` (a killed run's
session may still be closing), then refuse with :class:`LockHeld` (exit 7) naming the host
and the job that holds it. Never longer here: the holder is usually an upgrade or a backup
that lasts minutes and a person sees at once who is busy. The agent tries a busy host again
later, within bounds, after the other hosts' jobs (:mod:`harbor_ops.agent.jobs`, ``BUSY_*``),
and records it as failed with the holder named when they run out.
"""

from __future__ import annotations

import os
import selectors
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harbor_ops.core.errors import LockHeld, RemoteError
from harbor_ops.core.lock import DEFAULT_LOCK_PATH, default_lock_path, job_lock
from harbor_ops.hosts.ssh import KEEPALIVE_COUNT, KEEPALIVE_INTERVAL, SSH_CONFIG_ENV
from harbor_ops.site.model import HostEntry

HOST_LOCK = DEFAULT_LOCK_PATH  # the role's harbor_job_lock: what backup and install.sh take
BUSY_EXIT = 75
LOCK_WAIT_SECONDS = 10  # a killed run's session may still be closing; never longer
# A holder that does not answer a round trip through its session this fast is taken for
# dead (its ssh client may take a minute of keepalives to notice a link that went down).
PING_SECONDS = 10.0


def is_local(entry: HostEntry) -> bool:
    return entry.connection == "local"


def host_lock(entry: HostEntry) -> Path | None:
    """This machine's job lock for a local host; a lock of its own for each SSH host."""
    if is_local(entry):
        return None
    base = default_lock_path()
    return base.with_name(f"{base.name}.{entry.name}")


def remote_lock_command(job: str, path: Path = HOST_LOCK, *, sudo: bool = False,
                        wait: int = LOCK_WAIT_SECONDS) -> str:
    """The shell command that holds ``path`` on the host until its stdin ends.

    It writes the holder line as :func:`harbor_ops.core.lock.job_lock` does (so a refused
    ``harborctl backup`` there names the job), prints ``locked``, answers each line it
    reads with ``alive`` (:meth:`RemoteLock.renew`'s round trip) until end-of-file and
    empties the holder line. When the lock is busy it prints the holder and exits 75.
    Every word is harborctl's own (the job names a host of the site file, quoted)."""
    lock = shlex.quote(str(path))
    holder = shlex.quote(f"job={job} controller={socket.gethostname()}")
    inner = ('printf "pid=%s %s since=%s\\n" "$$" "$1" "$(date +%s)" > "$2"; echo locked; '
             'while read -r _; do echo alive; done; : > "$2"')
    script = (f"flock --wait {wait} --conflict-exit-code {BUSY_EXIT} {lock} "
              f"sh -c {shlex.quote(inner)} sh {holder} {lock} || {{ rc=$?; "
              f"[ $rc -eq {BUSY_EXIT} ] && cat {lock}; exit $rc; }}")
    if sudo:
        return f"sudo -n sh -c {shlex.quote(script)}"
    return script


class RemoteLock:
    """The host's job lock held by one ssh session (see the module docstring)."""

    def __init__(self, argv: Sequence[str], host: str, *, timeout: float = 60,
                 ping_timeout: float = PING_SECONDS) -> None:
        self.argv, self.host, self.timeout = list(argv), host, timeout
        self.ping_timeout = ping_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def acquire(self) -> None:
        self._start()
        try:
            line = self._first_line()
            if line == b"locked":
                return
            rc, err = self._status()
        except BaseException:  # interrupted while waiting: end the session at once
            self._kill()
            self.release()
            raise
        self.release()
        if rc == BUSY_EXIT:
            holder = line.decode(errors="replace")[:200] or "unknown"
            raise LockHeld(f"another harborctl job holds the lock on {self.host} ({holder}; "
                           f"lock {HOST_LOCK})", hint="wait for it to finish; a crashed job "
                           "frees the lock by itself")
        raise RemoteError(f"{self.host}: could not take the job lock {HOST_LOCK} (exit {rc}): "
                          f"{err.strip() or 'no output'}", hint="is flock (util-linux) there, "
                          "and is the user root or allowed `sudo -n`?")

    def renew(self) -> bool:
        """After the host dropped out: take the lock again if its session ended (True);
        False when that session still holds it (only another connection dropped).

        A session counts as ended when its client has ended, and also when the holder on
        the host does not answer a round trip through it within ``ping_timeout``: the
        host may have ended it with the link while this side's ssh client has not noticed
        yet (its keepalives take up to a minute); that client is then ended here.
        :class:`LockHeld` or :class:`RemoteError` when it cannot be taken again (an
        orphaned holder of ours the host has not noticed yet, or another job)."""
        if self._alive() and self._answers():
            return False
        self._kill()
        self.release()
        self.acquire()
        return True

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _answers(self) -> bool:
        """One round trip through the session: ``ping`` in, ``alive`` out, in time."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"ping\n")
            self.proc.stdin.flush()
        except OSError:
            return False
        return self._line(self.ping_timeout) == b"alive"

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def _status(self) -> tuple[int, str]:
        """The session's exit status and the end of its stderr, once it ended by itself."""
        assert self.proc is not None
        rc = self.proc.wait(timeout=self.timeout) if self.proc.poll() is None else (
            self.proc.returncode)
        err = self.proc.stderr.read().decode(errors="replace")[-300:] if self.proc.stderr else ""
        return rc, err

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def _first_line(self) -> bytes:
        """The session's first output line, within the timeout (never blocks longer); a
        session that gave none is ended."""
        assert self.proc is not None
        line = self._line(self.timeout)
        if line is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return line or b""

    def _line(self, timeout: float) -> bytes | None:
        """The session's next output line (what it printed before it ended, too), or None
        when no line came within ``timeout``."""
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf, ended, deadline = b"", False, time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        try:
            while b"\n" not in buf and time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(fd, 1)  # one byte at a time: the next line stays unread
                if not chunk:
                    ended = True
                    break
                buf += chunk
        finally:
            sel.close()
        return buf.strip() if b"\n" in buf or ended else None

    def release(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            self.proc = None


class ChannelLock(RemoteLock):
    """The same lock held by one exec channel of an open paramiko connection.

    Why: a backup already has its SSH connection to the host; a second ssh login for the
    lock cost a client process, a key exchange and a session on the host (about 0.3 s per
    host on the shared bed). The lifetime rule is unchanged: the channel's stdin ending
    (release, harborctl killed, the connection cut) ends the holder and frees the lock.
    """

    def __init__(self, client: Any, command: str, host: str, *, timeout: float = 60,
                 ping_timeout: float = PING_SECONDS) -> None:
        super().__init__([], host, timeout=timeout, ping_timeout=ping_timeout)
        self.client, self.command = client, command
        self.channel: Any = None

    def _start(self) -> None:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"{self.host}: could not take the job lock {HOST_LOCK}: the SSH "
                              "connection is closed")
        try:
            self.channel = transport.open_session()
            self.channel.settimeout(self.timeout)
            self.channel.exec_command(self.command)
        except Exception as exc:  # noqa: BLE001 - paramiko raises many kinds
            self.channel = None
            raise RemoteError(f"{self.host}: could not take the job lock {HOST_LOCK}: "
                              f"{type(exc).__name__}: {exc}") from None

    def _first_line(self) -> bytes:
        return self._channel_line(self.timeout)

    def _channel_line(self, timeout: float) -> bytes:
        """The channel's next line (what came before a timeout or the end, too)."""
        buf, deadline = b"", time.monotonic() + timeout
        try:
            self.channel.settimeout(timeout)
            while b"\n" not in buf and time.monotonic() < deadline:
                chunk = self.channel.recv(1)  # one byte at a time: the next line stays
                if not chunk:
                    break
                buf += chunk
        except (OSError, EOFError):  # a timeout or the connection gone: no more
            pass
        finally:
            self.channel.settimeout(self.timeout)
        return buf.split(b"\n", 1)[0].strip()

    def _status(self) -> tuple[int, str]:
        if not self.channel.status_event.wait(self.timeout):
            return -1, "no exit status in time"
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(4096)
        return self.channel.recv_exit_status(), err.decode(errors="replace")[-300:]

    def _kill(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def _alive(self) -> bool:
        return bool(self.channel is not None and not self.channel.closed
                    and not self.channel.exit_status_ready())

    def _answers(self) -> bool:
        try:
            self.channel.sendall(b"ping\n")
        except (OSError, EOFError):  # the connection gone
            return False
        return self._channel_line(self.ping_timeout) == b"alive"

    def release(self) -> None:
        if self.channel is None:
            return
        try:
            if not self.channel.closed:  # the holder's `read` ends: the lock is freed
                self.channel.shutdown_write()
                self.channel.status_event.wait(30)
        except (OSError, EOFError):
            pass
        finally:
            self.channel.close()
            self.channel = None


def ssh_argv(entry: HostEntry, ssh_config: Path | None, *,
             accept_new_host_keys: bool = False) -> tuple[str, ...]:
    """The OpenSSH client command for ``entry``: batch mode (never a prompt), the operator's
    config (``$HARBORCTL_SSH_CONFIG`` when none is given, as for paramiko's connections)
    and known_hosts; an unknown host key only with ``--accept-new-host-keys``."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", f"ServerAliveInterval={KEEPALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}"]
    config = ssh_config or (Path(os.environ[SSH_CONFIG_ENV])
                            if os.environ.get(SSH_CONFIG_ENV) else None)
    if config is not None:
        argv += ["-F", str(config)]
    if accept_new_host_keys:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    if entry.ssh_key_file is not None:
        argv += ["-i", str(entry.ssh_key_file), "-o", "IdentitiesOnly=yes"]
    argv += ["-p", str(entry.port), "-l", entry.user, entry.address or entry.name]
    return tuple(argv)


@contextmanager
def hold_on_host(entry: HostEntry, *, job: str, ssh_config: Path | None,
                 accept_new_host_keys: bool = False, client: Any = None
                 ) -> Iterator[RemoteLock | None]:
    """The host's own lock for the block (nothing more for a local host), released when the
    block ends, by an exception too. With ``client`` (an open paramiko connection to the
    host) it is held by one more channel of that connection, else by an OpenSSH login.
    Yields the holder (None for a local host), for :meth:`RemoteLock.renew`."""
    if is_local(entry):
        yield None
        return
    command = remote_lock_command(job, sudo=entry.user != "root")
    lock: RemoteLock
    if client is not None:
        lock = ChannelLock(client, command, entry.name)
    else:
        lock = RemoteLock([*ssh_argv(entry, ssh_config, accept_new_host_keys=(
            accept_new_host_keys)), command], entry.name)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def hold_host(entry: HostEntry, *, job: str, ssh_config: Path | None,
              accept_new_host_keys: bool = False) -> Iterator[RemoteLock | None]:
    """One job at a time on ``entry``: the controller's per-host lock, then the host's
    (yielded, see :func:`hold_on_host`)."""
    with job_lock(host_lock(entry), job=job), \
            hold_on_host(entry, job=job, ssh_config=ssh_config,
                         accept_new_host_keys=accept_new_host_keys) as held:
        yield held
