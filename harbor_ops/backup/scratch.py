"""The drill's throw-away PostgreSQL, of exactly the backup's major.

Two ways, tried in order: the server binaries of that major on this machine
(``postgresql-NN``: initdb/pg_ctl on a unix socket in a private folder), or Harbor's own
``harbor-db`` image on the Docker engine harborctl talks to (``DOCKER_HOST``), which
carries exactly the major its Harbor release uses: one container, no network, its data
in an anonymous volume removed with it, reached by ``docker exec`` like harbor-db itself.
Either way a drill killed with -9 leaves nothing for long: the next drill ends and removes
what a dead run of this machine left (its work folder's server, its labelled container).
Neither there is an environment problem (exit 14), never a bad backup.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from psycopg import sql

from harbor_ops.backup.sources import (
    PG_ROOT,
    DbSource,
    DockerExecSource,
    ExternalSource,
    pg_bindir,
    pg_major_of,
)
from harbor_ops.core.errors import BackupError, EnvironmentMissing
from harbor_ops.core.workdir import owner_token, private_workdir, token_is_dead

PG_ROOT_ENV = "HARBORCTL_PG_ROOT"  # where postgresql-NN lives (tests point it elsewhere)
DB_IMAGE_SUFFIX = "harbor-db"
START_SECONDS = 120
DRILL_PREFIX = "harborctl-drill-"
# Where a root drill's cluster goes when the temp dir is closed to postgres (a TMPDIR under
# root's 0700 home): the FHS temp folder that outlives a reboot, as a copy of a database may
# be too big for a RAM /tmp; a killed drill's folder there is swept like any other.
FALLBACK_ROOT = Path("/var/tmp")
DRILL_CONTAINER = re.compile(re.escape(DRILL_PREFIX) + "[0-9a-f]{12}")
# Which run made a drill container (core.workdir.owner_token): a killed run's is removed.
OWNER_LABEL = "io.harborctl.drill-owner"


class Scratch:
    """Where the drill connects: a source on the scratch server, as any role and database."""

    def __init__(self, admin: ExternalSource | DockerExecSource, where: str) -> None:
        self.admin = admin
        self.where = where  # said in the drill's result

    def source(self, dbname: str, *, user: str) -> DbSource:
        return replace(self.admin, dbname=dbname, user=user)


@contextmanager
def scratch_cluster(major: str, *, root: Path | None = None,
                    harbor_version: str | None = None) -> Iterator[Scratch]:
    """A cluster of ``major``, always stopped and deleted on exit (a signal too)."""
    bindir = pg_bindir(major, root=Path(os.environ.get(PG_ROOT_ENV) or PG_ROOT))
    if bindir is not None and (bindir / "initdb").exists():
        with _local_cluster(bindir, root) as scratch:
            yield scratch
        return
    with _container_cluster(major, harbor_version) as scratch:
        yield scratch


@contextmanager
def _local_cluster(bindir: Path, root: Path | None) -> Iterator[Scratch]:
    # The cluster holds a whole copy of Harbor's database: its folder is a private work
    # folder, so a drill killed with -9 leaves it (and its still running server, ended with
    # SIGQUIT, PostgreSQL's immediate shutdown) to the next run's sweep. As root the server
    # runs as postgres in a subfolder of its own; the work folder only lets it through.
    as_root = os.geteuid() == 0
    if as_root:
        root = _root_postgres_enters(root)
    with private_workdir("drill", root=root, shared=as_root) as work:
        folder = work.path / "pg"
        folder.mkdir(mode=0o700)
        if as_root:
            shutil.chown(folder, "postgres", "postgres")
        data = folder / "data"
        try:
            _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], "initdb")
            opts = (f"-p 5432 -k {folder} -c listen_addresses='' -c fsync=off "
                    "-c full_page_writes=off -c synchronous_commit=off")
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                          "-o", opts, "-w", "-t", "60", "start"], "pg_ctl start")
            work.adopt(_postmaster_pid(data), "SIGQUIT")
            yield Scratch(ExternalSource(host=str(folder), port=5432, user="postgres",
                                         dbname="postgres", bindir=bindir),
                          f"this machine's PostgreSQL binaries in {bindir}")
        finally:  # also after a signal that came while the server was starting
            if (data / "postmaster.pid").exists():
                _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                              "-w", "stop"], "pg_ctl stop", check=False)


def _root_postgres_enters(root: Path | None) -> Path:
    """The folder a root drill's cluster goes in: ``root`` if given, else the temp dir
    (TMPDIR), else ``FALLBACK_ROOT``; the server runs as postgres, which must pass through
    every folder above its own. None of them: an environment problem naming TMPDIR."""
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise EnvironmentMissing(
            "no postgres user to run the restore drill's PostgreSQL as",
            hint="install the postgresql-NN server package, which creates it") from None
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    tried = [root] if root is not None else [Path(tempfile.gettempdir()), FALLBACK_ROOT]
    for place in tried:
        if passable(place, user.pw_uid, groups):
            return place
    where = " nor ".join(str(p) for p in tried)
    raise EnvironmentMissing(
        f"the restore drill's PostgreSQL runs as postgres, which cannot pass through {where}",
        hint="set TMPDIR to a folder every user may pass through (mode o+x on it and on each "
             "folder above it), e.g. /var/tmp")


def passable(path: Path, uid: int, groups: set[int]) -> bool:
    """Whether a user ``uid`` in ``groups`` may pass through ``path`` and every folder above
    it (the execute bit of its class: owner, group or other; ACLs are not read, so a folder
    open to it through an ACL only counts as closed)."""
    try:
        real = Path(os.path.realpath(path))
        for folder in (real, *real.parents):
            st = os.stat(folder)
            if not stat.S_ISDIR(st.st_mode):
                return False
            bit = (stat.S_IXUSR if st.st_uid == uid
                   else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH)
            if not st.st_mode & bit:
                return False
    except OSError:
        return False
    return True


def _postmaster_pid(data: Path) -> int:
    """The scratch server's pid (the first line of its postmaster.pid)."""
    try:
        first = (data / "postmaster.pid").read_text(encoding="ascii").split("\n", 1)[0]
        return int(first.strip())
    except (OSError, ValueError) as exc:
        raise BackupError(f"scratch cluster: no server pid in {data}/postmaster.pid ({exc})"
                          ) from None


def _as_postgres(argv: list[str], what: str, *, check: bool = True) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd="/")
    if check and proc.returncode != 0:
        raise BackupError(f"scratch cluster {what} failed: {proc.stderr.strip()[-500:]}")


@contextmanager
def _container_cluster(major: str, harbor_version: str | None) -> Iterator[Scratch]:
    docker = shutil.which("docker")
    missing = EnvironmentMissing(
        f"no PostgreSQL {major} for the restore drill: no postgresql-{major} server "
        f"binaries here and no {DB_IMAGE_SUFFIX} image of PostgreSQL {major} on the Docker "
        "engine", hint=f"install postgresql-{major}, or run verify where Harbor's images "
        "are loaded (DOCKER_HOST)")
    if docker is None:
        raise missing
    _remove_dead_drills(docker)
    tried: list[str] = []
    for image in _db_images(docker, harbor_version):
        name = f"{DRILL_PREFIX}{secrets.token_hex(6)}"
        try:
            got = _start(docker, image, name)
            if got == major:
                yield Scratch(DockerExecSource(container=name, user="postgres",
                                               dbname="postgres", docker=docker),
                              f"a throw-away container of {image} on this machine's "
                              "Docker engine")
                return
            tried.append(f"{image} (PostgreSQL {got})")
        finally:
            subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True,
                           timeout=120, check=False)
    if tried:
        missing.message += f" (tried {', '.join(tried)})"
    raise missing


def _remove_dead_drills(docker: str) -> list[str]:
    """Remove the drill containers (and their data volumes) of runs killed with -9 on this
    machine; their names. What the engine lists is only read as data: a name must be a
    drill container's, and its owner a run of this machine that is gone."""
    proc = subprocess.run([docker, "ps", "-a", "--filter", f"label={OWNER_LABEL}",
                           "--format", f'{{{{.Names}}}}\t{{{{.Label "{OWNER_LABEL}"}}}}'],
                          capture_output=True, text=True, timeout=60, check=False)
    removed = []
    for line in proc.stdout.splitlines()[:100] if proc.returncode == 0 else []:
        name, _, owner = line.partition("\t")
        if DRILL_CONTAINER.fullmatch(name) and token_is_dead(owner):
            subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True,
                           timeout=120, check=False)
            removed.append(name)
    return removed


def _db_images(docker: str, harbor_version: str | None) -> list[str]:
    """harbor-db images on the engine, the one of the backup's Harbor release first."""
    proc = subprocess.run([docker, "image", "ls", "--format", "{{json .}}"],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return []
    found = []
    for line in proc.stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if str(row.get("Repository", "")).endswith(DB_IMAGE_SUFFIX) and row.get("Tag"):
            found.append(f"{row['Repository']}:{row['Tag']}")
    wanted = f"v{harbor_version}" if harbor_version else None
    return sorted(set(found), key=lambda i: (i.rsplit(":", 1)[1] != wanted, i))


def _start(docker: str, image: str, name: str) -> str:
    """Run ``image`` as Harbor does (its own entrypoint, a fresh data volume); its major."""
    run = subprocess.run([docker, "run", "-d", "--name", name, "--network", "none",
                          "--label", f"{OWNER_LABEL}={owner_token()}",
                          "-v", "/var/lib/postgresql/data", image],
                         capture_output=True, text=True, timeout=120, check=False)
    if run.returncode != 0:
        raise BackupError(f"starting {image} for the restore drill failed: "
                          f"{run.stderr.strip()[-300:]}")
    source = DockerExecSource(container=name, user="postgres", dbname="postgres",
                              docker=docker)
    deadline = time.monotonic() + START_SECONDS
    for _ in range(START_SECONDS * 2):
        try:
            with source.session() as s:
                # The entrypoint's own init server comes and goes; the final one is PID 1.
                if str(s.scalar(sql.SQL("SELECT pg_read_file('postmaster.pid')"))
                       ).split("\n")[0].strip() == "1":
                    return pg_major_of(int(s.scalar(sql.SQL("SHOW server_version_num"))))
        except BackupError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise BackupError(f"{image} did not start a PostgreSQL server within {START_SECONDS} s")
