"""Private work folders: a killed run's folder is swept by the next one, nothing else is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harbor_ops.core import workdir

# A run that makes its folder in TMPDIR, says where, and waits to be killed.
CHILD = """
import sys, time
from harbor_ops.core.workdir import private_workdir
with private_workdir("upgrade") as work:
    (work.path / "files").mkdir()
    (work.path / "files" / "harbor.yml").write_text("harbor_admin_password: secret")
    print(work.path, flush=True)
    time.sleep(60)
"""


def _run_child(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _run_child_with_a_process(tmp: Path, start: str) -> tuple[subprocess.Popen[str], Path, int]:
    """A run (CHILD) that also runs ``start``, which makes ``sleeper``; its folder, its pid."""
    child = CHILD.replace("    print(work.path, flush=True)",
                          f"    import subprocess\n    {start}\n"
                          "    print(work.path, sleeper.pid, flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.stdout is not None
    path, pid = proc.stdout.readline().split()
    return proc, Path(path), int(pid)


def _killed(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_a_folder_is_private_and_removed_when_the_run_ends(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(workdir.tempfile, "tempdir", str(tmp_path))
    with workdir.private_workdir("install") as work:
        assert work.path.parent == tmp_path and work.path.name.startswith("harborctl-install-")
        assert work.path.stat().st_mode & 0o777 == 0o700
        record = json.loads((work.path / workdir.OWNER_FILE).read_text())
        assert record["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []


def test_the_folder_of_a_killed_run_is_swept_by_the_next_run(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    proc, left = _run_child(tmp_path)
    _killed(proc)
    assert (left / "files" / "harbor.yml").exists()  # kill -9 skipped the clean-up
    monkeypatch.setattr(workdir.tempfile, "tempdir", str(tmp_path))
    with workdir.private_workdir("upgrade") as work:
        assert [p.name for p in tmp_path.iterdir()] == [work.path.name]


def test_the_folder_of_a_live_run_is_kept(tmp_path: Path) -> None:
    proc, live = _run_child(tmp_path)
    try:
        assert workdir.sweep_stale(tmp_path) == []
        assert (live / "files" / "harbor.yml").exists()
    finally:
        _killed(proc)
    assert workdir.sweep_stale(tmp_path) == [live.name]


def test_a_lock_inherited_by_a_child_keeps_the_folder_after_the_run_died(
        tmp_path: Path) -> None:
    """The playbook a run started (it inherits the lock) still ends: its folder stays."""
    proc, folder, pid = _run_child_with_a_process(
        tmp_path, "sleeper = subprocess.Popen(['sleep', '60'], pass_fds=(work.lock_fd,))")
    _killed(proc)
    try:
        assert workdir.sweep_stale(tmp_path) == []
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and workdir.sweep_stale(tmp_path) == []:
        time.sleep(0.05)
    assert not folder.exists()


def _dead_folder(tmp_path: Path, name: str, record: dict[str, object] | None) -> Path:
    folder = tmp_path / name
    folder.mkdir(mode=0o700)
    (folder / "harbor.yml").write_text("secret")
    if record is not None:
        (folder / workdir.OWNER_FILE).write_text(json.dumps(record))
    return folder


def _gone_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("case", ["no record", "garbage record", "not ours by name",
                                  "mode 0755", "live pid, lock free"])
def test_what_is_not_proven_a_dead_runs_folder_is_kept(tmp_path: Path, case: str) -> None:
    dead = {"pid": _gone_pid(), "start": 1, "boot": workdir._boot_id()}
    name, record = "harborctl-upgrade-x", dead
    if case == "no record":
        record = None
    if case == "not ours by name":
        name = "other-upgrade-x"
    if case == "live pid, lock free":  # a lock-less maker that still runs: this process
        record = workdir._me()
    folder = _dead_folder(tmp_path, name, record)
    if case == "garbage record":
        (folder / workdir.OWNER_FILE).write_text("{not json")
    if case == "mode 0755":
        folder.chmod(0o755)
    assert workdir.sweep_stale(tmp_path) == []
    assert (folder / "harbor.yml").exists()


def test_a_record_of_another_boot_or_start_time_is_dead(tmp_path: Path) -> None:
    me = workdir._me()
    _dead_folder(tmp_path, "harborctl-upgrade-a", {**me, "boot": "another-boot"})
    _dead_folder(tmp_path, "harborctl-upgrade-b", {**me, "start": -1})  # a reused pid
    assert sorted(workdir.sweep_stale(tmp_path)) == ["harborctl-upgrade-a",
                                                    "harborctl-upgrade-b"]


def test_a_link_is_never_followed(tmp_path: Path) -> None:
    dead = {"pid": _gone_pid(), "start": 1, "boot": workdir._boot_id()}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = _dead_folder(elsewhere, "harborctl-upgrade-t", dead)
    (tmp_path / "harborctl-upgrade-link").symlink_to(target)
    inner = _dead_folder(tmp_path, "harborctl-upgrade-inner", dead)
    (inner / "outside").symlink_to(target)
    assert workdir.sweep_stale(tmp_path) == ["harborctl-upgrade-inner"]
    assert (target / "harbor.yml").exists() and (tmp_path / "harborctl-upgrade-link").is_symlink()


def test_another_users_folder_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = {"pid": _gone_pid(), "start": 1, "boot": workdir._boot_id()}
    folder = _dead_folder(tmp_path, "harborctl-upgrade-theirs", dead)
    mine = os.geteuid()
    monkeypatch.setattr(workdir.os, "geteuid", lambda: mine + 1)  # the sweep of another user
    assert workdir.sweep_stale(tmp_path) == []
    assert (folder / "harbor.yml").exists()


def test_a_process_the_dead_run_adopted_is_ended_before_its_folder_goes(tmp_path: Path) -> None:
    """The drill's scratch server outlives a killed harborctl: the sweep ends it first."""
    proc, path, pid = _run_child_with_a_process(
        tmp_path, "sleeper = subprocess.Popen(['sleep', '60'], start_new_session=True); "
        "work.adopt(sleeper.pid, 'SIGTERM')")
    start = workdir._start_time(pid)
    assert start is not None
    try:
        _killed(proc)
        assert workdir._running(pid, start)  # the kill left it running
        assert workdir.sweep_stale(tmp_path) == [path.name]
        assert not workdir._running(pid, start)
    finally:
        if workdir._running(pid, start):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("child", [
    {"signal": "SIGKILL"},                     # only the signals the module names
    {"signal": "SIGTERM", "start": -1},        # the pid is another process's now
])
def test_a_recorded_process_is_signalled_only_when_the_record_proves_it(
        tmp_path: Path, child: dict[str, object]) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = workdir._start_time(sleeper.pid)
        entry = {"pid": sleeper.pid, "start": start, **child}
        dead = {"pid": _gone_pid(), "start": 1, "boot": workdir._boot_id(), "children": [entry]}
        _dead_folder(tmp_path, "harborctl-drill-x", dead)
        assert workdir.sweep_stale(tmp_path) == ["harborctl-drill-x"]
        assert sleeper.poll() is None  # still running: not signalled
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_adopt_takes_only_the_named_signals(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workdir.tempfile, "tempdir", str(tmp_path))
    with workdir.private_workdir("drill", shared=True) as work:
        assert work.path.stat().st_mode & 0o777 == 0o711
        with pytest.raises(ValueError, match="SIGKILL"):
            work.adopt(os.getpid(), "SIGKILL")
        work.adopt(os.getpid(), "SIGQUIT")
        record = json.loads((work.path / workdir.OWNER_FILE).read_text())
        assert record["pid"] == os.getpid()
        assert record["children"] == [{"pid": os.getpid(), "start": workdir._start_time(
            os.getpid()), "signal": "SIGQUIT"}]


def test_an_owner_token_is_dead_only_for_a_gone_run_of_this_machine() -> None:
    mine = workdir.owner_token()
    machine, boot, _pid, _start = mine.split(":")
    assert not workdir.token_is_dead(mine)  # this run lives
    assert workdir.token_is_dead(f"{machine}:{boot}:{_gone_pid()}:1")
    assert workdir.token_is_dead(f"{machine}:another-boot:{os.getpid()}:{_start}")
    for other in (f"another-machine:{boot}:{_gone_pid()}:1", "", "a:b:c:d", "x" * 50):
        assert not workdir.token_is_dead(other)
