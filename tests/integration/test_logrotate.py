"""The rendered host logrotate config, run by real logrotate on files owned by uid 10000.

What a user would notice: big Harbor logs are rotated and compressed while Harbor keeps
writing to the same file (copytruncate), small ones are left alone, the generations are
bounded, and Harbor's own in-container rotation (same files, its own state) shares one
``<name>.log.N.gz`` series with ours instead of leaving orphans.

logrotate resolves ``su 10000 10000`` through passwd/group. When this machine has no
account for uid 10000, logrotate runs in a private mount namespace where /etc/passwd and
/etc/group are bind-mounted copies that add one; the host's files are never changed.
"""

from __future__ import annotations

import gzip
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ops.render import engine as render
from harbor_ops.site.model import Logrotate
from tests.bed.fixtures import unavailable
from tests.unit.test_render import example_harbor, make_site

pytestmark = pytest.mark.integration

UID = render.HARBOR_UID
# Harbor's own rule (facts §12, prepare's templates/log/logrotate.conf.jinja), small sizes.
HARBOR_OWN = """{logs}/*.log {{
        rotate 50
        size 1k
        copytruncate
        compress
        missingok
        nodateext
}}
"""


def _has_account() -> bool:
    try:
        pwd.getpwuid(UID)
        return True
    except KeyError:
        return False


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder uid 10000 can traverse (pytest's tmp folders are 0700 root)."""
    if shutil.which("logrotate") is None:
        unavailable("logrotate is not installed (see .ci/provision)")
    if os.geteuid() != 0:
        unavailable("needs root: the test creates files owned by uid 10000")
    d = Path(tempfile.mkdtemp(prefix="harborctl-logrotate-"))
    d.chmod(0o755)
    try:
        if not _has_account():
            for name, line in (("passwd", f"harbor:x:{UID}:{UID}::/nonexistent:/bin/false\n"),
                               ("group", f"harbor:x:{UID}:\n")):
                (d / name).write_text(Path(f"/etc/{name}").read_text() + line)
                (d / name).chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d)


def _logrotate(work: Path, conf: Path, state: Path, *, as_uid: int | None = None) -> str:
    argv = ["logrotate", "-v", "-s", str(state), str(conf)]
    if as_uid is not None:  # Harbor's container runs its logrotate as uid 10000
        argv = ["setpriv", f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups", *argv]
    if (work / "passwd").exists():
        if shutil.which("unshare") is None:
            unavailable(f"no account for uid {UID} and no unshare to provide one privately")
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 '
                '&& exec "$@"', "sh", str(work / "passwd"), str(work / "group"), *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def _setup(work: Path, *, rotate: int) -> tuple[Path, Path]:
    logs = work / "logs"
    logs.mkdir()
    os.chown(logs, UID, UID)
    logs.chmod(0o755)
    harbor = example_harbor()
    harbor["log"]["local"]["location"] = str(logs)
    site = make_site(harbor=harbor, logrotate=Logrotate(rotate=rotate, max_size="1k",
                                                        max_age_days=30))
    text = render.render_texts(site, harbor_values=site.harbor, rel=site.release)[
        "logrotate/harbor"]
    conf = work / "harbor"
    conf.write_text(text)
    conf.chmod(0o644)
    return logs, conf


def _write(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
    os.chown(path, UID, UID)


def test_big_logs_rotate_small_ones_stay(workdir: Path) -> None:
    logs, conf = _setup(workdir, rotate=2)
    big = b"core: something happened\n" * 200  # ~5 KB > maxsize 1k
    _write(logs / "core.log", big)
    _write(logs / "portal.log", b"small\n")
    _logrotate(workdir, conf, workdir / "state")

    assert (logs / "core.log").stat().st_size == 0  # copytruncate: same file, emptied
    rotated = logs / "core.log.1.gz"
    assert gzip.decompress(rotated.read_bytes()) == big
    assert rotated.stat().st_uid == UID  # rotated as Harbor's uid, not root
    assert not (logs / "core.log.1").exists()  # compressed at once, like Harbor's own
    assert (logs / "portal.log").read_bytes() == b"small\n"
    assert not list(logs.glob("portal.log.*"))
    assert "core.log" in (workdir / "state").read_text()


def test_generations_are_bounded(workdir: Path) -> None:
    logs, conf = _setup(workdir, rotate=2)
    for n in range(4):
        _write(logs / "core.log", f"round {n}\n".encode() * 300)
        _logrotate(workdir, conf, workdir / "state")
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["core.log", "core.log.1.gz", "core.log.2.gz"]
    assert gzip.decompress((logs / "core.log.1.gz").read_bytes()).startswith(b"round 3")


def test_harbors_own_rotation_shares_the_same_series(workdir: Path) -> None:
    logs, conf = _setup(workdir, rotate=3)
    own = workdir / "harbor-own.conf"
    own.write_text(HARBOR_OWN.format(logs=logs))
    own.chmod(0o644)
    own_state = workdir / "own" / "logrotate.status"  # in harbor-log: /var/lib/logrotate
    own_state.parent.mkdir()
    os.chown(own_state.parent, UID, UID)
    for n in range(5):
        _write(logs / "jobservice.log", f"gen {n}\n".encode() * 300)
        if n % 2:
            _logrotate(workdir, own, own_state, as_uid=UID)  # harbor-log's hourly job
        else:
            _logrotate(workdir, conf, workdir / "state")  # the host's daily job
    names = sorted(p.name for p in logs.iterdir())
    assert all(re.fullmatch(r"jobservice\.log(\.\d+\.gz)?", n) for n in names), names
    assert gzip.decompress((logs / "jobservice.log.1.gz").read_bytes()).startswith(b"gen 4")
    assert gzip.decompress((logs / "jobservice.log.3.gz").read_bytes()).startswith(b"gen 2")
