"""``backup create``: a consistent, streamed, checked, atomic Harbor backup.

pg_dump (custom format, uncompressed) runs on a snapshot exported by a held-open
session, so the manifest's row counts describe exactly what was dumped; its output
is compressed with multi-threaded zstd straight into ``<name>.partial`` in the backup
folder (no full copy in memory, no temp file anywhere else). The manifest is written
last, the file fsynced, read back and checked, then renamed to ``<name>``: whatever
kills the process, a listed backup is a complete one.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard
from psycopg import sql

from harbor_ops.backup import archive
from harbor_ops.backup.crypto import SUFFIX as SEALED_SUFFIX
from harbor_ops.backup.manifest import (
    DB_MEMBER,
    FILES_MEMBER,
    FIXED_ARCNAMES,
    KEY_TABLES,
    MANIFEST_MEMBER,
    PARTIAL_SUFFIX,
    FileEntry,
    Manifest,
    backup_name,
    cert_arcname,
    is_host_backup,
    iso,
    recorded_path_problem,
    utc_now,
)
from harbor_ops.backup.sources import DbSource, SqlSession, pg_major_of
from harbor_ops.core.errors import BackupError, NoSpace
from harbor_ops.core.fsutil import fsync_dir
from harbor_ops.core.hashing import HashingWriter
from harbor_ops.core.lock import job_lock
from harbor_ops.site.model import Encryption

# Compressed dump size / pg_database_size: measured about 0.16 on Harbor-shaped data
# (test-environment §7); 0.5 leaves room for data that compresses badly.
ESTIMATE_RATIO = 0.5
# zstd level 1: on a 250 MB Harbor-shaped database (bench/bench_backup.py) it was both
# faster and smaller than level 3 here (0.90 s / 18.4 MB against 1.00 s / 20.7 MB).
ZSTD_LEVEL = 1
_SPACE_CHECK_EVERY = 8 << 20

Progress = Callable[[str], None]


@dataclass(frozen=True)
class HostFiles:
    """Host files saved beside the dump. ``data_volume`` None: database only."""

    data_volume: Path | None = None
    harbor_yml: Path | None = None
    certificates: tuple[Path, ...] = ()
    include_redis: bool = False

    def entries(self) -> list[FileEntry]:
        out: list[FileEntry] = []
        if self.data_volume is not None:
            secret = self.data_volume / "secret"
            if not (secret / "keys" / "secretkey").is_file():
                raise BackupError(f"{secret}/keys/secretkey is missing: without it the "
                                  "secrets stored in Harbor's database cannot be decrypted",
                                  hint="check harbor.data_volume in the site file")
            out.append(FileEntry("secret", str(secret), FIXED_ARCNAMES["secret"]))
            redis = self.data_volume / "redis"
            if self.include_redis and redis.is_dir():
                out.append(FileEntry("redis", str(redis), FIXED_ARCNAMES["redis"]))
        if self.harbor_yml is not None:
            if not self.harbor_yml.is_file():
                raise BackupError(f"harbor.yml not found at {self.harbor_yml}")
            out.append(FileEntry("harbor_yml", str(self.harbor_yml),
                                 FIXED_ARCNAMES["harbor_yml"]))
        for i, cert in enumerate(self.certificates):
            if not cert.is_file():
                raise BackupError(f"certificate file {cert} (named in harbor.yml) is missing")
            out.append(FileEntry("certificate", str(cert), cert_arcname(i, cert.name)))
        return out

    def size(self, entry: FileEntry) -> int:
        return _tree_size(Path(entry.path))

    def add_to(self, tar: tarfile.TarFile, entry: FileEntry) -> None:
        tar.add(entry.path, arcname=entry.arcname, recursive=True)


class FileSource(Protocol):
    """Where the host files come from: this host (:class:`HostFiles`) or over SFTP."""

    def entries(self) -> list[FileEntry]: ...
    def size(self, entry: FileEntry) -> int: ...
    def add_to(self, tar: tarfile.TarFile, entry: FileEntry) -> None: ...


@dataclass(frozen=True)
class BackupResult:
    name: str
    path: Path
    size: int
    manifest: Manifest
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    # How pg_dump and psql reached the database (an SSH host's harbor-db: nsenter, or
    # docker exec and why); empty where there is one way.
    db_access: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": str(self.path), "size": self.size,
                "dry_run": self.dry_run, "notes": self.notes, "db_access": self.db_access,
                "manifest": self.manifest.to_dict()}


@dataclass
class _DbFacts:
    server_version_num: int
    size: int
    data_size: int  # user tables with their TOAST and indexes: what a dump is made of
    tables: list[str]
    schema_version: int | None
    schema_dirty: bool | None
    counts: dict[str, int]


def create_backup(*, backup_dir: Path, source: DbSource, files: FileSource,
                  harbor_version: str | None, hostname: str | None = None,
                  lock_path: Path | None = None, reserve_bytes: int | None = None,
                  estimate_ratio: float = ESTIMATE_RATIO, zstd_level: int = ZSTD_LEVEL,
                  dry_run: bool = False, progress: Progress | None = None,
                  encryption: Encryption | None = None) -> BackupResult:
    """Write one backup into ``backup_dir`` (holding the job lock) and return it.

    With ``encryption`` it is sealed (``.hbk.age``, :mod:`harbor_ops.backup.sealed`): the
    controller's copies of SSH hosts are never plain on its disk.
    """
    say = progress or (lambda _msg: None)
    host = hostname or socket.gethostname()
    with job_lock(lock_path, job="backup create"):
        backup_dir = Path(backup_dir)
        if dry_run:
            name = backup_name(host, utc_now())
            with source.session(snapshot=True) as session:
                base, needed = _plan(session, source, files, files.entries(), backup_dir,
                                     host, harbor_version, estimate_ratio, reserve_bytes)
            m = Manifest(**base, members=[], finished_at=iso(utc_now()))
            return BackupResult(name, backup_dir / name, 0, m, dry_run=True,
                                notes=[f"about {needed} bytes needed"])
        return write_backup(backup_dir=backup_dir, source=source, files=files,
                            harbor_version=harbor_version, hostname=host,
                            reserve_bytes=reserve_bytes, estimate_ratio=estimate_ratio,
                            zstd_level=zstd_level, progress=say, encryption=encryption)


def write_backup(*, backup_dir: Path, source: DbSource, files: FileSource,
                 harbor_version: str | None, hostname: str, reserve_bytes: int | None = None,
                 estimate_ratio: float = ESTIMATE_RATIO, zstd_level: int = ZSTD_LEVEL,
                 progress: Progress, encryption: Encryption | None = None) -> BackupResult:
    """The backup itself, for a caller that already holds the job lock (create, restore).

    The backup's name is reserved (its ``.partial`` created exclusively) before the
    database is read, so a clash is found before a dump, not after it. A sealed backup
    takes about twice its size while it is written (its spool, then itself).
    """
    entries = files.entries()
    refused = [p for e in entries if (p := recorded_path_problem(e))]
    if refused:  # verify and restore would refuse the backup: say so before the dump
        raise BackupError("; ".join(refused), hint="move the file out of that folder and "
                          "name its new path in the site file")
    _prepare_dir(backup_dir)
    clean_partials(backup_dir, hostname)
    partial = reserve_name(backup_dir, hostname, sealed=encryption is not None)
    name = partial.name.removesuffix(PARTIAL_SUFFIX)
    try:
        with source.session(snapshot=True) as session:
            base, _needed = _plan(session, source, files, entries, backup_dir, hostname,
                                  harbor_version, estimate_ratio * (2 if encryption else 1),
                                  reserve_bytes)
            snapshot = str(session.scalar(sql.SQL("SELECT pg_export_snapshot()")))
            if encryption is None:
                manifest = _write(partial, source, snapshot, files, entries, base,
                                  zstd_level, reserve_bytes, progress)
            else:
                from harbor_ops.backup.sealed import write_sealed

                manifest = write_sealed(partial, Dump(source, snapshot, files, entries,
                                                      zstd_level),
                                        base, _SpaceGuard(backup_dir, reserve_bytes),
                                        encryption, progress)
        final = _publish(partial, manifest)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(exc, partial) from None
        raise
    progress(f"backup {final} written")
    return BackupResult(name, final, final.stat().st_size, manifest,
                        db_access=source.reached())


def reserve_name(backup_dir: Path, host: str, *, sealed: bool = False) -> Path:
    """Create ``<name>.partial`` exclusively for a name no backup in the folder has
    (plain or sealed: ``<name>.age``)."""
    now = utc_now()
    for counter in range(1000):
        name = backup_name(host, now, counter)
        if (backup_dir / name).exists() or (backup_dir / (name + SEALED_SUFFIX)).exists():
            continue
        partial = backup_dir / (name + (SEALED_SUFFIX if sealed else "") + PARTIAL_SUFFIX)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return partial
    raise BackupError(f"no free backup name for {host} in {backup_dir} (1000 taken)")


def _plan(session: SqlSession, source: DbSource, files: FileSource, entries: list[FileEntry],
          backup_dir: Path, host: str, harbor_version: str | None, estimate_ratio: float,
          reserve_bytes: int | None) -> tuple[dict[str, Any], int]:
    """The manifest's fields known before the dump, after checking the space it needs."""
    facts = _db_facts(session)
    files_size = sum(files.size(e) for e in entries)
    needed = int(facts.data_size * estimate_ratio) + files_size + (1 << 20)
    _check_space(backup_dir if backup_dir.exists() else backup_dir.parent, needed,
                 reserve_bytes)
    base: dict[str, Any] = dict(
        harborctl_version=_harborctl_version(), harbor_version=harbor_version,
        source_kind=source.kind, source=source.describe(), database=source.dbname,
        pg_major=pg_major_of(facts.server_version_num),
        pg_server_version_num=facts.server_version_num, database_size=facts.size,
        schema_version=facts.schema_version, schema_dirty=facts.schema_dirty,
        row_counts=facts.counts, tables=facts.tables, files=entries,
        started_at=iso(utc_now()), hostname=host)
    return base, needed


def _publish(partial: Path, manifest: Manifest) -> Path:
    """Read the written file back, then give it its final name (never over another).

    A sealed backup was read back by its writer (the SHA-256 of the file on disk against
    what was encrypted): the identity that could open it need not be here.
    """
    sealed = partial.name.removesuffix(PARTIAL_SUFFIX).endswith(SEALED_SUFFIX)
    problems = [] if sealed else archive.check_members(partial, manifest)
    if problems:
        raise BackupError(f"backup read-back check failed: {'; '.join(problems)}")
    final = partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX))
    try:
        os.link(partial, final)  # atomic, and never replaces an existing backup
    except FileExistsError:
        raise BackupError(f"a backup named {final.name} already exists") from None
    partial.unlink()
    fsync_dir(partial.parent)
    return final


def _write_error(exc: OSError, partial: Path) -> BackupError:
    """What a user is told when writing the backup file failed (the partial is gone)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the backup folder {partial.parent} ran out of space during the "
                       "dump; the partial backup was removed",
                       hint="free space or prune old backups")
    return BackupError(f"writing {partial} failed: {exc}")


def clean_partials(backup_dir: Path, hostname: str) -> list[Path]:
    """Delete ``hostname``'s leftovers of interrupted runs (never another host's, which may
    be writing into a shared folder right now). Call only while holding the job lock."""
    removed = []
    for p in backup_dir.glob(f"*{PARTIAL_SUFFIX}"):
        if is_host_backup(p.name, hostname):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _prepare_dir(backup_dir: Path) -> None:
    backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(backup_dir, 0o700)


def _db_facts(session: SqlSession) -> _DbFacts:
    version_num = int(session.scalar(sql.SQL("SHOW server_version_num")))
    size = int(session.scalar(sql.SQL("SELECT pg_database_size(current_database())")))
    data_size = int(session.scalar(sql.SQL(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'")))
    tables = [str(r[0]) for r in session.query(sql.SQL(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))]
    schema_version: int | None = None
    dirty: bool | None = None
    if "schema_migrations" in tables:
        rows = session.query(sql.SQL(
            "SELECT version, dirty FROM public.schema_migrations LIMIT 1"))
        if rows:
            schema_version, dirty = int(rows[0][0]), rows[0][1] in (True, "t")
    counts = {t: int(session.scalar(sql.SQL("SELECT count(*) FROM public.{}").format(
        sql.Identifier(t)))) for t in KEY_TABLES if t in tables}
    return _DbFacts(version_num, size, data_size, tables, schema_version, dirty, counts)


def _check_space(folder: Path, needed: int, reserve: int | None) -> None:
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    keep = _reserve(st) if reserve is None else reserve
    if free - needed < keep:
        raise NoSpace(f"not enough free space in {folder}: {free} bytes free, about "
                          f"{needed} needed plus {keep} kept free",
                          hint="prune old backups or move backup.dir")


def _reserve(st: os.statvfs_result) -> int:
    """Space a backup never takes: 2% of the filesystem (at most 1 GiB)."""
    return min(st.f_blocks * st.f_frsize // 50, 1 << 30)


@dataclass(frozen=True)
class Dump:
    """What goes into a backup's two data members, written by whichever layout asks."""

    source: DbSource
    snapshot: str
    files: FileSource
    entries: list[FileEntry]
    level: int

    def compressor(self) -> zstandard.ZstdCompressor:
        return zstandard.ZstdCompressor(level=self.level, threads=-1)

    def database(self, sink: HashingWriter) -> None:
        """pg_dump of the exported snapshot, compressed into ``sink`` as it streams."""
        _dump(self.source, self.snapshot, self.compressor(), sink, level=self.level)

    def host_files(self, sink: HashingWriter) -> None:
        """The saved host files as a compressed tar stream into ``sink``."""
        with self.compressor().stream_writer(cast(IO[bytes], sink), closefd=False) as z, \
                tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for e in self.entries:
                self.files.add_to(tar, e)


def _write(partial: Path, source: DbSource, snapshot: str, files: FileSource,
           entries: list[FileEntry],
           manifest_base: dict[str, Any], level: int, reserve: int | None,
           say: Progress) -> Manifest:
    guard = _SpaceGuard(partial.parent, reserve)
    dump = Dump(source, snapshot, files, entries, level)
    fd = os.open(partial, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        writer = archive.ArchiveWriter(f, on_write=guard)
        say("dumping the database")
        sink = writer.begin(DB_MEMBER)
        dump.database(sink)
        writer.end(sink)
        say("saving host files")
        sink = writer.begin(FILES_MEMBER)
        dump.host_files(sink)
        writer.end(sink)
        manifest = Manifest(**manifest_base, members=list(writer.members),
                            finished_at=iso(utc_now()))
        writer.add_bytes(MANIFEST_MEMBER, manifest.to_json())
        writer.finish()
    return manifest


def _dump(source: DbSource, snapshot: str, cctx: zstandard.ZstdCompressor,
          sink: HashingWriter, *, level: int = ZSTD_LEVEL) -> None:
    """pg_dump's output into ``sink`` as one zstd stream, compressed here or at the source."""
    with tempfile.TemporaryFile() as err:
        proc, compressed = source.popen_dump(["-Fc", "-Z0", f"--snapshot={snapshot}"],
                                             zstd_level=level, stderr=err)
        assert proc.stdout is not None
        try:
            if compressed:
                for chunk in _chunks(proc.stdout):
                    sink.write(chunk)
            else:
                with cctx.stream_writer(cast(IO[bytes], sink), closefd=False) as z:
                    for chunk in _chunks(proc.stdout):
                        z.write(chunk)
        finally:
            if proc.poll() is None and not proc.stdout.closed:
                proc.stdout.close()
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc != 0:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
            raise BackupError(f"pg_dump of {source.describe()} failed ({rc}): "
                              + (" / ".join(lines[-3:]) or "no message"))


def _chunks(stream: object) -> Iterator[bytes]:
    read = stream.read1 if hasattr(stream, "read1") else stream.read  # type: ignore[attr-defined]
    while chunk := read(archive.CHUNK):
        yield chunk


class _SpaceGuard:
    """Stops a dump before it takes the last free space of the backup filesystem."""

    def __init__(self, folder: Path, reserve: int | None) -> None:
        self._folder = folder
        self._reserve = reserve
        self._since = 0

    def __call__(self, written: int) -> None:
        self._since += written
        if self._since < _SPACE_CHECK_EVERY:
            return
        self._since = 0
        st = os.statvfs(self._folder)
        keep = _reserve(st) if self._reserve is None else self._reserve
        if st.f_bavail * st.f_frsize < keep:
            raise OSError(errno.ENOSPC, "free space fell below the reserve")


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _harborctl_version() -> str:
    try:
        from importlib.metadata import version

        return version("harborctl")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"

