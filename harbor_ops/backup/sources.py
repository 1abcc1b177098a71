"""Where Harbor's database is: inside the ``harbor-db`` container, or an external server.

A source only knows how to build the argv and environment for the PostgreSQL client
tools (pg_dump, pg_restore, psql); the engine runs them. Passwords travel in the
child's environment (PGPASSWORD), never on a command line.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harbor_ops.core.errors import BackupError

PG_ROOT = Path("/usr/lib/postgresql")


def pg_bindir(major: str | None = None, *, root: Path = PG_ROOT) -> Path | None:
    """The client binaries of one PostgreSQL major, or the newest installed when None."""
    if major is not None:
        d = root / major / "bin"
        return d if (d / "pg_restore").exists() else None
    found = []
    for d in root.glob("*/bin"):
        try:
            found.append((float(d.parent.name), d))
        except ValueError:
            continue
    return max(found)[1] if found else None


def pg_major_of(server_version_num: int) -> str:
    """150020 -> '15'; 90624 -> '9.6'."""
    if server_version_num >= 100000:
        return str(server_version_num // 10000)
    return f"{server_version_num // 10000}.{server_version_num // 100 % 100}"


class DbSource(ABC):
    kind: str
    dbname: str

    @abstractmethod
    def argv(self, tool: str, args: Sequence[str], *, dbname: str | None = None) -> list[str]:
        """Command line of a client tool connected to ``dbname`` (default: the source DB)."""

    def env(self) -> dict[str, str]:
        """Extra environment for the tool (secrets live here, never in argv)."""
        return {}

    @abstractmethod
    def describe(self) -> str:
        """Where the database is, without any secret."""

    def popen(self, tool: str, args: Sequence[str], *, dbname: str | None = None,
              stdin: int | IO[bytes] | None = subprocess.DEVNULL,
              stdout: int | IO[bytes] | None = subprocess.PIPE,
              stderr: int | IO[bytes] | None = None,
              text: bool = False) -> subprocess.Popen:  # type: ignore[type-arg]
        try:
            return subprocess.Popen(self.argv(tool, args, dbname=dbname), stdin=stdin,
                                    stdout=stdout, stderr=stderr, text=text,
                                    env={**os.environ, **self.env()})
        except OSError as exc:
            raise BackupError(f"cannot run {tool} for {self.describe()}: {exc}") from None


@dataclass(frozen=True)
class ExternalSource(DbSource):
    """A PostgreSQL server reached over TCP or a unix socket directory."""

    host: str
    port: int = 5432
    user: str = "postgres"
    dbname: str = "registry"
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None
    bindir: Path | None = None
    kind: str = "external"

    def argv(self, tool: str, args: Sequence[str], *, dbname: str | None = None) -> list[str]:
        bindir = self.bindir or pg_bindir()
        exe = str(bindir / tool) if bindir else tool
        return [exe, "-h", self.host, "-p", str(self.port), "-U", self.user,
                "-d", dbname or self.dbname, *args]

    def env(self) -> dict[str, str]:
        out = {"PGCONNECT_TIMEOUT": "10"}
        if self.password is not None:
            out["PGPASSWORD"] = self.password
        if self.sslmode:
            out["PGSSLMODE"] = self.sslmode
        return out

    def describe(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class DockerExecSource(DbSource):
    """Harbor's own ``harbor-db`` container; tools run inside it, so versions always match."""

    container: str = "harbor-db"
    user: str = "postgres"
    dbname: str = "registry"
    docker: str = "docker"
    docker_env: Mapping[str, str] = field(default_factory=dict)
    kind: str = "docker"

    def argv(self, tool: str, args: Sequence[str], *, dbname: str | None = None) -> list[str]:
        return [self.docker, "exec", "-i", self.container, tool, "-U", self.user,
                "-d", dbname or self.dbname, *args]

    def env(self) -> dict[str, str]:
        return dict(self.docker_env)

    def describe(self) -> str:
        return f"container {self.container}, database {self.dbname}"


class SqlSession:
    """One psql session held open: queries answered line by line, in one transaction.

    Used to export a snapshot that pg_dump then shares, so that row counts in the
    manifest and the dump describe exactly the same moment even while Harbor writes.
    """

    _END = "__harborctl_end__"

    def __init__(self, source: DbSource, *, dbname: str | None = None) -> None:
        self.source = source
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = source.popen("psql", ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                                  dbname=dbname, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self._err, text=True)

    def query(self, sql: str) -> list[list[str]]:
        """Rows of one statement, fields split on '|'."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(f"{sql.rstrip().rstrip(';')};\nSELECT '{self._END}';\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure() from None
        rows: list[list[str]] = []
        while True:
            line = self._proc.stdout.readline()
            if not line:
                raise self._failure()
            line = line.rstrip("\n")
            if line == self._END:
                return rows
            rows.append(line.split("|"))

    def scalar(self, sql: str) -> str:
        rows = self.query(sql)
        if not rows:
            raise BackupError(f"no result from the database for: {sql}")
        return rows[0][0]

    def _failure(self) -> BackupError:
        self._proc.wait(timeout=30)
        self._err.seek(0)
        lines = [ln.strip() for ln in self._err.read().decode(errors="replace").splitlines()
                 if ln.strip()]
        detail = " / ".join(lines[-3:]) or f"psql exited with {self._proc.returncode}"
        return BackupError(f"database {self.source.describe()} failed: {detail}")

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("COMMIT;\n\\q\n")
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._err.close()

    def __enter__(self) -> SqlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
