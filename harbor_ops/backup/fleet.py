"""Backups of every host of the site's inventory, run from the controller.

Why: a fleet installed with one command is backed up the same way, with nothing of
harborctl on the Harbor hosts. A host with ``connection: local`` is this machine and
is backed up as always (``backup.dir``); an SSH host is reached over SSH
(:mod:`harbor_ops.backup.ssh_host`) and its backups live on the controller under
``<backup.dir>/<host>/``, where retention, the never-delete-the-newest-verified rule,
the free-space guard and the off-host copy apply per host. Each SSH host has its own
job lock on the controller, so several hosts can be backed up at once; a failing host
fails alone and is named. What touches an SSH host's Harbor (create, restore, the drill
in its harbor-db image) also holds that host's own ``/run/harborctl.lock``
(:mod:`harbor_ops.hosts.joblock`, the lock upgrade, install.sh and a harborctl on the host
take), held by one more channel of its SSH connection for as long as that is open. It is
taken once the connection is up, before the controller's lock the backup engine takes: the
controller's lock never waits (busy: refused at once), so the two orders of upgrade and
backup cannot wait on each other.
"""

from __future__ import annotations

import posixpath
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harbor_ops.backup import archive
from harbor_ops.backup.catalog import prune_backups
from harbor_ops.backup.crypto import warn_plain
from harbor_ops.backup.engine import BackupResult, create_backup
from harbor_ops.core.errors import HarborctlError, NoSpace, RemoteError, UsageError
from harbor_ops.hosts.joblock import hold_on_host, host_lock, is_local
from harbor_ops.site.model import HostEntry, Site

Progress = Callable[[str], None]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def select_hosts(site: Site, host: str | None, all_hosts: bool) -> list[HostEntry]:
    """The hosts one command acts on: ``--host NAME``, ``--all``, or the only host."""
    names = [h.name for h in site.hosts]
    if host is not None and all_hosts:
        raise UsageError("--host and --all exclude each other")
    if all_hosts:
        return list(site.hosts)
    if host is not None:
        for h in site.hosts:
            if h.name == host:
                return [h]
        raise UsageError(f"--host: {host!r} is not a host of the site; "
                         f"valid: {', '.join(names)}")
    if len(site.hosts) == 1:
        return [site.hosts[0]]
    raise UsageError(f"the site has {len(names)} hosts ({', '.join(names)}); "
                     "name one with --host NAME, or pass --all")


def backup_dir(site: Site, entry: HostEntry) -> Path:
    """``backup.dir`` for this machine, ``<backup.dir>/<host>`` for an SSH host."""
    if is_local(entry):
        return site.backup.dir
    if not _SAFE_NAME.fullmatch(entry.name):
        raise UsageError(f"hosts[].name {entry.name!r} cannot name a backup folder; use "
                         "letters, digits, '.', '_' and '-'")
    return site.backup.dir / entry.name


def backup_host(site: Site, entry: HostEntry) -> str:
    """The host name in this host's backup names (retention and cleanup look only at it)."""
    return site.hostname if is_local(entry) else entry.name


# ------------------------------------------------------------------ per-host runs


@dataclass
class HostOutcome:
    host: str
    ok: bool
    result: Any = None
    error: str | None = None
    exit_code: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = self.result.to_dict() if hasattr(self.result, "to_dict") else self.result
        return {"host": self.host, "ok": self.ok, "error": self.error,
                "exit_code": self.exit_code, "result": data}


@dataclass
class FleetResult:
    action: str
    outcomes: list[HostOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [o.host for o in self.outcomes if not o.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "ok": not self.failed, "failed": self.failed,
                "hosts": [o.to_dict() for o in self.outcomes]}

    def raise_for_failures(self) -> None:
        """Exit 6 naming every failed host (after the per-host report was printed)."""
        if self.failed:
            detail = "; ".join(f"{o.host}: {o.error}" for o in self.outcomes if not o.ok)
            raise RemoteError(f"{self.action} failed on {len(self.failed)} of "
                              f"{len(self.outcomes)} host(s): {', '.join(self.failed)}",
                              hint=detail)


def run_each(action: str, hosts: Sequence[HostEntry], fn: Callable[[HostEntry], Any], *,
             parallel: int = 1) -> FleetResult:
    """``fn`` on every host, at most ``parallel`` at a time; one failure stops no other."""
    def one(entry: HostEntry) -> HostOutcome:
        try:
            return HostOutcome(entry.name, True, fn(entry))
        except HarborctlError as exc:
            message = str(exc) if entry.name in exc.message else f"host {entry.name}: {exc}"
            return HostOutcome(entry.name, False, error=message, exit_code=exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - one host's failure is reported, not raised
            return HostOutcome(entry.name, False, exit_code=RemoteError.exit_code,
                               error=f"host {entry.name}: {type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return FleetResult(action, list(pool.map(one, hosts)))


# ------------------------------------------------------------------ SSH host access


@dataclass
class HostAccess:
    """What the backup core needs of one host: where its database and files are."""

    entry: HostEntry
    backup_dir: Path
    source: Any
    files: Any
    lock_path: Path | None
    client: Any = None
    sftp: Any = None


@contextmanager
def access(site: Site, entry: HostEntry, *, ssh_config: Path | None = None,
           accept_new_host_keys: bool = False, with_secrets: bool = True,
           job: str | None = None) -> Iterator[HostAccess]:
    """Open what a backup of ``entry`` needs; SSH connections are closed afterwards.

    With ``job``, an SSH host's own job lock is held under that name while the connection
    is open (None: the caller holds it already, as ``upgrade apply`` does).
    """
    from harbor_ops.backup.settings import BackupSettings

    if is_local(entry):
        s = BackupSettings.from_site(site, with_secrets=with_secrets)
        yield HostAccess(entry, s.backup_dir, s.source, s.files, None)
        return
    from harbor_ops.backup.ssh_host import (
        SftpFiles,
        SshDockerSource,
        connect,
        has_zstd,
        ssh_errors,
    )

    if "external_database" in site.harbor:
        raise UsageError(f"host {entry.name}: backups of an external database are taken "
                         "from the controller only for a local site")
    client = connect(entry, ssh_config, accept_new_host_keys=accept_new_host_keys)
    lock = nullcontext() if job is None else hold_on_host(
        entry, job=job, ssh_config=ssh_config, client=client)
    try:
        with lock:
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(120.0)
            harbor = site.harbor
            https = harbor.get("https") or {}
            certs = tuple(str(https[k]) for k in ("certificate", "private_key")
                          if https.get(k))
            files = SftpFiles(sftp, entry.name,
                              data_volume=str(harbor.get("data_volume", "/data")),
                              harbor_yml=_remote_harbor_yml(sftp, str(site.install.dir)),
                              certificates=certs, include_redis=site.backup.include_redis)
            with ssh_errors(entry.name, "the SSH session"):
                source = SshDockerSource(
                    host=entry.name, client=client, sudo=entry.user != "root",
                    zstd_on_host=(site.backup.compress_on == "host"
                                  and has_zstd(client, entry.name)))
                yield HostAccess(entry, backup_dir(site, entry), source, files,
                                 host_lock(entry), client, sftp)
    finally:
        client.close()


def _remote_harbor_yml(sftp: Any, install_dir: str) -> str:
    """``<install.dir>/harbor/harbor.yml`` (the role's layout), else a hand install's."""
    first = posixpath.join(install_dir, "harbor", "harbor.yml")
    try:
        sftp.stat(first)
        return first
    except OSError:
        return posixpath.join(install_dir, "harbor.yml")


# ------------------------------------------------------------------ operations


def create_on_host(site: Site, entry: HostEntry, *, ssh_config: Path | None = None,
                   accept_new_host_keys: bool = False, dry_run: bool = False,
                   progress: Progress | None = None) -> BackupResult:
    """One backup of ``entry`` on the controller; space short: prune that host, retry once.

    The controller's copy of an SSH host is not on that host, so with
    ``backup.encryption`` it is sealed (``.hbk.age``, never plain on disk here), and
    without it harborctl says loudly that it is not.
    """
    if is_local(entry):
        from harbor_ops.backup.site_ops import create_for_site

        return create_for_site(site, dry_run=dry_run, progress=progress)
    say = _prefixed(entry.name, progress)
    enc = site.backup.encryption
    if enc is None and not dry_run:
        warn_plain(f"the controller ({backup_dir(site, entry)})")
    with access(site, entry, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
                job="backup create") as a:
        if say is not None:
            say("connected over SSH")

        def create() -> BackupResult:
            return create_backup(backup_dir=a.backup_dir, source=a.source, files=a.files,
                                 harbor_version=str(site.release.version),
                                 hostname=entry.name, lock_path=a.lock_path,
                                 dry_run=dry_run, progress=say, encryption=enc)

        try:
            result = create()
        except NoSpace:
            if not prune_backups(backup_dir=a.backup_dir, keep=site.backup.keep,
                                 hostname=entry.name, lock_path=a.lock_path).deleted:
                raise
            result = create()
    if site.backup.remote is not None and not dry_run:
        from harbor_ops.backup.site_ops import push_for_site

        push = push_for_site(site, result.path, hostname=entry.name)
        result.notes.append(f"copied to {push.destination}")
    return result


def _prefixed(host: str, progress: Progress | None) -> Progress | None:
    if progress is None:
        return None
    lock = threading.Lock()

    def say(msg: str) -> None:
        with lock:
            progress(f"{host}: {msg}")
    return say


def list_on_host(site: Site, entry: HostEntry) -> list[dict[str, Any]]:
    from harbor_ops.backup.catalog import list_backups

    with archive.decrypting(site.backup.encryption):
        return [e.to_dict() for e in list_backups(backup_dir(site, entry))]


def verify_on_host(site: Site, entry: HostEntry, *, name: str | None = None,
                   restore_drill: bool = True, ssh_config: Path | None = None,
                   accept_new_host_keys: bool = False, progress: Progress | None = None) -> Any:
    """Checksums, then the restore drill where the backup's PostgreSQL major is.

    On the controller when its binaries of that major are installed; else, for an SSH
    host, in a throw-away container of the host's own harbor-db image.
    """
    from functools import partial

    from harbor_ops.backup.catalog import find_backup
    from harbor_ops.backup.drill import verify_backup

    if is_local(entry):
        from harbor_ops.backup.site_ops import verify_for_site

        return verify_for_site(site, name, drill=restore_drill, progress=progress,
                               accept_new_host_keys=accept_new_host_keys)
    path = find_backup(backup_dir(site, entry), name)
    say = _prefixed(entry.name, progress)
    with archive.decrypting(site.backup.encryption):
        if not restore_drill or _controller_can_drill(path):
            return verify_backup(path=path, restore_drill=restore_drill,
                                 lock_path=host_lock(entry), progress=say)
        from harbor_ops.backup.ssh_drill import remote_drill
        from harbor_ops.backup.ssh_host import connect

        client = connect(entry, ssh_config, accept_new_host_keys=accept_new_host_keys)
        try:
            with hold_on_host(entry, job="backup verify", ssh_config=ssh_config,
                              client=client):
                return verify_backup(path=path, lock_path=host_lock(entry), progress=say,
                                     remote_drill=partial(remote_drill, client, entry.name))
        finally:
            client.close()


def _controller_can_drill(path: Path) -> bool:
    """True when this machine has the server binaries of the backup's PostgreSQL major."""
    from harbor_ops.backup.sources import pg_bindir

    try:
        major = archive.read_manifest(path).pg_major
    except Exception:  # noqa: BLE001 - a damaged backup fails in verify itself
        return True
    bindir = pg_bindir(major)
    return bindir is not None and (bindir / "initdb").exists()


def prune_on_host(site: Site, entry: HostEntry, *, dry_run: bool = False) -> Any:
    return prune_backups(backup_dir=backup_dir(site, entry), keep=site.backup.keep,
                         hostname=backup_host(site, entry), dry_run=dry_run,
                         lock_path=host_lock(entry))


def push_on_host(site: Site, entry: HostEntry, *, name: str | None = None,
                 accept_new_host_keys: bool = False) -> Any:
    from harbor_ops.backup.catalog import find_backup
    from harbor_ops.backup.site_ops import push_for_site

    path = find_backup(backup_dir(site, entry), name)
    return push_for_site(site, path, hostname=None if is_local(entry) else entry.name,
                         accept_new_host_keys=accept_new_host_keys)


def on_hosts(site: Site, action: str, fn: Callable[[HostEntry], Any], *, host: str | None,
             all_hosts: bool, name: str | None = None, parallel: int = 1) -> Any:
    """``fn``'s own result for one host; a :class:`FleetResult` with ``--all``."""
    hosts = select_hosts(site, host, all_hosts)
    if not all_hosts:
        return fn(hosts[0])
    if name is not None:
        raise UsageError(f"{action}: a backup name belongs to one host; use --host with it")
    return run_each(action, hosts, fn, parallel=parallel)


def create_backups(site: Site, *, host: str | None, all_hosts: bool,
                   ssh_config: Path | None = None, accept_new_host_keys: bool = False,
                   dry_run: bool = False, progress: Progress | None = None) -> Any:
    """``backup create`` for one host, or for every host (``backup.parallel`` at a time)."""
    return on_hosts(site, "backup create", lambda e: create_on_host(
        site, e, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
        dry_run=dry_run, progress=progress),
        host=host, all_hosts=all_hosts, parallel=site.backup.parallel)


def restore_choice(site: Site, *, host: str | None, name: str | None,
                   latest: bool) -> tuple[HostEntry, Path]:
    """The one host and backup a restore acts on (``--all`` never restores)."""
    from harbor_ops.backup.catalog import find_backup

    if not name and not latest:
        raise UsageError("restore: name a backup (see `harborctl backup list`) or pass --latest")
    entry = select_hosts(site, host, False)[0]
    return entry, find_backup(backup_dir(site, entry), name, latest_verified=latest)


def restore_on_host(site: Site, entry: HostEntry, path: Path, *,
                    ssh_config: Path | None = None, accept_new_host_keys: bool = False,
                    force: bool = False, force_version: bool = False, dry_run: bool = False,
                    progress: Progress | None = None) -> Any:
    """Database back into the host's harbor-db, files back, Harbor started and healthy."""
    from harbor_ops.backup.restore import restore_backup

    if is_local(entry):
        from harbor_ops.backup.settings import BackupSettings

        s = BackupSettings.from_site(site)
        return restore_backup(path=path, target=s.source, data_volume=s.files.data_volume,
                              harbor_yml=s.files.harbor_yml, certificates=s.files.certificates,
                              installed_version=s.harbor_version,
                              force=force, force_version=force_version,
                              harbor_dir=s.harbor_dir if s.harbor_dir.is_dir() else None,
                              health_url=s.health_url, safety_dir=s.backup_dir,
                              hostname=s.hostname, dry_run=dry_run, progress=progress)
    from functools import partial

    from harbor_ops.backup.ssh_restore import SshStack, stage_over_sftp
    from harbor_ops.hosts import health

    with access(site, entry, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
                job="backup restore") as a, archive.decrypting(site.backup.encryption):
        harbor_yml = a.files.harbor_yml
        stack = None if dry_run else SshStack(a.client, a.sftp, entry.name,
                                              posixpath.dirname(harbor_yml))
        address = a.client.get_transport().getpeername()[0]
        # The host's own address, the site's name and certificate chain.
        url = replace(health.endpoint(site.harbor), address=address)
        return restore_backup(
            path=path, target=a.source, data_volume=Path(a.files.data_volume),
            harbor_yml=Path(harbor_yml), certificates=[Path(c) for c in a.files.certificates],
            installed_version=str(site.release.version), force=force,
            force_version=force_version, health_url=url, dry_run=dry_run,
            lock_path=a.lock_path, safety_dir=a.backup_dir, hostname=entry.name,
            progress=_prefixed(entry.name, progress), stack=stack,
            stager=partial(stage_over_sftp, a.client, a.sftp, entry.name),
            present=replace(a.files, optional=True), seal=site.backup.encryption)
