"""``backup verify``: every checksum, every file member, then a real restore drill.

A backup is only trusted once it has been restored: the dump is streamed into a
throw-away PostgreSQL cluster of the backup's own major (:mod:`harbor_ops.backup.scratch`)
and the row counts compared with the manifest. The drill restores as a role
that is not a superuser, into a database of a fixed name: nothing in the archive
chooses a name, and SQL hidden in a forged dump cannot reach a program or a file.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from psycopg import sql

from harbor_ops.backup import archive
from harbor_ops.backup.crypto import NoIdentity
from harbor_ops.backup.manifest import DB_MEMBER, Manifest, iso, utc_now, write_sidecar
from harbor_ops.backup.scratch import scratch_cluster
from harbor_ops.backup.sources import DbSource
from harbor_ops.core.errors import BackupError
from harbor_ops.core.lock import job_lock
from harbor_ops.core.signals import signals_raise

Progress = Callable[[str], None]
DRILL_DB = "harborctl_drill"
DRILL_ROLE = "harborctl_drill"
_RESTORE_FLAGS = ["--no-owner", "--no-privileges", "--clean", "--if-exists",
                  "--single-transaction", "--exit-on-error"]


def load_manifest(path: Path) -> Manifest:
    """The manifest of ``path``, refused when damaged or when it says what we never write."""
    try:
        manifest = archive.read_manifest(path)
    except NoIdentity:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage means "not a usable backup"
        raise BackupError(f"{path.name} is not a complete backup: its manifest cannot be "
                          f"read ({exc})") from None
    problems = manifest.untrusted_problems()
    if problems:
        raise BackupError(f"refusing {path.name}: its manifest is not one harborctl wrote: "
                          + "; ".join(problems))
    return manifest


def archive_problems(path: Path, manifest: Manifest) -> list[str]:
    """Checksums, then every member of the saved files (links, devices, escaping names)."""
    return archive.check_members(path, manifest) or archive.files_problems(path, manifest)


@dataclass
class VerifyResult:
    name: str
    ok: bool
    checksums_ok: bool
    restore_ok: bool | None
    row_counts: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0
    error: str | None = None
    drilled_in: str | None = None  # where the scratch restore ran

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# A restore drill run elsewhere (an SSH host's harbor-db image): the restored database's
# row counts of the manifest's key tables, and its schema_migrations version.
RemoteDrill = Callable[[Path, Manifest], tuple[dict[str, int], int | None]]


def verify_backup(*, path: Path, lock_path: Path | None = None,
                  scratch_root: Path | None = None, restore_drill: bool = True,
                  progress: Progress | None = None,
                  remote_drill: RemoteDrill | None = None) -> VerifyResult:
    """Check every checksum, then restore into a scratch cluster; record the outcome.

    ``remote_drill``: where the scratch restore runs for a backup of an SSH host when
    this machine lacks its PostgreSQL major (that host's own harbor-db image).
    """
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    with job_lock(lock_path, job="backup verify"), signals_raise():
        result = VerifyResult(path.name, ok=False, checksums_ok=False, restore_ok=None)
        try:
            say("checking checksums and file members")
            manifest = load_manifest(path)
            problems = archive_problems(path, manifest)
            if problems:
                raise BackupError(f"{path.name}: " + "; ".join(problems))
            result.checksums_ok = True
            if restore_drill and remote_drill is not None:
                say(f"restoring into a scratch PostgreSQL {manifest.pg_major} on the host")
                result.drilled_in = "a throw-away container of the host's harbor-db image"
                result.row_counts = check_counts(*remote_drill(path, manifest), manifest)
                result.restore_ok = True
            elif restore_drill:
                say(f"starting a scratch PostgreSQL {manifest.pg_major}")
                result.row_counts = drill(path, manifest, scratch_root, say, result)
                result.restore_ok = True
            result.ok = True
        except NoIdentity:
            raise  # this run cannot read it: nothing is known about the backup
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
        except BaseException:  # a signal: end pg_restore before it sees the end (no commit)
            proc.kill()
            proc.wait()
            raise
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


def drill(path: Path, manifest: Manifest, scratch_root: Path | None,
          say: Progress, result: VerifyResult) -> dict[str, int]:
    """Restore the dump into a scratch cluster (where: ``result.drilled_in``); the row
    counts it holds afterwards."""
    with scratch_cluster(manifest.pg_major, root=scratch_root,
                         harbor_version=manifest.harbor_version) as scratch:
        result.drilled_in = scratch.where
        with scratch.source("postgres", user="postgres").session(autocommit=True) as s:
            s.query(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(
                sql.Identifier(DRILL_ROLE)))
            s.query(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DRILL_DB), sql.Identifier(DRILL_ROLE)))
        target = scratch.source(DRILL_DB, user=DRILL_ROLE)
        say("restoring the dump into the scratch cluster")
        restore_database(path=path, target=target)
        say("comparing row counts")
        return compare_counts(target, manifest)


def compare_counts(target: DbSource, manifest: Manifest) -> dict[str, int]:
    """Row counts of the manifest's key tables in ``target``; raise when any differs."""
    with target.session() as s:
        counts = {t: int(s.scalar(sql.SQL("SELECT count(*) FROM public.{}").format(
            sql.Identifier(t)))) for t in manifest.row_counts}
        schema = None
        if manifest.schema_version is not None:
            schema = int(s.scalar(sql.SQL(
                "SELECT version FROM public.schema_migrations LIMIT 1")))
    return check_counts(counts, schema, manifest)


def check_counts(counts: dict[str, int], schema: int | None,
                 manifest: Manifest) -> dict[str, int]:
    """The restored counts, or a BackupError naming every table that differs."""
    diffs = [f"{t}: {counts.get(t)} rows, manifest {n}"
             for t, n in manifest.row_counts.items() if counts.get(t) != n]
    if schema != manifest.schema_version:
        diffs.append(f"schema_migrations {schema}, manifest {manifest.schema_version}")
    if diffs:
        raise BackupError("restored database differs from the manifest: " + "; ".join(diffs))
    return counts
