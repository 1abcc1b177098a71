"""``backup verify`` (checksums + a real restore drill) and ``backup restore``.

A backup is only trusted once it has been restored: verify streams the dump into a
throw-away PostgreSQL cluster of the same major (initdb/pg_ctl on a unix socket in a
temp folder, run as ``postgres``) and compares row counts with the manifest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import zstandard
from packaging.version import InvalidVersion, Version

from harbor_ops.backup import archive
from harbor_ops.backup.manifest import (
    DB_MEMBER,
    FILES_MEMBER,
    Manifest,
    iso,
    read_sidecar,
    utc_now,
    write_sidecar,
)
from harbor_ops.backup.sources import DbSource, ExternalSource, SqlSession, pg_bindir, pg_major_of
from harbor_ops.backup.stack import HEALTH_TIMEOUT, HarborStack, wait_healthy
from harbor_ops.core.errors import BackupError
from harbor_ops.core.lock import job_lock

Progress = Callable[[str], None]
_RESTORE_FLAGS = ["--no-owner", "--no-privileges", "--clean", "--if-exists",
                  "--single-transaction", "--exit-on-error"]


def load_manifest(path: Path) -> Manifest:
    try:
        return archive.read_manifest(path)
    except Exception as exc:  # noqa: BLE001 - any damage means "not a usable backup"
        raise BackupError(f"{path.name} is not a complete backup: its manifest cannot be "
                          f"read ({exc})") from None


# ------------------------------------------------------------------ verify


@dataclass
class VerifyResult:
    name: str
    ok: bool
    checksums_ok: bool
    restore_ok: bool | None
    row_counts: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify_backup(*, path: Path, lock_path: Path | None = None,
                  scratch_root: Path | None = None, restore_drill: bool = True,
                  progress: Progress | None = None) -> VerifyResult:
    """Check every checksum, then restore into a scratch cluster; record the outcome."""
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    with job_lock(lock_path, job="backup verify"):
        result = VerifyResult(path.name, ok=False, checksums_ok=False, restore_ok=None)
        try:
            manifest = load_manifest(path)
            problems = archive.check_members(path, manifest)
            if problems:
                raise BackupError(f"{path.name}: " + "; ".join(problems))
            result.checksums_ok = True
            if restore_drill:
                say(f"restoring into a scratch PostgreSQL {manifest.pg_major}")
                with scratch_cluster(manifest.pg_major, root=scratch_root) as scratch:
                    target = scratch.source(manifest.database)
                    with SqlSession(scratch.source("postgres")) as s:
                        s.query(f'CREATE DATABASE "{manifest.database}"')
                    restore_database(path=path, target=target)
                    result.row_counts = _compare_counts(target, manifest)
                result.restore_ok = True
            result.ok = True
        except BackupError as exc:
            if result.checksums_ok:
                result.restore_ok = False
            result.error = str(exc)
        result.duration_seconds = round(time.monotonic() - t0, 3)
        if path.is_file():
            write_sidecar(path, {**result.to_dict(), "verified_at": iso(utc_now())})
        if result.error:
            raise BackupError(f"verify failed: {result.error}")
        return result


class ScratchCluster:
    def __init__(self, folder: Path, bindir: Path) -> None:
        self.folder = folder
        self.bindir = bindir

    def source(self, dbname: str) -> ExternalSource:
        return ExternalSource(host=str(self.folder), port=5432, user="postgres", dbname=dbname)


@contextmanager
def scratch_cluster(major: str, *, root: Path | None = None) -> Iterator[ScratchCluster]:
    """A throw-away cluster of one major on a unix socket only; always stopped and deleted."""
    bindir = pg_bindir(major)
    if bindir is None or not (bindir / "initdb").exists():
        raise BackupError(f"no PostgreSQL {major} server binaries for the restore drill",
                          hint=f"install postgresql-{major}")
    folder = Path(tempfile.mkdtemp(prefix="harborctl-drill-", dir=root))
    data = folder / "data"
    started = False
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        os.chmod(folder, 0o700)
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], "initdb")
        opts = (f"-p 5432 -k {folder} -c listen_addresses='' -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off")
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                      "-o", opts, "-w", "-t", "60", "start"], "pg_ctl start")
        started = True
        yield ScratchCluster(folder, bindir)
    finally:
        if started:
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                          "stop"], "pg_ctl stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _as_postgres(argv: list[str], what: str, *, check: bool = True) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd="/")
    if check and proc.returncode != 0:
        raise BackupError(f"scratch cluster {what} failed: {proc.stderr.strip()[-500:]}")


def _compare_counts(target: DbSource, manifest: Manifest) -> dict[str, int]:
    with SqlSession(target) as s:
        counts = {t: int(s.scalar(f'SELECT count(*) FROM public."{t}"'))
                  for t in manifest.row_counts}
        schema = None
        if manifest.schema_version is not None:
            schema = int(s.scalar("SELECT version FROM public.schema_migrations LIMIT 1"))
    diffs = [f"{t}: {counts[t]} rows, manifest {n}" for t, n in manifest.row_counts.items()
             if counts[t] != n]
    if schema != manifest.schema_version:
        diffs.append(f"schema_migrations {schema}, manifest {manifest.schema_version}")
    if diffs:
        raise BackupError("restored database differs from the manifest: " + "; ".join(diffs))
    return counts


# ------------------------------------------------------------------ restore


def restore_database(*, path: Path, target: DbSource) -> None:
    """Stream db.dump.zst into pg_restore: one transaction, so a failure changes nothing."""
    with tempfile.TemporaryFile() as err:
        proc = target.popen("pg_restore", _RESTORE_FLAGS, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=err)
        assert proc.stdin is not None
        broken = False
        try:
            with zstandard.ZstdDecompressor().stream_writer(proc.stdin, closefd=False) as z:
                for chunk in archive.iter_member(path, DB_MEMBER):
                    z.write(chunk)
        except BrokenPipeError:
            broken = True
        except zstandard.ZstdError as exc:
            proc.kill()
            proc.wait()
            raise BackupError(f"{path.name}: the database dump is damaged ({exc})") from None
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                broken = True
        rc = proc.wait(timeout=3600)
        if rc != 0 or broken:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
            raise BackupError(f"pg_restore into {target.describe()} failed ({rc}): "
                              + (" / ".join(lines[-3:]) or "no message"))


def fit_problems(manifest: Manifest, *, installed_version: str | None,
                 target_pg_major: str | None) -> list[str]:
    """Why a backup does not fit the installed release (empty: it fits)."""
    out = []
    if target_pg_major is not None and target_pg_major != manifest.pg_major:
        out.append(f"the backup is from PostgreSQL {manifest.pg_major}, the target server "
                   f"is PostgreSQL {target_pg_major}")
    if manifest.schema_dirty:
        out.append(f"schema_migrations was dirty (version {manifest.schema_version}) when "
                   "the backup was taken")
    if installed_version and manifest.harbor_version:
        try:
            have, was = Version(installed_version), Version(manifest.harbor_version)
        except InvalidVersion:
            out.append(f"cannot compare Harbor versions {installed_version!r} and "
                       f"{manifest.harbor_version!r}")
        else:
            if have < was:
                out.append(f"the backup is from Harbor {was}, the installed Harbor {have} is "
                           "older (Harbor does not support downgrades)")
    return out


@dataclass
class RestoreResult:
    name: str
    target: str
    files: list[str]
    row_counts: dict[str, int]
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore_backup(*, path: Path, target: DbSource, data_volume: Path | None = None,
                   harbor_yml: Path | None = None, restore_certificates: bool = True,
                   installed_version: str | None = None, force: bool = False,
                   force_version: bool = False, harbor_dir: Path | None = None,
                   compose: Sequence[str] | None = None, health_url: str | None = None,
                   health_timeout: float = HEALTH_TIMEOUT, lock_path: Path | None = None,
                   dry_run: bool = False, progress: Progress | None = None) -> RestoreResult:
    """Put a backup back: database into ``target``, files under their destinations.

    Every refusal (damaged, failed verify, wrong Harbor version or PostgreSQL major)
    comes before Harbor is stopped, so a refused restore leaves the site as it was.
    With ``harbor_dir`` the compose stack is stopped, its database service started alone,
    restored into, the whole stack started again and (with ``health_url``) waited for.
    """
    say = progress or (lambda _m: None)
    with job_lock(lock_path, job="backup restore"):
        manifest = load_manifest(path)
        problems = archive.check_members(path, manifest)
        side = read_sidecar(path)
        warnings: list[str] = []
        if problems:
            if not force:
                raise BackupError(f"refusing to restore {path.name}: " + "; ".join(problems),
                                  hint="a damaged backup is restored only with --force")
            warnings += problems
        if side is not None and side.get("ok") is False:
            if not force:
                raise BackupError(f"refusing to restore {path.name}: its last verify failed "
                                  f"({side.get('error')})", hint="--force to restore anyway")
            warnings.append(f"last verify failed: {side.get('error')}")
        stack = (HarborStack(harbor_dir, target, compose)
                 if harbor_dir is not None and not dry_run else None)
        misfit = fit_problems(manifest, installed_version=installed_version,
                              target_pg_major=None)
        started_db = False
        if not misfit or force_version:
            try:
                target_major = _server_major(target, wait=False)
            except BackupError:
                if stack is None or target.kind != "docker":
                    raise
                say(f"starting Harbor's database ({stack.db_service}) to read its version")
                stack.compose("up", "-d", stack.db_service)
                started_db = True
                target_major = _server_major(target, wait=True)
            misfit = fit_problems(manifest, installed_version=installed_version,
                                  target_pg_major=target_major)
        if misfit and not force_version:
            if started_db and stack is not None:
                stack.compose("stop", stack.db_service)
            raise BackupError(f"refusing to restore {path.name}: " + "; ".join(misfit),
                              hint="--force-version to restore anyway")
        warnings += misfit
        plan = _file_plan(manifest, data_volume, harbor_yml, restore_certificates)
        if dry_run:
            return RestoreResult(path.name, target.describe(),
                                 [f"{a} -> {d}" for a, d in plan.items()], manifest.row_counts,
                                 dry_run=True, warnings=warnings)
        if stack is not None:
            say("stopping Harbor")
            stack.compose("down")
            if target.kind == "docker":
                stack.compose("up", "-d", stack.db_service)
                _server_major(target, wait=True)
        say("restoring the database")
        restore_database(path=path, target=target)
        counts = _compare_counts(target, manifest)
        say("restoring host files")
        written = _restore_files(path, plan)
        if stack is not None:
            say("starting Harbor")
            stack.compose("up", "-d")
            if health_url:
                say(f"waiting for {health_url} to report healthy")
                wait_healthy(health_url, timeout=health_timeout)
        return RestoreResult(path.name, target.describe(), written, counts, warnings=warnings)


def _server_major(target: DbSource, *, wait: bool) -> str:
    """The target server's major; waits (bounded) for a database that was just started."""
    attempts = 60 if wait else 1
    for attempt in range(attempts):
        try:
            with SqlSession(target) as s:
                return pg_major_of(int(s.scalar("SHOW server_version_num")))
        except BackupError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _file_plan(manifest: Manifest, data_volume: Path | None, harbor_yml: Path | None,
               certificates: bool) -> dict[str, Path]:
    """arcname prefix -> destination on this host."""
    plan: dict[str, Path] = {}
    for e in manifest.files:
        if e.role in ("secret", "redis") and data_volume is not None:
            plan[e.arcname] = data_volume / PurePosixPath(e.arcname).name
        elif e.role == "harbor_yml" and harbor_yml is not None:
            plan[e.arcname] = harbor_yml
        elif e.role == "certificate" and certificates:
            plan[e.arcname] = Path(e.path)
    return plan


def _restore_files(path: Path, plan: dict[str, Path]) -> list[str]:
    if not plan:
        return []
    written: list[str] = []
    with tarfile.open(path, mode="r:") as outer:
        raw = outer.extractfile(FILES_MEMBER)
        if raw is None:
            raise BackupError(f"{path.name} has no {FILES_MEMBER}")
        written += _extract(raw, plan)
    return written


def _extract(raw: IO[bytes], plan: dict[str, Path]) -> list[str]:
    written: list[str] = []
    with zstandard.ZstdDecompressor().stream_reader(raw) as z, \
            tarfile.open(fileobj=z, mode="r|") as tar:
        for info in tar:
            dest = _destination(info.name, plan)
            if dest is None:
                continue
            info.name = str(dest).lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            tar.extract(info, path="/", filter="tar")
            written.append(str(dest))
    return written


def _destination(arcname: str, plan: dict[str, Path]) -> Path | None:
    for prefix, dest in plan.items():
        if arcname == prefix:
            return dest
        if arcname.startswith(prefix + "/"):
            return dest / arcname[len(prefix) + 1:]
    return None
