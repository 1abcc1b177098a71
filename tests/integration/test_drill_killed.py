"""A restore drill killed with -9 leaves its scratch PostgreSQL to the next run's sweep.

The drill's scratch cluster holds a whole copy of Harbor's database. The drill runs it in a
private work folder (:mod:`harbor_ops.core.workdir`) whose owner record names the server, so
after a ``kill -9`` of harborctl (no ``finally`` runs) the next run's sweep ends the server
(SIGQUIT, PostgreSQL's immediate shutdown) and removes the folder; while the drill lives the
sweep touches neither. As root, the folder goes where postgres may pass through: the temp
dir, else /var/tmp. Real PostgreSQL 15 server binaries, as root (the server runs as
postgres).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.backup import scratch
from harbor_ops.core import workdir
from harbor_ops.core.errors import EnvironmentMissing
from tests.bed.fixtures import unavailable
from tests.integration.pgfixture import available

pytestmark = pytest.mark.integration

# A drill's cluster, as the drill opens it; says where and waits to be killed.
CHILD = """
import sys, time
from pathlib import Path
from harbor_ops.backup.scratch import scratch_cluster
with scratch_cluster("15", root=Path(sys.argv[1])) as scratch:
    print(scratch.admin.host, flush=True)
    time.sleep(300)
"""


# A drill left to choose its folder, which ends normally: says where its cluster was.
CHOOSING = """
from harbor_ops.backup.scratch import scratch_cluster
with scratch_cluster("15") as scratch:
    print(scratch.admin.host, flush=True)
"""


@pytest.fixture
def root() -> Iterator[Path]:
    """A temp folder postgres can pass through (pytest's tmp_path parents are 0700)."""
    why = available()
    if why:
        unavailable(why)
    path = Path(tempfile.mkdtemp(prefix="drill-killed-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_drills_server_and_folder_are_swept_by_the_next_run(root: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        cluster = Path(proc.stdout.readline().strip())  # <work folder>/pg
        assert cluster.name == "pg", "the drill's cluster did not start"
        work = cluster.parent
        assert work.stat().st_mode & 0o777 == 0o711 and cluster.stat().st_uid != 0
        server = int((cluster / "data" / "postmaster.pid").read_text().split()[0])
        assert _running(server)

        assert workdir.sweep_stale(root) == []  # a live drill's folder is left alone
        assert _running(server) and work.is_dir()

        proc.send_signal(signal.SIGKILL)  # harborctl killed: no finally ran
        proc.wait(timeout=30)
        assert _running(server) and (cluster / "data").is_dir()  # what a kill used to leave

        assert workdir.sweep_stale(root) == [work.name]
        deadline = time.monotonic() + 10
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(server), "the killed drill's server still runs"
        assert not work.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        # never leave a server behind, whatever failed above
        for pidfile in root.glob("harborctl-drill-*/pg/data/postmaster.pid"):
            pid = int(pidfile.read_text().split()[0])
            if _running(pid):
                os.kill(pid, signal.SIGQUIT)


def test_a_tmpdir_closed_to_postgres_sends_the_cluster_to_var_tmp(root: Path) -> None:
    """TMPDIR under root's own 0700 home: initdb as postgres could not enter it."""
    home = root / "home"
    (home / "tmp").mkdir(parents=True)
    home.chmod(0o700)
    proc = subprocess.run([sys.executable, "-c", CHOOSING], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(home / "tmp")}, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cluster = Path(proc.stdout.strip())  # <work folder>/pg
    assert cluster.parent.parent == scratch.FALLBACK_ROOT
    assert cluster.parent.name.startswith("harborctl-drill-")
    assert not cluster.parent.exists(), "the drill's folder outlived it"
    assert list((home / "tmp").iterdir()) == []


def test_a_folder_given_closed_to_postgres_is_refused_by_name(root: Path) -> None:
    home = root / "home"
    (home / "tmp").mkdir(parents=True)
    home.chmod(0o700)
    with pytest.raises(EnvironmentMissing) as refused, \
            scratch.scratch_cluster("15", root=home / "tmp"):
        pass
    assert "cannot pass through " + str(home / "tmp") in str(refused.value)
    assert "TMPDIR" in str(refused.value)
