"""``backup restore``: put a backup back, refusing everything it can before Harbor stops.

Order: read and check the archive (checksums, manifest, every file member), check the
fit (Harbor version, PostgreSQL major), stage the host files beside their destinations;
only then stop Harbor, restore the database (one transaction: a failure changes
nothing), swap the staged files in, start Harbor and wait for its health.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from psycopg import sql

from harbor_ops.backup import archive
from harbor_ops.backup.drill import (  # verify_backup: the package's public entry point
    compare_counts,
    load_manifest,
    restore_database,
    verify_backup,
)
from harbor_ops.backup.hostfiles import Staged, file_plan, stage_files
from harbor_ops.backup.manifest import Manifest, read_sidecar
from harbor_ops.backup.sources import DbSource, pg_major_of
from harbor_ops.backup.stack import HEALTH_TIMEOUT, HarborStack, wait_healthy
from harbor_ops.core.errors import BackupError
from harbor_ops.core.lock import job_lock

__all__ = ["RestoreResult", "fit_problems", "restore_backup", "restore_database",
           "verify_backup"]
Progress = Callable[[str], None]


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
                   harbor_yml: Path | None = None, certificates: Sequence[Path] = (),
                   installed_version: str | None = None, force: bool = False,
                   force_version: bool = False, harbor_dir: Path | None = None,
                   compose: Sequence[str] | None = None, health_url: str | None = None,
                   health_timeout: float = HEALTH_TIMEOUT, lock_path: Path | None = None,
                   dry_run: bool = False, progress: Progress | None = None) -> RestoreResult:
    """Put a backup back: database into ``target``, files onto the site's own paths.

    Every refusal (damaged, hostile, failed verify, wrong Harbor version or PostgreSQL
    major) comes before Harbor is stopped, so a refused restore leaves the site as it was.
    With ``harbor_dir`` the compose stack is stopped, its database service started alone,
    restored into, the whole stack started again and (with ``health_url``) waited for.
    """
    say = progress or (lambda _m: None)
    with job_lock(lock_path, job="backup restore"):
        manifest = load_manifest(path)
        warnings = _archive_refusals(path, manifest, force=force)
        stack = (HarborStack(harbor_dir, target, compose)
                 if harbor_dir is not None and not dry_run else None)
        warnings += _fit_refusals(path, manifest, target, stack, say,
                                  installed_version=installed_version,
                                  force_version=force_version)
        plan, skipped = file_plan(manifest, data_volume=data_volume, harbor_yml=harbor_yml,
                                  certificates=certificates)
        warnings += skipped
        if dry_run:
            return RestoreResult(path.name, target.describe(),
                                 [f"{a} -> {d}" for a, d in plan.items()], manifest.row_counts,
                                 dry_run=True, warnings=warnings)
        say("checking and staging the host files")
        staged = stage_files(path, manifest, plan)
        try:
            counts = _replace(path, manifest, target, stack, staged, say)
        except BaseException:
            staged.undo()
            raise
        staged.finish()
        if stack is not None:
            say("starting Harbor")
            stack.compose("up", "-d")
            if health_url:
                say(f"waiting for {health_url} to report healthy")
                wait_healthy(health_url, timeout=health_timeout)
        return RestoreResult(path.name, target.describe(), staged.written, counts,
                             warnings=warnings)


def _archive_refusals(path: Path, manifest: Manifest, *, force: bool) -> list[str]:
    """Damage is restored only with ``force``; a hostile member never is."""
    files = archive.files_problems(path, manifest)
    problems = archive.check_members(path, manifest)
    if files and not problems:
        raise BackupError(f"refusing to restore {path.name}: " + "; ".join(files))
    warnings: list[str] = []
    if problems:
        if not force:
            raise BackupError(f"refusing to restore {path.name}: " + "; ".join(problems),
                              hint="a damaged backup is restored only with --force")
        warnings += problems
    side = read_sidecar(path)
    if side is not None and side.get("ok") is False:
        if not force:
            raise BackupError(f"refusing to restore {path.name}: its last verify failed "
                              f"({side.get('error')})", hint="--force to restore anyway")
        warnings.append(f"last verify failed: {side.get('error')}")
    return warnings


def _fit_refusals(path: Path, manifest: Manifest, target: DbSource,
                  stack: HarborStack | None, say: Progress, *,
                  installed_version: str | None, force_version: bool) -> list[str]:
    misfit = fit_problems(manifest, installed_version=installed_version, target_pg_major=None)
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
    return misfit


def _replace(path: Path, manifest: Manifest, target: DbSource, stack: HarborStack | None,
             staged: Staged, say: Progress) -> dict[str, int]:
    """Stop Harbor, restore the database, swap the staged files in."""
    if stack is not None:
        say("stopping Harbor")
        stack.compose("down")
        if target.kind == "docker":
            stack.compose("up", "-d", stack.db_service)
            _server_major(target, wait=True)
    say("restoring the database")
    restore_database(path=path, target=target)
    counts = compare_counts(target, manifest)
    say("restoring host files")
    staged.swap_in()
    return counts


def _server_major(target: DbSource, *, wait: bool) -> str:
    """The target server's major; waits (bounded) for a database that was just started."""
    attempts = 60 if wait else 1
    for attempt in range(attempts):
        try:
            with target.session() as s:
                return pg_major_of(int(s.scalar(sql.SQL("SHOW server_version_num"))))
        except BackupError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")
