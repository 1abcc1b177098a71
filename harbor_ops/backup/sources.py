"""Where Harbor's database is: inside the ``harbor-db`` container, or an external server.

A source builds the argv and environment for the PostgreSQL client tools (pg_dump,
pg_restore) and opens SQL sessions: psycopg where harborctl can reach the server, psql
inside the container otherwise. Passwords travel in the child's environment
(PGPASSWORD) or psycopg's connection, never on a command line.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from psycopg import sql

from harbor_ops.core.errors import BackupError

PG_ROOT = Path("/usr/lib/postgresql")
Statement = sql.SQL | sql.Composed


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

    def reached(self) -> dict[str, str]:
        """How each client tool reached the database so far (tool -> way), for a source
        that has more than one way (an SSH host); empty for the others."""
        return {}

    def session(self, *, dbname: str | None = None, snapshot: bool = False,
                autocommit: bool = False) -> SqlSession:
        """An open SQL session on ``dbname`` (default: the source DB).

        By default psql through :meth:`argv` (a container, an SSH host: wherever the
        client tools run); a source harborctl reaches directly uses psycopg.
        """
        return PsqlSession(self, dbname=dbname, snapshot=snapshot)  # psql: autocommit

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

    def popen_dump(self, args: Sequence[str], *, zstd_level: int,
                   stderr: IO[bytes]) -> tuple[Any, bool]:
        """pg_dump with ``args``, and whether its stdout is already zstd-compressed.

        Here it never is: the backup engine compresses. A source whose dump travels over
        a slower link (an SSH host) may compress where the dump runs instead.
        """
        return self.popen("pg_dump", args, stderr=stderr), False


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

    def session(self, *, dbname: str | None = None, snapshot: bool = False,
                autocommit: bool = False) -> SqlSession:
        return PgSession(self, dbname=dbname, snapshot=snapshot, autocommit=autocommit)


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


class SqlSession(ABC):
    """Statements on one database connection; identifiers always travel as identifiers.

    Statements are :mod:`psycopg.sql` objects: a table or database name is a
    ``sql.Identifier``, never text pasted into SQL, so no name (from a manifest, a
    catalog, a user) can end a statement or reach a shell.
    """

    @abstractmethod
    def query(self, stmt: Statement) -> list[tuple[Any, ...]]:
        """Rows of one statement (values as the driver gives them; see :meth:`scalar`)."""

    def scalar(self, stmt: Statement) -> Any:
        rows = self.query(stmt)
        if not rows:
            raise BackupError(f"no result from the database for: {stmt.as_string()}")
        return rows[0][0]

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SqlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PgSession(SqlSession):
    """A psycopg connection (external databases and the drill's scratch cluster).

    With ``snapshot`` the session is one REPEATABLE READ, READ ONLY transaction, so a
    snapshot it exports describes the same moment as every count it answers.
    """

    def __init__(self, source: ExternalSource, *, dbname: str | None = None,
                 snapshot: bool = False, autocommit: bool = False) -> None:
        import psycopg

        self.source = source
        try:
            self._conn = psycopg.connect(
                host=source.host, port=source.port, user=source.user,
                dbname=dbname or source.dbname, password=source.password,
                sslmode=source.sslmode or "prefer", connect_timeout=10,
                autocommit=autocommit)
        except psycopg.Error as exc:
            raise BackupError(f"database {source.describe()} failed: {_pg_reason(exc)}") \
                from None
        if snapshot:
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._conn.read_only = True

    def query(self, stmt: Statement) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self._conn.cursor() as cur:
                cur.execute(stmt)
                return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.Error as exc:
            raise BackupError(f"database {self.source.describe()} failed: "
                              f"{_pg_reason(exc)}") from None

    def close(self) -> None:
        self._conn.close()


def _pg_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return " / ".join(lines[-3:]) or type(exc).__name__


class PsqlSession(SqlSession):
    """psql inside the ``harbor-db`` container (locally or over SSH), held open: the
    server psycopg cannot reach (it listens only inside the container's network).

    Statements are rendered by psycopg (identifiers quoted by it) and each is followed by
    a sentinel query, so answers are read line by line without guessing where they end.
    """

    _END = "__harborctl_end__"

    def __init__(self, source: DbSource, *, dbname: str | None = None,
                 snapshot: bool = False) -> None:
        self.source = source
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self._proc = source.popen("psql", ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
                                  dbname=dbname, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self._err, text=True)
        if snapshot:
            self.query(sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))

    def query(self, stmt: Statement) -> list[tuple[Any, ...]]:
        text = stmt.as_string()
        if "\n" in text or "\\" in text:  # never: every statement of ours is one line
            raise BackupError("refusing a statement with a newline or backslash for psql")
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(f"{text.rstrip().rstrip(';')};\nSELECT '{self._END}';\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._failure() from None
        rows: list[tuple[Any, ...]] = []
        while True:
            line = self._proc.stdout.readline()
            if not line:
                raise self._failure()
            line = line.rstrip("\n")
            if line == self._END:
                return rows
            rows.append(tuple(line.split("|")))

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
