"""The restore drill of an SSH host's backup, in that host's own ``harbor-db`` image.

Why: a drill must restore into the PostgreSQL major the backup came from, and the
controller often lacks it (Harbor 2.15.2 ships PostgreSQL 17). The host has it: its
harbor-db image. The drill is a throw-away container of that image (``--rm``, no network,
an anonymous scratch volume on the image's data folder, removed with the container);
the controller decompresses the dump and streams it over SSH into the container's
pg_restore, so no copy of the backup is left on the host. As on the controller, the
restore runs as a role that is not a superuser, into a database of a fixed name. The
container prints the row counts of the manifest's key tables and the schema version,
which the controller checks.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import zstandard

from harbor_ops.backup import archive
from harbor_ops.backup.drill import DRILL_DB, DRILL_ROLE
from harbor_ops.backup.manifest import DB_MEMBER, Manifest
from harbor_ops.backup.ssh_host import ChannelProcess, reason
from harbor_ops.backup.ssh_restore import run
from harbor_ops.core.errors import BackupError, RemoteError

_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
# The image's own data folder: the image declares it owned by postgres, so an anonymous
# volume there is writable by the image's user and goes away with the container.
SCRATCH = "/var/lib/postgresql/data"
_SCRIPT = """set -e
D={scratch}/drill
initdb -D "$D" -U postgres --auth=trust -E UTF8 </dev/null >/dev/null
pg_ctl -D "$D" -l {scratch}/log -w -t 60 -o "-c listen_addresses='' -k {scratch} \
-c fsync=off -c full_page_writes=off" start </dev/null >/dev/null
psql -X -q -h {scratch} -U postgres -d postgres -v ON_ERROR_STOP=1 \
-c {role} -c {create} </dev/null >/dev/null
pg_restore -h {scratch} -U {user} -d {db} --no-owner --no-privileges --single-transaction \
--exit-on-error
psql -X -q -A -t -h {scratch} -U {user} -d {db} -v ON_ERROR_STOP=1 -c {counts} </dev/null
"""


def drill_image(client: Any, host: str, container: str = "harbor-db") -> str:
    """The image the host's harbor-db container runs (what its PostgreSQL major is)."""
    image = run(client, host, "docker inspect -f '{{.Config.Image}}' "
                + shlex.quote(container)).strip()
    if not _IMAGE.fullmatch(image):
        raise RemoteError(f"host {host}: unexpected image name for {container}: {image[:80]!r}")
    return image


def remote_drill(client: Any, host: str, path: Path,
                 manifest: Manifest) -> tuple[dict[str, int], int | None]:
    """Restore ``path`` into a throw-away container of the host's harbor-db image."""
    for name in manifest.row_counts:
        if not _IDENT.fullmatch(name):
            raise BackupError(f"{path.name}: the manifest names {name!r}, not a plain "
                              "PostgreSQL identifier")
    tables = sorted(manifest.row_counts)
    selects = [f"SELECT '{t}', count(*) FROM public.\"{t}\"" for t in tables]
    if manifest.schema_version is not None:
        selects.append("SELECT '.schema', version FROM public.schema_migrations")
    script = _SCRIPT.format(scratch=SCRATCH, db=DRILL_DB, user=DRILL_ROLE,
                            role=shlex.quote(f'CREATE ROLE "{DRILL_ROLE}" LOGIN NOSUPERUSER'),
                            create=shlex.quote(f'CREATE DATABASE "{DRILL_DB}" OWNER '
                                               f'"{DRILL_ROLE}"'),
                            counts=shlex.quote(" UNION ALL ".join(selects) or "SELECT 1, 1"))
    command = shlex.join(["docker", "run", "--rm", "-i", "--network", "none",
                          "--entrypoint", "/bin/sh", "-v", SCRATCH,
                          drill_image(client, host), "-c", script])
    with tempfile.TemporaryFile() as err:
        try:
            proc = ChannelProcess(client, command, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=False)
            assert proc.stdin is not None and proc.stdout is not None
            with zstandard.ZstdDecompressor().stream_writer(proc.stdin, closefd=False) as z:
                for chunk in archive.iter_member(path, DB_MEMBER):
                    z.write(chunk)
            proc.stdin.close()
            out = b"".join(iter(proc.stdout.read1, b"")).decode(errors="replace")
            rc = proc.wait(timeout=600)
        except zstandard.ZstdError as exc:
            raise BackupError(f"{path.name}: the database dump is damaged ({exc})") from None
        except (OSError, EOFError, subprocess.TimeoutExpired) as exc:
            raise RemoteError(f"host {host}: the restore drill failed: {reason(exc)}") \
                from None
        if rc != 0:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines()
                     if ln.strip()]
            raise BackupError(f"host {host}: restore drill in harbor-db's image failed ({rc}): "
                              + (" / ".join(lines[-3:]) or "no message"))
    return _parse_counts(out, host)


def _parse_counts(out: str, host: str) -> tuple[dict[str, int], int | None]:
    counts: dict[str, int] = {}
    schema = None
    for line in out.splitlines():
        name, _, value = line.partition("|")
        if not value.strip().isdigit():
            continue
        if name == ".schema":
            schema = int(value)
        else:
            counts[name] = int(value)
    if not counts and "|" not in out:
        raise BackupError(f"host {host}: the restore drill printed no row counts")
    return counts, schema
