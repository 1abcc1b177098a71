"""The host's job lock (harbor_ops.hosts.joblock), shared by upgrade, backup and install.

The lock tests run the real command harborctl sends over ssh, here through ``sh -c`` on this
machine, against a real flock (util-linux) on a private lock file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harbor_ops.core.errors import LockHeld, RemoteError
from harbor_ops.core.lock import job_lock
from harbor_ops.hosts.joblock import RemoteLock, remote_lock_command, ssh_argv
from harbor_ops.hosts.ssh import SSH_CONFIG_ENV
from harbor_ops.site.model import HostEntry


def _lock(path: Path, job: str = "upgrade h1") -> RemoteLock:
    return RemoteLock(["sh", "-c", remote_lock_command(job, path, wait=1)], "h1", timeout=30)


def test_the_host_lock_is_held_until_released_and_names_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "harborctl.lock"
    lock = _lock(path)
    lock.acquire()
    try:
        assert "job=upgrade h1 controller=" in path.read_text()
        # what `harborctl backup create` on the host meets: the documented busy error
        with pytest.raises(LockHeld, match=r"another harborctl job holds the lock \(pid="
                           r"\d+ job=upgrade h1"), job_lock(path, job="backup create"):
            pass
    finally:
        lock.release()
    assert path.read_text() == ""
    with job_lock(path, job="backup create"):
        pass


def test_a_busy_host_lock_is_refused_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "harborctl.lock"
    with job_lock(path, job="backup create"), pytest.raises(
            LockHeld, match="on h1 .*job=backup create"):
        _lock(path).acquire()


def test_the_lock_goes_when_its_holder_dies(tmp_path: Path) -> None:
    """kill -9 of harborctl closes the session's stdin: the host's lock is freed."""
    path = tmp_path / "harborctl.lock"
    holder = subprocess.Popen(
        ["python3", "-c", "import subprocess, sys, time; p = subprocess.Popen(['sh', '-c', "
         "sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE); "
         "print(p.stdout.readline().decode().strip(), flush=True); time.sleep(600)",
         remote_lock_command("upgrade h1", path)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(LockHeld):
            job_lock(path, job="backup create").__enter__()
    finally:
        holder.kill()
        holder.wait()
    _until_free(path)


def _until_free(path: Path) -> None:
    """Wait (at most 20 s) until a job on the host can take the lock: its holder is gone."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with job_lock(path, job="backup create"):
                return
        except LockHeld:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)


def test_a_lock_that_cannot_be_taken_says_why(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="could not take the job lock"):
        RemoteLock(["sh", "-c", "echo nope >&2; exit 3"], "h1", timeout=10).acquire()


def test_a_refused_lock_leaves_no_session_behind(tmp_path: Path) -> None:
    path = tmp_path / "harborctl.lock"
    lock = _lock(path)
    with job_lock(path, job="backup create"), pytest.raises(LockHeld):
        lock.acquire()
    assert lock.proc is None  # its ssh process reaped, its pipes closed
    again = _lock(path)
    again.acquire()  # and nothing of it holds the lock
    again.release()


def test_the_lock_session_reads_the_same_ssh_config_as_paramiko(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = HostEntry(name="h1", address="10.0.0.5")
    monkeypatch.setenv(SSH_CONFIG_ENV, str(tmp_path / "ssh_config"))
    argv = ssh_argv(entry, None)
    assert argv[argv.index("-F") + 1] == str(tmp_path / "ssh_config")
    assert ssh_argv(entry, tmp_path / "given")[argv.index("-F") + 1] == str(tmp_path / "given")
    monkeypatch.delenv(SSH_CONFIG_ENV)
    assert "-F" not in ssh_argv(entry, None)  # OpenSSH's own default then


def _session_ends(lock: RemoteLock) -> None:
    """What a dropped link does on the host: sshd ends the session, the holder's stdin
    ends, the holder goes (and with it the lock)."""
    assert lock.proc is not None and lock.proc.stdin is not None
    lock.proc.stdin.close()
    lock.proc.wait(timeout=20)


def test_a_lock_whose_session_ended_is_taken_again(tmp_path: Path) -> None:
    """After a dropped connection: a live holder is kept (renew says False); a holder whose
    session ended is replaced by a new one, and the lock is held again."""
    path = tmp_path / "harborctl.lock"
    lock = _lock(path)
    lock.acquire()
    try:
        assert lock.renew() is False  # the session still holds it
        _session_ends(lock)
        with job_lock(path, job="backup create"):  # freed, as on the host
            pass
        assert lock.renew() is True
        assert "job=upgrade h1" in path.read_text()
        with pytest.raises(LockHeld), job_lock(path, job="backup create"):
            pass
    finally:
        lock.release()


# An ssh client that has not noticed its link died: it relays the session (the lock
# command, run in a session of its own as sshd runs it) until SIGUSR1, which is the host
# ending that session (its processes killed, the lock freed); from then on it reads on and
# relays nothing, and lives until its stdin ends, as ssh does until its keepalives give up.
DEAF_CLIENT = r"""
import os, signal, subprocess, sys, threading
session = subprocess.Popen(["sh", "-c", sys.argv[1]], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, start_new_session=True)
cut = threading.Event()

def link_down(*_):
    cut.set()
    os.killpg(session.pid, signal.SIGKILL)

signal.signal(signal.SIGUSR1, link_down)

def down():
    for line in iter(session.stdout.readline, b""):
        if not cut.is_set():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

threading.Thread(target=down, daemon=True).start()
for line in iter(sys.stdin.buffer.readline, b""):
    if not cut.is_set():
        session.stdin.write(line)
        session.stdin.flush()
if not cut.is_set():
    session.stdin.close()
    session.wait()
"""


def test_a_holder_whose_client_has_not_noticed_the_dead_link_is_replaced(
        tmp_path: Path) -> None:
    """The lock is free on the host, but this side's ssh client still runs: renew must not
    keep it. The round trip through the session goes unanswered, so the client is ended and
    the lock taken again by a new session (True); a live one answers and is kept."""
    path = tmp_path / "harborctl.lock"
    client = tmp_path / "client.py"
    client.write_text(DEAF_CLIENT)
    lock = RemoteLock([sys.executable, str(client), remote_lock_command("upgrade h1", path,
                                                                        wait=1)],
                      "h1", timeout=30, ping_timeout=1)
    lock.acquire()
    try:
        first = lock.proc
        assert first is not None
        assert lock.renew() is False and lock.proc is first  # it answered: kept
        first.send_signal(signal.SIGUSR1)  # the host ends the session with the link
        _until_free(path)  # as sshd does it
        assert first.poll() is None  # the client has not noticed
        assert lock.renew() is True
        assert first.poll() is not None and lock.proc is not first  # ended, replaced
        assert "job=upgrade h1" in path.read_text()
        with pytest.raises(LockHeld), job_lock(path, job="backup create"):
            pass
        assert lock.renew() is False  # the new session answers
    finally:
        lock.release()
    with job_lock(path, job="backup create"):  # released for good
        pass


def test_a_lock_taken_by_another_job_meanwhile_is_not_renewed(tmp_path: Path) -> None:
    path = tmp_path / "harborctl.lock"
    lock = _lock(path)
    lock.acquire()
    _session_ends(lock)
    try:
        with job_lock(path, job="backup create"), pytest.raises(
                LockHeld, match="job=backup create"):
            lock.renew()
    finally:
        lock.release()


def test_the_lock_session_notices_a_dead_link() -> None:
    """Keepalives on the lock's own ssh login, as on Ansible's."""
    argv = ssh_argv(HostEntry(name="h1", address="10.0.0.5"), None)
    assert "ServerAliveInterval=15" in argv and "ServerAliveCountMax=4" in argv
