"""A Harbor host reached over SSH from the controller: its database and files, streamed.

Why: a fleet installed from one controller is backed up from it too (the pull model of
pgBackRest's repository host or borg over SSH), so nothing of harborctl is needed on the
Harbor hosts. The client tools run in the host's ``harbor-db`` through ``docker exec``
over an SSH exec channel; :class:`ChannelProcess` makes that channel look like the
``subprocess.Popen`` the backup engine already drives, so pg_dump's output streams from
the host straight into the controller's archive writer (no copy on the host's disk, none
in memory). Where the host has ``zstd``, pg_dump's output is compressed there, in the same
pipe, so about a sixth of the bytes cross the link (``backup.compress_on``). Files come and
go over SFTP. Host keys: unknown or changed keys are refused
(``RejectPolicy``), with the known keys of the site's ssh config or the user's own.
"""

from __future__ import annotations

import io
import posixpath
import re
import shlex
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from harbor_ops.backup.manifest import FIXED_ARCNAMES, FileEntry, cert_arcname
from harbor_ops.backup.sources import DbSource
from harbor_ops.core.errors import BackupError, RemoteError
from harbor_ops.site.model import HostEntry

if TYPE_CHECKING:
    import paramiko

# A stalled host (link down, sshd gone) must end a read instead of hanging the job.
IO_TIMEOUT = 120.0
_STDERR_KEEP = 64 << 10
_WINDOW = 8 << 20
# Larger packets than paramiko's 32 KiB default: fewer, bigger decrypts and reads per MB.
_MAX_PACKET = 256 << 10
# The host-side pipe, in POSIX sh (no pipefail): pg_dump's status comes back on fd 3, the
# compressed stream goes to the channel through fd 4; zstd's own failure is exit 70, no
# status at all 71.
_PIPE = ('exec 4>&1; s=$( {{ {{ {dump}; echo $? >&3; }} | zstd -q -{level} -T0 >&4; }} 3>&1 )'
         ' || exit 70; exit "${{s:-71}}"')
# A client tool (pg_dump, psql, pg_restore) run straight in the container's namespaces
# (nsenter), as the container's own user (never root), on this shell's stdin and stdout.
# Through `docker exec` every byte is relayed by dockerd and the docker client: on a 250 MB
# database that relay took twice pg_dump's own CPU on the host (3.0 against 1.0
# CPU-seconds), the cost that made backups of several hosts sharing CPUs slow. The tool is
# the server's neighbour (same build, same major), looked up through the container's own
# root. When anything of that is missing (no nsenter, the container not running, its
# server run as root or not named `postgres`), the tool runs through `docker exec` as
# before. The first line on stderr says which way it ran, and why not the direct one
# (:data:`_VIA`; one of harborctl's fixed reasons). Its words: harborctl's checked
# arguments and the container's name; what the host answers only ever fills quoted
# variables.
_DIRECT = (
    'p=$(docker inspect -f "{{{{.State.Pid}}}}" {container} 2>/dev/null); '
    'n=$(command -v nsenter); w=; '
    'if [ -z "$n" ]; then w="nsenter is not on the PATH"; '
    'elif ! [ "${{p:-0}}" -gt 0 ] 2>/dev/null; then w="the container is not running"; '
    'elif ! u=$(stat -c %u "/proc/$p") || ! g=$(stat -c %g "/proc/$p"); then '
    'w="its server process cannot be read"; '
    'elif [ "$u" -eq 0 ]; then w="its server runs as root"; '
    'elif ! b=$(readlink "/proc/$p/exe") || [ "${{b##*/}}" != postgres ]; then '
    'w="its server is not postgres"; '
    'elif ! [ -x "/proc/$p/root${{b%/*}}/{tool}" ]; then w="no {tool} beside its server"; fi; '
    'if [ -z "$w" ]; then echo "harborctl-via: nsenter" >&2; '
    'env -i "$n" -t "$p" -m -u -i -n -p -r -w -S "$u" -G "$g" -- "${{b%/*}}/{tool}" {args}; '
    'else echo "harborctl-via: docker exec ($w)" >&2; {fallback}; fi')
# The line above as harborctl reads it back: only its own words are taken from the host.
_VIA = re.compile(r"harborctl-via: (nsenter|docker exec \((?:nsenter is not on the PATH|"
                  r"the container is not running|its server process cannot be read|"
                  r"its server runs as root|its server is not postgres|"
                  r"no [a-z_]+ beside its server)\))")


def connect(entry: HostEntry, ssh_config: Path | None, *,
            accept_new_host_keys: bool = False) -> paramiko.SSHClient:
    """One SSH client to ``entry`` under the project's one host-key policy (hosts.ssh)."""
    from harbor_ops.hosts import ssh

    target = ssh.resolve(entry.name, address=entry.address, port=entry.port, user=entry.user,
                         key_file=entry.ssh_key_file, ssh_config=ssh_config,
                         accept_new_host_keys=accept_new_host_keys)
    client = ssh.connect(target)
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
    return client


def reason(exc: BaseException) -> str:
    """One line about a connection failure, never key material."""
    from harbor_ops.hosts.ssh import reason as ssh_reason

    return ssh_reason(exc)


class ChannelProcess:
    """``subprocess.Popen`` as the engine uses it, over one SSH exec channel.

    stderr is drained by a thread (and stdout too when it is not piped), so a chatty
    tool can never stall the channel's shared flow-control window.
    """

    def __init__(self, client: paramiko.SSHClient, command: str, *, stdin: Any,
                 stdout: Any, stderr: Any, text: bool,
                 on_via: Callable[[str], None] | None = None) -> None:
        # on_via: told the way a tool of :data:`_DIRECT` ran (that line is not kept)
        self._on_via, self._head = on_via, bytearray()
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise OSError("the SSH connection is closed")
        self.channel = transport.open_session(window_size=_WINDOW, max_packet_size=_MAX_PACKET)
        self.channel.settimeout(IO_TIMEOUT)
        self.channel.exec_command(command)
        mode = "" if text else "b"
        self.stdin = (self.channel.makefile_stdin("w" + mode) if stdin == subprocess.PIPE
                      else None)
        if stdin != subprocess.PIPE:
            self.channel.shutdown_write()
        self.stdout: Any = None
        if stdout == subprocess.PIPE:
            self.stdout = (self.channel.makefile("r") if text
                           else _ChannelReader(self.channel))
        self.returncode: int | None = None
        self._err_sink = stderr if hasattr(stderr, "write") else None
        self._err = bytearray()
        self._drain = threading.Thread(target=self._drain_loop, args=(stdout,), daemon=True)
        self._drain.start()

    def _drain_loop(self, stdout: Any) -> None:
        ch = self.channel
        try:
            while True:
                got = False
                if ch.recv_stderr_ready() or ch.exit_status_ready():
                    data = ch.recv_stderr(1 << 16)
                    if data:
                        self._keep_err(data)
                        got = True
                if stdout != subprocess.PIPE and ch.recv_ready():
                    got = bool(ch.recv(1 << 16)) or got
                if not got:
                    if ch.exit_status_ready() and not ch.recv_stderr_ready() and (
                            stdout == subprocess.PIPE or not ch.recv_ready()):
                        return
                    ch.status_event.wait(0.05)
        except (OSError, EOFError):
            return

    def _keep_err(self, data: bytes) -> None:
        """stderr's tail; its first line first goes to ``on_via`` when it is that line."""
        if self._on_via is not None:
            self._head += data
            line, newline, rest = bytes(self._head).partition(b"\n")
            if not newline and len(self._head) < 256:
                return  # the first line is not complete yet
            data, self._head = bytes(self._head), bytearray()
            found = _VIA.fullmatch(line.decode(errors="replace"))
            if found:
                self._on_via(found.group(1))
                data = rest
            self._on_via = None
        self._err += data
        del self._err[:-_STDERR_KEEP]

    def _flush_head(self) -> None:
        """A first stderr line that never ended (short, no newline) is the tool's own."""
        self._err[:0], self._head = self._head, bytearray()
        self._on_via = None

    def poll(self) -> int | None:
        if self.returncode is None and self.channel.exit_status_ready():
            self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self.channel.status_event.wait(timeout):
                raise subprocess.TimeoutExpired("ssh", timeout or 0)
            self._finish()
        assert self.returncode is not None
        return self.returncode

    def _finish(self) -> None:
        self._drain.join(timeout=5)
        self._flush_head()
        # -1: the channel closed without an exit status (the connection dropped).
        self.returncode = self.channel.recv_exit_status()
        if self.returncode == -1:
            self._err += b"\nthe SSH connection was lost before the command ended"
        if self._err_sink is not None:
            self._err_sink.write(bytes(self._err))
            self._err_sink.flush()

    def kill(self) -> None:
        self.channel.close()


@dataclass(frozen=True, eq=False)
class SshDockerSource(DbSource):
    """Harbor's ``harbor-db`` on an SSH host; the tools run inside it, over SSH."""

    host: str = ""
    client: Any = field(default=None, repr=False)
    container: str = "harbor-db"
    user: str = "postgres"
    dbname: str = "registry"
    sudo: bool = False
    zstd_on_host: bool = False  # compress pg_dump's output on the host (it has zstd)
    kind: str = "docker"
    # How each tool reached the database in this run: "nsenter" or "docker exec (why)".
    ways: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def reached(self) -> dict[str, str]:
        return dict(self.ways)

    def argv(self, tool: str, args: Sequence[str], *, dbname: str | None = None) -> list[str]:
        prefix = ["sudo", "-n"] if self.sudo else []
        return [*prefix, "docker", "exec", "-i", self.container, tool, "-U", self.user,
                "-d", dbname or self.dbname, *args]

    def describe(self) -> str:
        return f"host {self.host}, container {self.container}, database {self.dbname}"

    def popen(self, tool: str, args: Sequence[str], *, dbname: str | None = None,
              stdin: int | IO[bytes] | None = subprocess.DEVNULL,
              stdout: int | IO[bytes] | None = subprocess.PIPE,
              stderr: int | IO[bytes] | None = None,
              text: bool = False) -> Any:
        return self._run(tool, self._command(tool, args, dbname=dbname), stdin=stdin,
                         stdout=stdout, stderr=stderr, text=text, on_via=self._seen(tool))

    def popen_dump(self, args: Sequence[str], *, zstd_level: int,
                   stderr: IO[bytes]) -> tuple[Any, bool]:
        """pg_dump, piped into the host's zstd when it has one (the stream is then
        compressed)."""
        pipe = _PIPE.format(dump="{script}", level=int(zstd_level)) if self.zstd_on_host else ""
        command = self._command("pg_dump", args, pipe=pipe)
        return self._run("pg_dump", command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=stderr, text=False, on_via=self._seen("pg_dump")), \
            self.zstd_on_host

    def _seen(self, tool: str) -> Callable[[str], None]:
        return lambda way: self.ways.__setitem__(tool, way)

    def _command(self, tool: str, args: Sequence[str], *, dbname: str | None = None,
                 pipe: str = "") -> str:
        """The remote command line: ``tool`` in the container (:data:`_DIRECT`), inside
        ``pipe`` (a script with a ``{script}`` hole) when given, with sudo for a user that
        is not root."""
        if not _TOOL.fullmatch(tool):
            raise BackupError(f"host {self.host}: refusing tool name {tool!r}")
        _check_args(self.host, tool, args)
        docker = self.argv(tool, args, dbname=dbname)[2 if self.sudo else 0:]
        script = _DIRECT.format(container=shlex.quote(self.container), tool=tool,
                                args=shlex.join(docker[docker.index(tool) + 1:]),
                                fallback=shlex.join(docker))
        if pipe:
            script = pipe.replace("{script}", script)
        return shlex.join([*(["sudo", "-n"] if self.sudo else []), "sh", "-c", script])

    def _run(self, tool: str, command: str, **kw: Any) -> ChannelProcess:
        try:
            return ChannelProcess(self.client, command, **kw)
        except Exception as exc:  # noqa: BLE001 - paramiko raises many kinds
            raise RemoteError(f"host {self.host}: cannot run {tool}: {reason(exc)}") from None


def has_zstd(client: paramiko.SSHClient, host: str) -> bool:
    """True when ``zstd`` is on the host's PATH (one short exec channel)."""
    proc = SshDockerSource(host=host, client=client)._run(
        "zstd", "command -v zstd >/dev/null 2>&1", stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=None, text=False)
    return proc.wait(timeout=IO_TIMEOUT) == 0


def _check_args(host: str, tool: str, args: Sequence[str]) -> None:
    for a in args:
        if not _SAFE_ARG.fullmatch(a):
            raise BackupError(f"host {host}: refusing argument {a!r} for {tool}")


# Every argument harborctl passes to a client tool: flags, a snapshot id, names.
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_=.:/+-]+$")
_TOOL = re.compile(r"^[a-z_]+$")  # pg_dump, psql, pg_restore


@dataclass(frozen=True)
class SftpFiles:
    """The files :class:`~harbor_ops.backup.engine.HostFiles` saves, read over SFTP."""

    sftp: Any = field(repr=False)
    host: str
    data_volume: str
    harbor_yml: str
    certificates: tuple[str, ...] = ()
    include_redis: bool = False
    optional: bool = False  # what exists now (a restore's safety backup): skip the missing

    def _stat(self, path: str) -> Any:
        try:
            return self.sftp.stat(path)
        except FileNotFoundError:
            return None

    def entries(self) -> list[FileEntry]:
        with ssh_errors(self.host, "reading Harbor's files over SFTP"):
            return self._entries()

    def _entries(self) -> list[FileEntry]:
        secret = posixpath.join(self.data_volume, "secret")
        st = self._stat(posixpath.join(secret, "keys", "secretkey"))
        out: list[FileEntry] = []
        if st is not None and stat.S_ISREG(st.st_mode or 0):
            out.append(FileEntry("secret", secret, FIXED_ARCNAMES["secret"]))
        elif not self.optional:
            raise BackupError(f"host {self.host}: {secret}/keys/secretkey is missing: without "
                              "it the secrets stored in Harbor's database cannot be decrypted",
                              hint="check harbor.data_volume in the site file")
        redis = posixpath.join(self.data_volume, "redis")
        st = self._stat(redis)
        if self.include_redis and st is not None and stat.S_ISDIR(st.st_mode or 0):
            out.append(FileEntry("redis", redis, FIXED_ARCNAMES["redis"]))
        if self._stat(self.harbor_yml) is not None:
            out.append(FileEntry("harbor_yml", self.harbor_yml, FIXED_ARCNAMES["harbor_yml"]))
        elif not self.optional:
            raise BackupError(f"host {self.host}: harbor.yml not found at {self.harbor_yml}")
        for i, cert in enumerate(self.certificates):
            if self._stat(cert) is None and self.optional:
                continue
            if self._stat(cert) is None:
                raise BackupError(f"host {self.host}: certificate file {cert} (named in "
                                  "harbor.yml) is missing")
            out.append(FileEntry("certificate", cert, cert_arcname(i, PurePosixPath(cert).name)))
        return out

    def size(self, entry: FileEntry) -> int:
        with ssh_errors(self.host, f"reading {entry.path} over SFTP"):
            return sum(attr.st_size or 0 for _p, attr in self._walk(entry.path)
                       if stat.S_ISREG(attr.st_mode or 0))

    def add_to(self, tar: tarfile.TarFile, entry: FileEntry) -> None:
        with ssh_errors(self.host, f"saving {entry.path} over SFTP"):
            self._add_to(tar, entry)

    def _add_to(self, tar: tarfile.TarFile, entry: FileEntry) -> None:
        sftp = self.sftp
        for path, attr in self._walk(entry.path):
            rel = posixpath.relpath(path, entry.path)
            info = tarfile.TarInfo(entry.arcname if rel == "." else
                                   posixpath.join(entry.arcname, rel))
            info.mode = stat.S_IMODE(attr.st_mode or 0)
            info.uid, info.gid = attr.st_uid or 0, attr.st_gid or 0
            info.mtime = int(attr.st_mtime or 0)
            if stat.S_ISDIR(attr.st_mode or 0):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(attr.st_mode or 0):
                info.size = attr.st_size or 0
                with sftp.open(path, "rb") as f:
                    f.prefetch(info.size)
                    tar.addfile(info, _Exact(f, info.size, path))

    def _walk(self, top: str) -> list[tuple[str, Any]]:
        """(path, attributes) of ``top`` and everything under it; symlinks are skipped."""
        sftp = self.sftp
        out: list[tuple[str, Any]] = []
        stack = [(top, sftp.stat(top))]
        while stack:
            path, attr = stack.pop()
            out.append((path, attr))
            if stat.S_ISDIR(attr.st_mode or 0):
                for child in sorted(sftp.listdir_attr(path), key=lambda a: a.filename):
                    name = child.filename
                    if name in (".", "..") or "/" in name or stat.S_ISLNK(child.st_mode or 0):
                        continue
                    stack.append((posixpath.join(path, name), child))
        return out


@contextmanager
def ssh_errors(host: str, what: str) -> Iterator[None]:
    """A dropped connection or a failed SFTP step, as a RemoteError naming the host."""
    import paramiko

    try:
        yield
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise RemoteError(f"host {host}: {what} failed: {reason(exc)}") from None


class _ChannelReader:
    """Binary stdout of a channel: each ``read1`` is one ``recv`` (no re-buffering)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self.closed = False

    def read1(self, n: int = 1 << 20) -> bytes:
        try:
            return bytes(self._channel.recv(n))
        except EOFError:  # the transport died under us: the stream ends here, and the
            return b""  # exit status (-1) then says the connection was lost

    read = read1

    def close(self) -> None:
        self.closed = True


class _Exact(io.RawIOBase):
    """A file that yields exactly the size its tar header announced, or fails."""

    def __init__(self, f: Any, size: int, path: str) -> None:
        self._f, self._left, self._path = f, size, path

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n) if n else b""
        if n and not data:
            raise BackupError(f"{self._path} shrank while it was being saved")
        self._left -= len(data)
        return bytes(data)
