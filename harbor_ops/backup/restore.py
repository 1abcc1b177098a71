"""``backup restore``: put a backup back, refusing everything it can before Harbor stops.

Order: read and check the archive (checksums, manifest, every file member), check the
fit (Harbor version, PostgreSQL major), stage the host files beside their destinations,
take a safety backup of what is there; only then stop Harbor, restore the database
(one transaction: a failure changes nothing), swap the staged files in, start Harbor
and wait for its health. A failure after the stop puts the previous state back.
"""

from __future__ import annotations

import socket
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
from harbor_ops.backup.engine import FileSource, HostFiles, write_backup
from harbor_ops.backup.hostfiles import Staged, file_plan, stage_files
from harbor_ops.backup.manifest import Manifest, read_sidecar
from harbor_ops.backup.sources import DbSource, pg_major_of
from harbor_ops.backup.stack import HEALTH_TIMEOUT, HarborStack, wait_healthy
from harbor_ops.core.errors import BackupError
from harbor_ops.core.lock import job_lock
from harbor_ops.core.signals import signals_raise
from harbor_ops.hosts.health import HealthEndpoint
from harbor_ops.site.model import Encryption

__all__ = ["RestoreResult", "fit_problems", "restore_backup", "restore_database",
           "verify_backup"]
Progress = Callable[[str], None]
# Puts the saved host files beside their destinations (this host: :func:`stage_files`).
Stager = Callable[[Path, Manifest, dict[str, Path]], Any]


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
    db_access: dict[str, str] = field(default_factory=dict)  # as BackupResult's

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore_backup(*, path: Path, target: DbSource, data_volume: Path | None = None,
                   harbor_yml: Path | None = None, certificates: Sequence[Path] = (),
                   installed_version: str | None = None, force: bool = False,
                   force_version: bool = False, harbor_dir: Path | None = None,
                   compose: Sequence[str] | None = None,
                   health_url: HealthEndpoint | str | None = None,
                   health_timeout: float = HEALTH_TIMEOUT, lock_path: Path | None = None,
                   safety_dir: Path | None = None, hostname: str | None = None,
                   dry_run: bool = False, progress: Progress | None = None,
                   stack: Any = None, stager: Stager | None = None,
                   present: FileSource | None = None,
                   seal: Encryption | None = None) -> RestoreResult:
    """Put a backup back: database into ``target``, files onto the site's own paths.

    Every refusal (damaged, hostile, failed verify, wrong Harbor version or PostgreSQL
    major) comes before Harbor is stopped, so a refused restore leaves the site as it was.
    With ``safety_dir`` a backup of what is there now is written first. Database, secret
    key and config are replaced as one unit: whatever fails afterwards (a signal too)
    puts the previous ones back and starts Harbor, and the error says which state the
    host is in. With ``harbor_dir`` the compose stack is stopped, its database service
    started alone, restored into, the whole stack started and waited for (``health_url``).
    An SSH host brings its own ``stack`` (compose over SSH), ``stager`` and ``present``
    files (over SFTP), and with ``seal`` its safety backup is sealed like its other
    copies on the controller (a sealed ``path`` is read with the run's identity,
    :func:`harbor_ops.backup.archive.decrypting`).
    """
    say = progress or (lambda _m: None)
    with job_lock(lock_path, job="backup restore"), signals_raise():
        manifest = load_manifest(path)
        warnings = _archive_refusals(path, manifest, force=force)
        if dry_run:
            stack = None
        elif stack is None and harbor_dir is not None:
            stack = HarborStack(harbor_dir, target, compose)
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
        staged = (stager or stage_files)(path, manifest, plan)
        try:
            now = present or _present(data_volume, harbor_yml, certificates)
            safety = _safety_backup(safety_dir, target, now, hostname, installed_version, say,
                                    seal)
        except BaseException:
            staged.discard()
            raise
        unit = _Unit(path, manifest, target, stack, staged, safety, say)
        counts = unit.run(health_url, health_timeout)
        if safety is not None:
            warnings.append(f"the data replaced is kept in the safety backup {safety.name}")
        return RestoreResult(path.name, target.describe(), staged.written, counts,
                             warnings=warnings, db_access=target.reached())


def _present(data_volume: Path | None, harbor_yml: Path | None,
             certificates: Sequence[Path]) -> HostFiles:
    """The site's files that exist now (a fresh host may lack some): what a safety
    backup can hold."""
    has_key = data_volume is not None and (data_volume / "secret/keys/secretkey").is_file()
    return HostFiles(data_volume=data_volume if has_key else None,
                     harbor_yml=harbor_yml if harbor_yml and harbor_yml.is_file() else None,
                     certificates=tuple(c for c in certificates if c.is_file()))


def _safety_backup(folder: Path | None, target: DbSource, files: FileSource,
                   hostname: str | None, installed_version: str | None,
                   say: Progress, seal: Encryption | None) -> Path | None:
    """A backup of the database and files the restore is about to replace."""
    if folder is None:
        return None
    say("taking a safety backup of what the restore replaces")
    return write_backup(backup_dir=folder, source=target, files=files,
                        harbor_version=installed_version,
                        hostname=hostname or socket.gethostname(), progress=say,
                        encryption=seal).path


class _Unit:
    """Stop, replace database and files together, start; on any failure, the way back."""

    def __init__(self, path: Path, manifest: Manifest, target: DbSource,
                 stack: Any, staged: Staged, safety: Path | None,
                 say: Progress) -> None:
        self.path, self.manifest, self.target = path, manifest, target
        self.stack, self.staged, self.safety, self.say = stack, staged, safety, say
        self.stopped = self.db_replaced = False

    def run(self, health_url: HealthEndpoint | str | None, health_timeout: float) -> dict[str, int]:
        try:
            if self.stack is not None:
                self.say("stopping Harbor")
                self.stopped = True
                self.stack.compose("down")
                self._database_alone()
            self.say("restoring the database")
            self.db_replaced = True  # from here the database may hold the backup's data
            try:
                restore_database(path=self.path, target=self.target)
            except BackupError:
                self.db_replaced = False  # pg_restore failed: its one transaction undone
                raise
            counts = compare_counts(self.target, self.manifest)
            self.say("restoring host files")
            self.staged.swap_in()
            self._start(health_url, health_timeout)
        except BaseException as exc:
            state = self._recover(health_url, health_timeout)
            raise BackupError(f"restore of {self.path.name} failed ({_what(exc)}); {state}"
                              ) from None
        self.staged.finish()
        return counts

    def _database_alone(self) -> None:
        if self.stack is not None and self.target.kind == "docker":
            self.stack.compose("up", "-d", self.stack.db_service)
            _server_major(self.target, wait=True)

    def _start(self, health_url: HealthEndpoint | str | None, health_timeout: float) -> None:
        if self.stack is None:
            return
        self.say("starting Harbor")
        self.stack.compose("up", "-d")
        if health_url:
            self.say(f"waiting for {health_url} to report healthy")
            wait_healthy(health_url, timeout=health_timeout)

    def _recover(self, health_url: HealthEndpoint | str | None, health_timeout: float) -> str:
        """Put the previous database and files back and start Harbor; say where it is."""
        try:
            if self.stack is not None and self.stopped:
                self.stack.compose("down")  # whatever runs now runs on the backup's data
            self.staged.undo()
            back = "its previous data (the restore changed nothing)"
            if self.db_replaced and self.safety is not None:
                self.say(f"putting the previous database back from {self.safety.name}")
                self._database_alone()
                restore_database(path=self.safety, target=self.target)
                back = f"its previous data, put back from the safety backup {self.safety.name}"
            elif self.db_replaced:
                return ("a person is needed: the database may hold part of the backup and "
                        "no safety backup was taken; the previous files were put back")
            if self.stack is None:
                return f"the database and host files hold {back}"
            if not self.stopped:
                return "Harbor was not stopped; nothing was changed"
            self._start(health_url, health_timeout)
            return f"Harbor is running on {back}"
        except BaseException as exc:  # noqa: BLE001 - the state is the message
            keep = f"; the previous data is in {self.safety}" if self.safety else ""
            return (f"a person is needed: putting the previous state back failed "
                    f"({_what(exc)}); Harbor may be stopped{keep}")


def _what(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


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
                  stack: Any, say: Progress, *,
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
