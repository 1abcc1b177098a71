"""Benchmark: `harborctl backup create` / restore against pg_dump -Fc / pg_restore.

Builds a Harbor-shaped PostgreSQL 15 database of at least 250 MB in a throw-away
cluster (pgbench tables plus an `artifact` table with digests and jsonb), then times,
in the same run: `harborctl backup create` (the real command, in a subprocess) vs a
plain `pg_dump -Fc` of the same database, and `harborctl`'s restore vs `pg_restore`.
Goal: create under 0.6 of pg_dump -Fc's time, and no larger. Run as root:

    .venv/bin/python bench/bench_backup.py [--scale 8] [--artifacts 300000]

``--remote`` times backups of test-bed Harbor hosts from the controller instead
(:mod:`bench.bench_backup_remote`): over SSH against harborctl run on the host itself,
and 4 hosts with ``backup.parallel: 2`` against one host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "bench-only-password"


def pg(*argv: str, input: str | None = None) -> str:
    proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], input=input, text=True,
                          capture_output=True, check=False, cwd="/")
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed: {proc.stderr}")
    return proc.stdout


def timed(argv: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False, **kw)  # type: ignore[call-overload]
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{argv[0]} failed: {proc.stderr.decode()[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=8, help="pgbench scale (8 = 800k accounts)")
    ap.add_argument("--artifacts", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3, help="best of N for each timing")
    ap.add_argument("--remote", action="store_true",
                    help="the controller-over-SSH case on test-bed hosts")
    ap.add_argument("--mb", type=int, default=250, help="--remote: database size per host")
    ap.add_argument("--hosts", type=int, default=4, help="--remote: hosts of the fleet case")
    args = ap.parse_args()
    if args.remote:
        from bench.bench_backup_remote import run_remote

        run_remote(args)
        return
    work = Path(tempfile.mkdtemp(prefix="harborctl-bench-"))
    shutil.chown(work, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = work / "data"
    pg(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
    pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(work / "log"), "-w", "-o",
       f"-p {port} -k {work} -c listen_addresses=127.0.0.1", "start")
    try:
        run(work, port, args)
    finally:
        pg(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, port: int, args: argparse.Namespace) -> None:
    def sql(text: str, db: str = "registry") -> str:
        return pg(str(PG_BIN / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                  str(work), "-p", str(port), "-d", db, input=text)

    pg(str(PG_BIN / "psql"), "-X", "-q", "-h", str(work), "-p", str(port), "-d", "postgres",
       "-c", f"CREATE ROLE harbor LOGIN SUPERUSER PASSWORD '{PASSWORD}'",
       "-c", "CREATE DATABASE registry OWNER harbor")
    t0 = time.perf_counter()
    pg(str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", str(work), "-p",
       str(port), "registry")
    sql(f"""
        CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL);
        INSERT INTO schema_migrations VALUES (171, false);
        CREATE TABLE project (project_id serial PRIMARY KEY, name text);
        INSERT INTO project (name) SELECT 'p' || g FROM generate_series(1, 50) g;
        CREATE TABLE artifact (id serial PRIMARY KEY, project_id int, digest text,
                               extra_attrs jsonb, push_time timestamp);
        INSERT INTO artifact (project_id, digest, extra_attrs, push_time)
          SELECT 1 + g % 50, 'sha256:' || md5(g::text) || md5((g * 7)::text),
                 jsonb_build_object('architecture', 'amd64', 'os', 'linux', 'n', g,
                                    'config', md5((g * 3)::text)),
                 now() - (g || ' minutes')::interval
          FROM generate_series(1, {args.artifacts}) g;
        CREATE INDEX ON artifact (digest);
        CREATE INDEX ON artifact (project_id, push_time);
        ANALYZE;
    """)
    size = int(sql("SELECT pg_database_size('registry')").strip())
    print(f"database: {size / 1e6:.1f} MB (built in {time.perf_counter() - t0:.1f} s)")
    if size < 250e6:
        print("warning: below 250 MB; raise --scale or --artifacts")

    # harborctl's inputs: a site file, a data volume with the secret key, harbor.yml
    (work / "vol/secret/keys").mkdir(parents=True)
    (work / "vol/secret/keys/secretkey").write_text("0123456789abcdef")
    (work / "inst/harbor").mkdir(parents=True)
    (work / "inst/harbor/harbor.yml").write_text("hostname: bench.internal\n")
    site = work / "harborctl.yml"
    site.write_text(f"""harbor:
  version: 2.14.4
  hostname: bench.internal
  http: {{port: 8080}}
  harbor_admin_password_env: BENCH_ADMIN
  data_volume: {work}/vol
  external_database:
    harbor: {{host: 127.0.0.1, port: {port}, db_name: registry, username: harbor,
              password_env: BENCH_DB, ssl_mode: disable}}
backup:
  dir: {work}/backups
install:
  dir: {work}/inst
""")
    env = {**os.environ, "BENCH_DB": PASSWORD, "BENCH_ADMIN": "x",
           "HARBORCTL_LOCK_FILE": str(work / "lock")}
    pg_env = {**os.environ, "PGPASSWORD": PASSWORD}
    conn = ["-h", "127.0.0.1", "-p", str(port), "-U", "harbor"]
    harborctl = [sys.executable, "-m", "harbor_ops.cli.main"]

    t_dump, t_ours = [], []
    dump = work / "ref.dump"
    for i in range(args.runs):
        t_dump.append(timed([str(PG_BIN / "pg_dump"), "-Fc", *conn, "-d", "registry",
                             "-f", str(dump)], env=pg_env))
        t_ours.append(timed([*harborctl, "backup", "create", "-c", str(site)], env=env))
        if i < args.runs - 1:
            time.sleep(1.1)  # one backup name per second
    pipe = f"{PG_BIN}/pg_dump -Fc -Z0 {' '.join(conn)} -d registry | zstd -q -T0 -3 > {work}/p.zst"
    t_pipe = min(timed(["sh", "-c", pipe], env=pg_env) for _ in range(args.runs))
    t_pipe1 = min(timed(["sh", "-c", pipe.replace("-3 >", "-1 >")], env=pg_env)
                  for _ in range(args.runs))
    size1 = (work / "p.zst").stat().st_size
    ours = sorted((work / "backups").glob("*.hbk"))[-1]
    ref_size, our_size = dump.stat().st_size, ours.stat().st_size
    print(f"pg_dump -Fc          {min(t_dump):7.2f} s  {ref_size / 1e6:7.1f} MB")
    print(f"pg_dump -Z0 | zstd   {t_pipe:7.2f} s  (the floor: shell pipeline, no checks)")
    print(f"... | zstd -1        {t_pipe1:7.2f} s  {size1 / 1e6:7.1f} MB")
    print(f"harborctl create     {min(t_ours):7.2f} s  {our_size / 1e6:7.1f} MB   "
          f"time ratio {min(t_ours) / min(t_dump):.2f} (goal < 0.6), "
          f"size ratio {our_size / ref_size:.2f} (goal <= 1.0)")

    from harbor_ops.backup.drill import restore_database
    from harbor_ops.backup.sources import ExternalSource

    t_ref, t_ref2, t_rest = [], [], []
    for i in range(args.runs):
        for db in ("r_ref", "r_ref2", "r_ours"):
            sql(f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} OWNER harbor;", "postgres")
        t_ref.append(timed([str(PG_BIN / "pg_restore"), *conn, "-d", "r_ref", "--no-owner",
                            str(dump)], env=pg_env))
        t_ref2.append(timed([str(PG_BIN / "pg_restore"), "-j2", *conn, "-d", "r_ref2",
                             "--no-owner", str(dump)], env=pg_env))
        t0 = time.perf_counter()
        restore_database(path=ours, target=ExternalSource(
            host="127.0.0.1", port=port, user="harbor", dbname="r_ours", password=PASSWORD))
        t_rest.append(time.perf_counter() - t0)
        del i
    n_ref = sql("SELECT count(*) FROM artifact", "r_ref").strip()
    n_ours = sql("SELECT count(*) FROM artifact", "r_ours").strip()
    print(f"pg_restore           {min(t_ref):7.2f} s")
    print(f"pg_restore -j2       {min(t_ref2):7.2f} s")
    print(f"harborctl restore db {min(t_rest):7.2f} s   ratio {min(t_rest) / min(t_ref):.2f} "
          f"vs pg_restore, {min(t_rest) / min(t_ref2):.2f} vs -j2   "
          f"(artifact rows {n_ours} vs {n_ref})")


if __name__ == "__main__":
    main()
