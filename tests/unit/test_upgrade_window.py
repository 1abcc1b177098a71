"""The host-side window helper (playbooks/roles/harbor/files/upgrade-window), without Docker.

What is checked here is what the integration tests cannot show cheaply: its journal lines
are the ones harborctl's state machine reads; its gate refuses an empty, dirty or
wrong-layout database; a failed step is journaled with its reason and reported; and it
notices that nobody reads its controller's pipe any more (harborctl killed).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harbor_ops.hosts import probe
from harbor_ops.hosts.playbook import playbook_dir
from harbor_ops.upgrade import state
from tests.integration.upgradefixture import flock_waiters
from tests.unit.scriptload import load_script

HELPER = playbook_dir() / "roles" / "harbor" / "files" / "upgrade-window"


uw = load_script(HELPER, "upgrade_window")


class Alive:
    """A controller that is still there."""

    def check(self) -> None:
        return None

    def gone(self) -> bool:
        return False



def _config(tmp_path: Path) -> dict[str, Any]:
    return {"journal": str(tmp_path / "upgrade.journal"),
            "record": {"v": 1, "run": "18c0ffee00", "hop": "2", "from": "2.14.4",
                       "to": "2.15.2"},
            "active_link": str(tmp_path / "harbor"), "data_volume": str(tmp_path / "data"),
            "snapshot": str(tmp_path / "data" / ".harborctl-upgrade" / "18c0ffee00-2"),
            "snapshot_dirs": ["database", "redis", "secret"], "backup": "/b/h1.hbk",
            "marker": str(tmp_path / "upgrade.window"), "log_location": str(tmp_path / "log")}


def test_journal_lines_are_the_ones_harborctl_reads(tmp_path: Path) -> None:
    (tmp_path / "harbor-2.15.2").mkdir()
    (tmp_path / "harbor").symlink_to("harbor-2.14.4")
    uw.Window(_config(tmp_path), Alive()).run_steps(["switch"])
    lines = (tmp_path / "upgrade.journal").read_text().splitlines()
    events = [state.parse_line(line) for line in lines]
    assert [(e.step, e.event, e.hop) for e in events if e] == [("switch", "begin", 2),
                                                              ("switch", "end", 2)]
    assert os.readlink(tmp_path / "harbor") == "harbor-2.15.2"
    assert (tmp_path / "upgrade.journal").stat().st_mode & 0o777 == 0o600
    folded = state.fold(lines)
    assert (folded.step, folded.event, folded.outcome) == ("switch", "end", state.RUNNING)


def test_a_failed_step_is_journaled_with_its_reason_and_reported(tmp_path: Path) -> None:
    window = uw.Window(_config(tmp_path), Alive())
    with pytest.raises(uw.StepFailed) as failed:
        window.run_steps(["rb_restore", "rb_switch"])
    report = json.loads(str(failed.value))
    assert report["failed_step"] == "rb_restore"
    assert "no complete snapshot" in report["msg"] and "/b/h1.hbk" in report["msg"]
    folded = state.fold((tmp_path / "upgrade.journal").read_text().splitlines())
    assert (folded.step, folded.outcome) == ("rb_restore", state.ROLLBACK_FAILED)
    assert not (tmp_path / "harbor").exists()  # rb_switch never began


def test_an_unexpected_error_in_a_step_is_journaled_as_its_failure(tmp_path: Path) -> None:
    """Not only StepFailed: a bug (here a config without the link) leaves a `fail` line,
    so harborctl decides from the journal instead of guessing from a dead helper."""
    cfg = _config(tmp_path)
    del cfg["active_link"]
    with pytest.raises(uw.StepFailed) as failed:
        uw.Window(cfg, Alive()).run_steps(["switch"])
    assert json.loads(str(failed.value))["failed_step"] == "switch"
    assert "KeyError" in json.loads(str(failed.value))["msg"]
    folded = state.fold((tmp_path / "upgrade.journal").read_text().splitlines())
    assert (folded.step, folded.event) == ("switch", "fail")


def test_the_rollback_puts_back_the_snapshot_and_drops_what_was_not_there(
        tmp_path: Path) -> None:
    """The database and secret come back as they were; a redis folder the failed release
    created (none before the hop) goes, so the old release never reads its data."""
    cfg = _config(tmp_path)
    data = tmp_path / "data"
    (data / "database" / "pg15").mkdir(parents=True)
    (data / "database" / "pg15" / "PG_VERSION").write_text("15\n")
    (data / "secret").mkdir()
    (data / "secret" / "key").write_text("k")
    window = uw.Window(cfg, Alive())
    window.run_steps(["snapshot"])
    (data / "database" / "pg15" / "PG_VERSION").write_text("18\n")  # the new release's
    (data / "redis").mkdir()
    (data / "redis" / "dump.rdb").write_text("REDIS0012")
    window.run_steps(["rb_restore"])
    assert (data / "database" / "pg15" / "PG_VERSION").read_text() == "15\n"
    assert (data / "secret" / "key").read_text() == "k"
    assert not (data / "redis").exists()
    assert (Path(cfg["snapshot"]) / "database").is_dir()  # kept until the old release passed


def _harbor_data(data: Path) -> None:
    """A data volume as Harbor's folders hold it: nested files, a symlink, modes, owners."""
    (data / "database" / "pg15" / "base" / "16384").mkdir(parents=True)
    (data / "database" / "pg15" / "PG_VERSION").write_text("15\n")
    for i in range(20):
        (data / "database" / "pg15" / "base" / "16384" / str(1000 + i)).write_bytes(
            os.urandom(8192 * (i + 1)))
    (data / "database" / "pg15" / "postmaster.pid").write_text("42\n")
    (data / "database" / "pg15" / "pg_wal").symlink_to("base")
    os.chmod(data / "database" / "pg15", 0o700)
    os.chown(data / "database", 999, 999)
    (data / "redis").mkdir()
    (data / "redis" / "dump.rdb").write_bytes(b"REDIS0011" + os.urandom(4000))
    (data / "secret" / "keys").mkdir(parents=True)
    (data / "secret" / "keys" / "secretkey").write_text("0123456789abcdef")
    os.chmod(data / "secret" / "keys" / "secretkey", 0o600)


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything ``cp -a`` keeps, per path: type, mode, owner, mtime, bytes or link target."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        body: Any = (os.readlink(path) if path.is_symlink() else
                     path.read_bytes() if path.is_file() else None)
        mtime = None if path.is_symlink() else st.st_mtime_ns
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, mtime, body)
    return out


@pytest.mark.parametrize("racy_ns", [uw.RACY_NS, 0])
def test_after_a_pre_copy_the_snapshot_is_the_data_as_the_stop_left_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, racy_ns: int) -> None:
    """What changes between the pre-copy and the snapshot (a file rewritten in place with its
    size and mtime put back, one removed, one added, a mode changed, a new folder) is in the
    snapshot, which equals the data in every byte, mode, owner and time. With the racy margin
    the files written just now are copied again; without it (``racy_ns`` 0, as files written
    long before the pre-copy are), only what changed is."""
    monkeypatch.setattr(uw, "RACY_NS", racy_ns)
    cfg = _config(tmp_path)
    data = tmp_path / "data"
    _harbor_data(data)
    window = uw.Window(cfg, Alive())
    monkeypatch.setattr(window, "checkpoint", lambda: None)  # no harbor-db here
    window.precopy()
    assert window.tree is not None
    time.sleep(0.05)  # past the coarse clock tick of the writes above: ctime moves on
    base = data / "database" / "pg15" / "base" / "16384"
    rewritten = base / "1003"
    st = rewritten.stat()
    with open(rewritten, "r+b") as f:
        f.write(b"\0" * 100)
    os.utime(rewritten, ns=(st.st_atime_ns, st.st_mtime_ns))  # only ctime says it changed
    (base / "1004").unlink()
    (data / "database" / "pg15" / "postmaster.pid").unlink()  # a clean shutdown removes it
    (base / "2000").write_bytes(b"new")
    os.chmod(base / "1005", 0o640)
    (data / "redis" / "appendonlydir").mkdir()
    copied: list[str] = []
    copy_bytes = uw.copy_bytes
    monkeypatch.setattr(uw, "copy_bytes", lambda src, dst: (copied.append(src),
                                                             copy_bytes(src, dst)))
    window.run_steps(["snapshot"])
    snap = Path(cfg["snapshot"])
    assert not Path(cfg["snapshot"] + ".partial").exists()
    assert _tree(snap / "database") == _tree(data / "database")
    assert _tree(snap / "redis") == _tree(data / "redis")
    assert _tree(snap / "secret") == _tree(data / "secret")
    if racy_ns:
        assert str(base / "1000") in copied  # written within the margin: not trusted
    else:
        assert sorted(Path(c).name for c in copied) == ["1003", "1005", "2000"]


def test_a_snapshot_without_its_pre_copy_copies_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed pre-copy (here: no room for it) leaves no `.partial`; the snapshot then
    copies the whole data, as a resumed window (a new helper, no pre-copy) does."""
    cfg = _config(tmp_path)
    data = tmp_path / "data"
    _harbor_data(data)
    window = uw.Window(cfg, Alive())
    monkeypatch.setattr(window, "checkpoint", lambda: None)

    def full(*_args: Any, **_kw: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(uw.TreeCopy, "sync", full)
        window.precopy()
    assert window.tree is None and not Path(cfg["snapshot"] + ".partial").exists()
    ran = _commands(monkeypatch)
    window.run_steps(["snapshot"])
    assert _tree(Path(cfg["snapshot"]) / "database") == _tree(data / "database")
    assert ran == []  # copied by TreeCopy, as after a pre-copy: no `cp -a` beside it


def _commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands the helper starts from now on (none may run here: no docker, no cp)."""
    ran: list[list[str]] = []

    def background(argv: list[str], cwd: str | None = None) -> None:
        ran.append(argv)
        raise AssertionError(f"a command was started: {argv}")

    monkeypatch.setattr(uw, "Background", background)
    return ran


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsynced from now on, in order (journal lines included)."""
    done: list[str] = []
    fsync = os.fsync

    def record(fd: int) -> None:
        fsync(fd)
        done.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(uw.os, "fsync", record)
    return done


def test_the_rollback_copies_the_snapshot_back_whole_and_on_disk_before_it_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rb_restore puts back every byte, mode, owner (uid 999 keeps the database) and time of
    the snapshot with the snapshot's own copier (no `cp -a`), and every file and folder it
    put back, and the data folder holding them, is fsynced before its ``end`` line is
    journaled: a power loss after the host is declared rolled back finds the old data,
    not pages that were only in memory."""
    cfg = _config(tmp_path)
    data = tmp_path / "data"
    _harbor_data(data)
    window = uw.Window(cfg, Alive())
    window.run_steps(["snapshot"])
    snap = Path(cfg["snapshot"])
    before = {d: _tree(data / d) for d in ("database", "redis", "secret")}
    (data / "database" / "pg15" / "PG_VERSION").write_text("18\n")  # the new release's
    (data / "database" / "pg18").mkdir()
    (data / "redis" / "dump.rdb").write_bytes(b"REDIS0012")
    ran, synced = _commands(monkeypatch), _fsynced(monkeypatch)
    window.run_steps(["rb_restore"])
    assert ran == []
    for d in ("database", "redis", "secret"):
        assert _tree(data / d) == before[d] == _tree(snap / d)
    assert (data / "database").stat().st_uid == 999
    end = max(i for i, p in enumerate(synced) if p == cfg["journal"])  # the end line
    restored = {str(p) for d in ("database", "redis", "secret")
                for p in [data / d, *(data / d).rglob("*")] if not p.is_symlink()}
    assert restored | {str(data)} <= set(synced[:end]), sorted(restored - set(synced[:end]))


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /data rw,relatime shared:9 - xfs /dev/sdb1 rw
31 30 0:41 / /data/nfs\\040share rw,relatime shared:10 - nfs4 filer:/harbor rw
"""


def test_the_filesystem_of_a_path_is_that_of_its_longest_mount_point(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert uw.filesystem("/data", str(info)) == "xfs"
    assert uw.filesystem("/data/database", str(info)) == "xfs"
    assert uw.filesystem("/data/nfs share/database", str(info)) == "nfs4"
    assert uw.filesystem("/datax", str(info)) == "ext4"
    assert uw.filesystem("/data", str(tmp_path / "missing")) == ""


def test_no_pre_copy_where_the_kernel_does_not_keep_ctime_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a network filesystem a stat may come from a cache: nothing is pre-copied there and
    the snapshot copies everything after the stop, as before."""
    cfg = _config(tmp_path)
    _harbor_data(tmp_path / "data")
    window = uw.Window(cfg, Alive())
    monkeypatch.setattr(window, "checkpoint", lambda: None)
    monkeypatch.setattr(uw, "filesystem", lambda _path: "nfs4")
    window.precopy()
    assert window.tree is None and not Path(cfg["snapshot"] + ".partial").exists()


def test_the_gate_refuses_an_empty_dirty_or_wrong_layout_database() -> None:
    then = {"schema_version": 171, "schema_dirty": False,
            "counts": {"project": 26, "artifact": 200}}
    tables = ["project", "artifact"]
    good = {"schema_version": 180, "schema_dirty": False,
            "counts": {"project": 26, "artifact": 201}}
    assert uw.gate_problems(good, then, 180, "pg18", ["pg18"], tables) == []
    empty = {"schema_version": 180, "schema_dirty": False,
             "counts": {"project": 1, "artifact": 0}}
    assert uw.gate_problems(empty, then, 180, "pg18", ["pg18"], tables) == [
        "project: 26 rows before the hop, 1 now", "artifact: 200 rows before the hop, 0 now"]
    dirty = dict(good, schema_version=175, schema_dirty=True)
    assert "expected 180 and clean" in uw.gate_problems(dirty, then, 180, "pg18", ["pg18"],
                                                        tables)[0]
    assert uw.gate_problems(good, then, 180, "pg18", ["pg15", "pg18"], tables) == [
        "data layout pg15,pg18, expected pg18"]


def test_layouts_are_the_pgNN_folders_holding_a_cluster(tmp_path: Path) -> None:
    for name in ("pg15", "pg18", "pgNEW", "lost+found"):
        (tmp_path / name).mkdir()
    (tmp_path / "pg15" / "PG_VERSION").write_text("15\n")
    (tmp_path / "pgNEW" / "PG_VERSION").write_text("18\n")
    (tmp_path / "PG_VERSION").write_text("9.6\n")
    assert uw.layouts(str(tmp_path)) == ["pg15"]
    assert uw.layouts(str(tmp_path / "missing")) == []


PROBE = """
import os, sys, time
from importlib.machinery import SourceFileLoader
uw = SourceFileLoader("uw", {helper!r}).load_module()
dog = uw.Watchdog(os.getppid())
with open(sys.argv[1], "w", buffering=1) as out:
    out.write("watching %s\\n" % dog.gone())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not dog.gone():
        time.sleep(0.05)
    out.write("gone %s\\n" % dog.gone())
"""


def test_the_watchdog_notices_that_nobody_reads_the_controllers_pipe(tmp_path: Path) -> None:
    """The probe's parent (a shell) writes to a pipe this test reads, as the module's Python
    writes to the SSH session: once the reading end closes, the probe must say so."""
    out = tmp_path / "probe.out"
    (tmp_path / "probe.py").write_text(PROBE.format(helper=str(HELPER)))
    shell = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" probe.py probe.out; true'],
                             cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "watching" not in _read(out):
            time.sleep(0.05)
        assert _read(out).split() == ["watching", "False"]  # the pipe is read: not gone
        assert shell.stdout is not None
        shell.stdout.close()
        assert shell.wait(timeout=40) == 0
        assert _read(out).split() == ["watching", "False", "gone", "True"]
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# --------------------------------------------------------------------------- the window lock


class Holder:
    """Another process holding ``path``'s flock (a helper still at work) until released."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(["flock", "-x", str(path), "sh", "-c", "echo held; read _"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"held\n"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _waiters(path: Path) -> int:
    return flock_waiters(Path("/proc/locks").read_text(), path.stat().st_ino)


def test_the_helper_holds_the_window_lock_and_names_itself(tmp_path: Path) -> None:
    lock_path = tmp_path / "window.lock"
    uw.RECORD.update(run="18c0ffee00", hop=2)
    lock = uw.WindowLock(str(lock_path), wait=5)
    try:
        assert lock_path.stat().st_mode & 0o777 == 0o600
        window = uw.Window(_config(tmp_path), Alive(), lock)
        (tmp_path / "harbor-2.15.2").mkdir()
        window.run_steps(["switch"])
        holder = lock_path.read_text()
        assert holder.startswith(f"pid={os.getpid()} run=18c0ffee00 hop=2 step=switch since=")
        # held: a second helper refuses to begin (and journals nothing)
        with pytest.raises(uw.StepFailed, match="another upgrade-window holds .* step=switch"):
            uw.WindowLock(str(lock_path), wait=0.3)
        # the lock goes with the step's commands: one that outlives the helper keeps it
        uw.PASS_FDS[:] = [lock.fd]
        uw.run(["sh", "-c", f"test -e /proc/self/fd/{lock.fd}"])
    finally:
        uw.PASS_FDS.clear()
        os.close(lock.fd)
    uw.WindowLock(str(lock_path), wait=0.3)  # freed with the helper's descriptor


def test_a_helper_that_finds_the_lock_held_begins_nothing(tmp_path: Path) -> None:
    cfg = dict(_config(tmp_path), lock=str(tmp_path / "window.lock"), lock_wait=0.3)
    holder = Holder(tmp_path / "window.lock")
    try:
        p = subprocess.run([sys.executable, str(HELPER), json.dumps(cfg), "switch"],
                           capture_output=True, text=True, timeout=60)
    finally:
        holder.release()
    assert p.returncode == 1 and "another upgrade-window holds" in p.stderr, p
    assert not (tmp_path / "upgrade.journal").exists()


def test_the_probe_waits_for_the_window_lock_then_holds_it(tmp_path: Path) -> None:
    lock_path = tmp_path / "window.lock"
    assert probe.window(str(lock_path), 5) == {"held": False, "waited": 0.0}  # no helper
    lock_path.write_text("pid=1 run=18c0ffee00 hop=2 step=start since=1\n")
    holder = Holder(lock_path)
    try:
        busy = probe.window(str(lock_path), 0.3)
        assert busy["held"] and busy["holder"].startswith("pid=1 run=18c0ffee00 hop=2 step=start")
        # the holder lets go only once the probe is seen waiting for it (/proc/locks)
        releaser = threading.Thread(target=_release_when_waited_for, args=(holder, lock_path))
        releaser.start()
        got = probe.window(str(lock_path), 60)
        releaser.join()
    finally:
        if holder.proc.poll() is None:
            holder.release()
    assert got["held"] is False
    try:  # and holds it (shared) until the probe ends: a new helper cannot begin meanwhile
        with pytest.raises(uw.StepFailed):
            uw.WindowLock(str(lock_path), wait=0.3)
    finally:
        while probe._HELD:
            os.close(probe._HELD.pop())


def _release_when_waited_for(holder: Holder, path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _waiters(path) == 0:
        time.sleep(0.02)
    holder.release()


def test_a_signal_stops_the_helper_at_the_next_step_boundary() -> None:
    dog = uw.Watchdog(os.getppid())
    dog.fd = None  # no pipe to watch here: only the signal counts
    assert not dog.gone()
    try:
        uw.stop_on_signal(15, None)
        assert dog.gone()
    finally:
        uw.STOPPING.clear()


FAKE_DOCKER = """#!/bin/sh
n=$(($(cat "$0.calls" 2>/dev/null || echo 0) + 1))
echo $n > "$0.calls"
[ "$n" -gt "$FAILS" ] || { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
echo 27.5.1
"""


def _docker_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """``script`` as the ``docker`` first on PATH; the folder it lies in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(script)
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def _fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: int) -> Path:
    """A ``docker`` first on PATH that fails its first ``fails`` calls (dockerd starting)."""
    monkeypatch.setenv("FAILS", str(fails))
    return _docker_on_path(tmp_path, monkeypatch, FAKE_DOCKER) / "docker.calls"


def test_a_window_waits_for_dockerd_before_its_first_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a reboot dockerd may still be starting when the resumed window begins: the
    helper asks until it answers (bounded), then runs its steps."""
    calls = _fake_docker(tmp_path, monkeypatch, fails=3)
    (tmp_path / "harbor-2.15.2").mkdir()
    (tmp_path / "harbor").symlink_to("harbor-2.14.4")
    cfg = {**_config(tmp_path), "docker_wait": 30}
    uw.Window(cfg, Alive()).run_steps(["switch"])
    assert calls.read_text().strip() == "4"
    assert os.readlink(tmp_path / "harbor") == "harbor-2.15.2"


def test_the_wait_for_dockerd_is_bounded(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A dockerd that never answers: after ``docker_wait`` s the steps run (and fail with
    their own error where they need docker); without ``docker_wait`` nothing is asked."""
    calls = _fake_docker(tmp_path, monkeypatch, fails=10 ** 6)
    (tmp_path / "harbor-2.15.2").mkdir()
    (tmp_path / "harbor").symlink_to("harbor-2.14.4")
    uw.Window(_config(tmp_path), Alive()).run_steps(["switch"])
    assert not calls.exists()
    began = time.monotonic()
    uw.Window({**_config(tmp_path), "docker_wait": 1}, Alive()).run_steps(["switch"])
    assert 1 <= time.monotonic() - began < 5
    assert int(calls.read_text()) >= 2


def _compose_v1() -> tuple[str, list[str]]:
    import shutil

    from tests.bed.fixtures import unavailable

    path = shutil.which("docker-compose") or ""
    python = uw.compose_python(path) if path else None
    if python is None:
        unavailable("needs compose v1's Python script (docker-compose 1.x)")
    return path, python


def test_a_preloaded_compose_runs_only_on_go_and_never_from_its_folder(
        tmp_path: Path) -> None:
    path, python = _compose_v1()
    (tmp_path / "docker-compose.yml").write_text("services:\n  core:\n    image: c\n")
    (tmp_path / "compose.py").write_text("raise SystemExit('imported from the folder')\n")
    argv = [path, "-f", str(tmp_path / "docker-compose.yml"), "config", "--services"]
    unused = uw.Preloaded(python, argv, str(tmp_path))
    ran = uw.Preloaded(python, argv, str(tmp_path))
    unused.abandon()
    assert unused.proc.returncode == 0
    assert ran.go()
    assert ran.wait(timeout=120) == "core\n"


def test_compose_is_preloaded_only_where_it_is_v1s_python_script(tmp_path: Path) -> None:
    frozen = tmp_path / "docker-compose"
    frozen.write_bytes(b"\x7fELF\x02\x01\x01\x00")
    other = tmp_path / "tool"
    other.write_text("#!/usr/bin/python3\nprint('not compose')\n")
    assert uw.compose_python(str(frozen)) is None
    assert uw.compose_python(str(other)) is None
    assert uw.compose_python(str(tmp_path / "missing")) is None
    script = tmp_path / "compose-v1"
    script.write_text("#!/usr/bin/python3 -s\nimport re\nimport sys\n"
                      "from compose.cli.main import main\nsys.exit(main())\n")
    assert uw.compose_python(str(script)) == ["/usr/bin/python3", "-s"]


def test_a_network_whose_endpoints_are_still_being_released_is_removed_on_a_later_ask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dockerd releases a just-removed container's endpoint a moment later: ``network rm``
    right after ``docker rm`` can fail with "has active endpoints" (seen once in CI)."""
    calls = _fake_docker(tmp_path, monkeypatch, fails=3)
    uw.remove_network("harbor_harbor")
    assert calls.read_text().strip() == "4"


def test_a_network_that_cannot_be_removed_fails_the_stop_in_bounded_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_docker(tmp_path, monkeypatch, fails=10 ** 6)
    monkeypatch.setattr(uw, "NETWORK_RM_SECONDS", 0.5)
    began = time.monotonic()
    with pytest.raises(uw.StepFailed, match="docker network rm harbor_harbor"):
        uw.remove_network("harbor_harbor")
    assert time.monotonic() - began < 5


FAKE_DOCKER_START = """#!/bin/sh
echo "$(date +%s.%N) $*" >> "$0.log"
case "$1" in
start) shift; for n in "$@"; do echo "$n"; done ;;
inspect) case "$3" in
    *Paused*) cat "$0.paused" 2>/dev/null || echo false ;;
    *) echo "$DB_PID 127.0.0.1" ;;
    esac ;;
pause) cp "$JOURNAL" "$0.journal-at-pause"; echo true > "$0.paused" ;;
unpause) [ -z "$UNPAUSE_FAILS" ] || { echo "Error response from daemon: $UNPAUSE_FAILS" >&2
    exit 1; }
    echo false > "$0.paused" ;;
*) echo "unexpected docker $*" >&2; exit 1 ;;
esac
"""

CREATED = {"harbor-log": "log", "harbor-db": "postgresql", "redis": "redis",
           "registry": "registry", "registryctl": "registryctl",
           "harbor-portal": "portal", "harbor-core": "core", "nginx": "proxy",
           "harbor-jobservice": "jobservice", "trivy-adapter": "trivy-adapter"}


def test_the_new_release_starts_with_docker_start_in_its_dependency_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the containers snapshot created, ``start`` starts harbor-db (its log container
    already runs), then the others at once in compose's depends_on order (nginx after core,
    registry and portal; a service it does not know last): never with compose."""
    bin_dir = _docker_on_path(tmp_path, monkeypatch, FAKE_DOCKER_START)
    monkeypatch.setenv("DB_PID", str(os.getpid()))
    monkeypatch.setattr(uw, "DB_PORT", _PostgresLike(delay=0).port)  # accepts at once
    cfg = {**_config(tmp_path), "new_dir": str(tmp_path / "new"), "compose": ["false"]}
    window = uw.Window(cfg, Alive())
    window.created = dict(CREATED)
    window.log_started = ["harbor-log"]
    window.start()
    calls = (bin_dir / "docker.log").read_text().splitlines()
    assert [c.split()[1:] for c in calls][:2] == [
        ["start", "harbor-db"],
        ["start", "redis", "registry", "registryctl", "harbor-portal", "harbor-core", "nginx",
         "harbor-jobservice", "trivy-adapter"]]
    # a database that accepts already: core is not held
    assert not any(c.split()[1] in ("pause", "unpause") for c in calls)


class _PostgresLike:
    """A loopback port that refuses connections for ``delay`` s (counted from when ``after``
    exists, if given: bounded at 30 s), then answers a startup message as PostgreSQL does
    once it accepts (an authentication request)."""

    def __init__(self, delay: float, after: Path | None = None) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.accepting_since: float | None = None
        threading.Thread(target=self._serve, args=(delay, after), daemon=True).start()
        if delay == 0 and after is None:
            while self.accepting_since is None:
                time.sleep(0.01)

    def _serve(self, delay: float, after: Path | None) -> None:
        deadline = time.monotonic() + 30
        while after is not None and not after.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self.accepting_since = time.time()
        while True:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"R" + struct.pack("!II", 8, 0))


def _held_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 delay: float | None) -> tuple[Any, Path, _PostgresLike | None]:
    """A window whose ``start`` finds the containers created, its harbor-db converting:
    accepting connections ``delay`` s after harbor-core's pause (None: never). Counted from
    the pause, not from now, so that a loaded machine, slow to reach the pause, cannot
    make the database accept first (then nothing is held, and these tests would test
    nothing)."""
    bin_dir = _docker_on_path(tmp_path, monkeypatch, FAKE_DOCKER_START)
    cfg = {**_config(tmp_path), "new_dir": str(tmp_path / "new"), "compose": ["false"],
           "health_timeout": 30}
    monkeypatch.setenv("DB_PID", str(os.getpid()))
    monkeypatch.setenv("JOURNAL", cfg["journal"])
    db = (_PostgresLike(delay, after=bin_dir / "docker.journal-at-pause")
          if delay is not None else None)
    if db is not None:
        monkeypatch.setattr(uw, "DB_PORT", db.port)
    else:
        monkeypatch.setattr(uw, "DB_PORT", _PostgresLike(3600).port)
    window = uw.Window(cfg, Alive())
    window.created = dict(CREATED)
    window.log_started = ["harbor-log"]
    return window, bin_dir, db


def _calls(bin_dir: Path) -> list[tuple[float, list[str]]]:
    out = []
    for line in (bin_dir / "docker.log").read_text().splitlines():
        stamp, *argv = line.split()
        out.append((float(stamp), argv))
    return out


def test_core_is_paused_while_harbor_db_converts_and_runs_the_moment_it_accepts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """harbor-core starts with the others, then is paused (the pause on disk in the
    journal before ``docker pause``) until the converted database accepts connections, and
    unpaused at once then: the step ends with it running and the journal says so. harborctl's
    journal reader ignores both lines (its decisions are those without them)."""
    window, bin_dir, db = _held_window(tmp_path, monkeypatch, delay=0.5)
    assert db is not None
    window.run_steps(["start"])
    calls = _calls(bin_dir)
    verbs = [argv[0] for _, argv in calls]
    assert verbs[:2] == ["start", "start"]
    assert verbs.index("pause") < verbs.index("unpause")
    assert [argv for _, argv in calls if argv[0] in ("pause", "unpause")] == [
        ["pause", "harbor-core"], ["unpause", "harbor-core"]]
    paused_at = next(t for t, argv in calls if argv[0] == "pause")
    unpaused_at = next(t for t, argv in calls if argv[0] == "unpause")
    assert db.accepting_since is not None
    # At once: the next ask (every DB_POLL s) finds it; 2 s leaves room for a loaded
    # machine's fork of the fake docker, and is still well short of the health_timeout
    # (30 s) a hold that missed the answer would end at.
    assert paused_at < db.accepting_since <= unpaused_at < db.accepting_since + 2
    at_pause = (bin_dir / "docker.journal-at-pause").read_text().splitlines()
    assert (json.loads(at_pause[-1])["event"], json.loads(at_pause[-1])["msg"]) == (
        "pause", "harbor-core")
    lines = (tmp_path / "upgrade.journal").read_text().splitlines()
    assert [(json.loads(x)["step"], json.loads(x)["event"]) for x in lines] == [
        ("start", "begin"), ("start", "pause"), ("start", "unpause"), ("start", "end")]
    plain = [x for x in lines if json.loads(x)["event"] in ("begin", "end")]
    assert state.fold(lines) == state.fold(plain)
    assert (bin_dir / "docker.paused").read_text().strip() == "false"


def test_core_paused_for_a_database_that_never_accepts_runs_again_at_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database never accepts: core is unpaused after ``health_timeout`` s and the
    step ends (the gate then fails the hop and the rollback runs, as before)."""
    window, bin_dir, _ = _held_window(tmp_path, monkeypatch, delay=None)
    window.cfg["health_timeout"] = 1
    began = time.monotonic()
    window.run_steps(["start"])
    assert 1 <= time.monotonic() - began < 5
    assert [argv for _, argv in _calls(bin_dir) if argv[0] in ("pause", "unpause")] == [
        ["pause", "harbor-core"], ["unpause", "harbor-core"]]
    assert (bin_dir / "docker.paused").read_text().strip() == "false"


def test_a_failed_unpause_fails_the_step_naming_the_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    window, bin_dir, _ = _held_window(tmp_path, monkeypatch, delay=0.3)
    monkeypatch.setenv("UNPAUSE_FAILS", "cgroup thaw failed")
    with pytest.raises(uw.StepFailed) as failed:
        window.run_steps(["start"])
    report = json.loads(str(failed.value))
    assert report["failed_step"] == "start"
    assert "harbor-core stays paused" in report["msg"] and "cgroup thaw failed" in report["msg"]
    events = [json.loads(x)["event"]
              for x in (tmp_path / "upgrade.journal").read_text().splitlines()]
    assert events == ["begin", "pause", "fail"]  # never journaled as unpaused


def test_the_next_helper_unpauses_what_a_dead_helper_left_paused_before_its_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper killed while core was paused left the journal's ``pause`` line: the next
    helper (a rollback here) unpauses core inside its first step, before that step's work,
    and journals it; a name that is no container name is never passed to docker; a later
    helper finds nothing left to unpause."""
    bin_dir = _docker_on_path(tmp_path, monkeypatch, FAKE_DOCKER_START)
    cfg = {**_config(tmp_path), "new_dir": str(tmp_path / "new"), "compose": ["false"]}
    dead = uw.Window(cfg, Alive())
    dead.journal("start", "begin")
    dead.journal("start", "pause", "harbor-core --help")
    (bin_dir / "docker.paused").write_text("true\n")
    rb_stop_ran: list[bool] = []
    window = uw.Window(cfg, Alive())
    monkeypatch.setattr(window, "rb_stop", lambda: rb_stop_ran.append(
        (bin_dir / "docker.paused").read_text().strip() == "false"))
    window.run_steps(["rb_stop"])
    assert rb_stop_ran == [True]  # unpaused before the step's own work
    assert [argv for _, argv in _calls(bin_dir)] == [["unpause", "harbor-core"]]
    lines = [json.loads(x) for x in (tmp_path / "upgrade.journal").read_text().splitlines()]
    assert [(x["step"], x["event"]) for x in lines][-3:] == [
        ("rb_stop", "begin"), ("rb_stop", "unpause"), ("rb_stop", "end")]
    uw.Window(cfg, Alive()).run_steps(["rb_stop"])
    assert len(_calls(bin_dir)) == 1


def test_a_container_that_cannot_be_started_leaves_the_start_to_compose(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``docker start`` fails (a container removed meanwhile): ``up -d`` creates and
    starts what is missing, as without the head start."""
    ran: list[list[str]] = []
    window = uw.Window({**_config(tmp_path), "new_dir": str(tmp_path / "new"),
                        "compose": ["docker-compose"]}, Alive())
    window.created = dict(CREATED)

    def ordered(found: dict[str, str]) -> None:
        raise uw.StepFailed("docker start harbor-db exited with 1 (No such container)")

    monkeypatch.setattr(window, "start_ordered", ordered)
    monkeypatch.setattr(window, "compose", lambda folder, *args: ran.append([folder, *args]))
    window.start()
    assert ran == [[str(tmp_path / "new"), "up", "-d"]]


def test_a_snapshot_whose_copy_failed_fails_and_is_never_renamed_complete(
        tmp_path: Path) -> None:
    """The copy stop began in its thread fails (no room): snapshot fails with its error and
    leaves no complete snapshot."""
    cfg = _config(tmp_path)
    _harbor_data(tmp_path / "data")
    window = uw.Window(cfg, Alive())

    def full() -> None:
        os.makedirs(cfg["snapshot"] + ".partial")
        raise OSError(28, "No space left on device")

    window.copying = uw.Threaded(full)
    with pytest.raises(uw.StepFailed, match="No space left on device"):
        window.run_steps(["snapshot"])
    assert not os.path.exists(cfg["snapshot"])
    assert json.loads(Path(cfg["journal"]).read_text().splitlines()[-1])["event"] == "fail"


FAKE_DOCKER_EVENTS = """#!/bin/sh
echo "$*" >> "$0.log"
case "$1" in
events) [ -z "$REPORT" ] || { sleep 0.2; echo other; echo "$REPORT"; }; exec sleep 30 ;;
start) echo "$2" ;;
esac
"""


@pytest.mark.parametrize("report", ["harbor-log", ""])
def test_harbor_log_starts_as_soon_as_dockerd_reports_its_creation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: str) -> None:
    """``EarlyStart`` starts the named container when dockerd's events report its creation
    (bounded in time: ``--since`` before, ``--until`` after), nothing else; without such
    an event its watch is ended at ``stop`` and nothing is started."""
    bin_dir = _docker_on_path(tmp_path, monkeypatch, FAKE_DOCKER_EVENTS)
    monkeypatch.setenv("REPORT", report)
    since = time.time()
    early = uw.EarlyStart("harbor-log", since)
    deadline = time.monotonic() + 10
    log = bin_dir / "docker.log"
    while (not log.exists() or (report and not early.started)) and time.monotonic() < deadline:
        time.sleep(0.05)
    began = time.monotonic()
    early.stop()
    assert time.monotonic() - began < 5
    calls = log.read_text().splitlines()
    events = calls[0].split()
    assert events[:5] == ["events", "--since", "%.6f" % (since - 1), "--until",
                          "%.6f" % (since + uw.EVENTS_SECONDS)]
    assert "container=harbor-log" in events and "event=create" in events
    assert early.started == bool(report)
    assert calls[1:] == (["start harbor-log"] if report else [])
