"""Which way a client tool entered an SSH host's harbor-db, as the host's script says it
and as harborctl reads it back (the bed test test_backup_docker_exec.py forces the fallback
on a real host)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from harbor_ops.backup.ssh_host import ChannelProcess, SshDockerSource


def _fake_docker(bin_dir: Path, pid: str) -> None:
    """``docker inspect`` prints ``pid`` (fails when empty); ``docker exec`` says it ran."""
    docker = bin_dir / "docker"
    docker.write_text(f"""#!/bin/sh
case "$1" in
  inspect) [ -n "{pid}" ] && echo {pid} || exit 1;;
  exec) shift; echo "docker-exec-ran $*";;
esac
""")
    docker.chmod(0o755)


@pytest.mark.parametrize(("nsenter", "pid", "why"), [
    (False, "1", "nsenter is not on the PATH"),
    (True, "", "the container is not running"),
    (True, "1", "its server runs as root"),  # PID 1 here is root's
])
def test_the_script_says_why_it_falls_back_and_then_runs_docker_exec(
        tmp_path: Path, nsenter: bool, pid: str, why: str) -> None:
    """The host's script, run by this machine's sh with a PATH holding only a stand-in
    docker (and nsenter when asked) and the few tools the script uses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_docker(bin_dir, pid)
    for tool in ("stat", "readlink", "env", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    if nsenter:
        (bin_dir / "nsenter").symlink_to(bin_dir / "cat")
    source = SshDockerSource(host="h1", client=None)
    command = source._command("pg_dump", ["-Fc"])
    argv = shlex.split(command)
    assert argv[:2] == ["sh", "-c"]
    proc = subprocess.run(["/bin/sh", "-c", argv[2]], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)}, timeout=30, check=False)
    assert proc.stderr.splitlines()[0] == f"harborctl-via: docker exec ({why})", proc.stderr
    assert proc.stdout.strip() == ("docker-exec-ran -i harbor-db pg_dump -U postgres "
                                   "-d registry -Fc")


class _Heard:
    def __init__(self) -> None:
        self.ways: list[str] = []


def _process(heard: _Heard) -> ChannelProcess:
    """A ChannelProcess's stderr handling alone (no channel)."""
    proc = ChannelProcess.__new__(ChannelProcess)
    proc._on_via, proc._head, proc._err = heard.ways.append, bytearray(), bytearray()
    return proc


@pytest.mark.parametrize(("chunks", "ways", "kept"), [
    ([b"harborctl-via: nsenter\npg_dump: warning\n"], ["nsenter"], b"pg_dump: warning\n"),
    ([b"harborctl-via: docker ex", b"ec (its server runs as root)\n", b"x"],
     ["docker exec (its server runs as root)"], b"x"),
    # the host's own words never become a way: the line stays in the tool's stderr
    ([b"harborctl-via: docker exec (rm -rf /)\n"], [], b"harborctl-via: docker exec (rm -rf /)\n"),
    ([b"sudo: a password is required\n"], [], b"sudo: a password is required\n"),
    ([b"harborctl-via: nsenter\n", b"harborctl-via: nsenter\n"], ["nsenter"],
     b"harborctl-via: nsenter\n"),  # only the first line is the script's
])
def test_the_first_stderr_line_is_the_way_and_is_not_kept(
        chunks: list[bytes], ways: list[str], kept: bytes) -> None:
    heard = _Heard()
    proc = _process(heard)
    for chunk in chunks:
        proc._keep_err(chunk)
    assert heard.ways == ways and bytes(proc._err) == kept


def test_a_short_unended_first_line_is_kept_at_the_end() -> None:
    heard = _Heard()
    proc = _process(heard)
    proc._keep_err(b"error without newline")
    assert bytes(proc._err) == b""
    proc._flush_head()  # as the process ends
    assert bytes(proc._err) == b"error without newline" and heard.ways == []


def test_the_source_reports_each_tool_it_heard_of() -> None:
    source = SshDockerSource(host="h1", client=None)
    assert source.reached() == {}
    source._seen("pg_dump")("nsenter")
    source._seen("psql")("docker exec (nsenter is not on the PATH)")
    assert source.reached() == {"pg_dump": "nsenter",
                                "psql": "docker exec (nsenter is not on the PATH)"}
