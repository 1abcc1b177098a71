"""The remote case of bench_backup: Harbor hosts backed up from the controller over SSH.

Same run, same test bed, same Harbor-shaped database (``--mb`` MB of artifact and audit
rows in each host's real harbor-db): ``harborctl backup create --host h1`` on the
controller (pg_dump in h1's harbor-db, streamed over SSH into the controller's zstd and
archive writer) against ``harborctl backup create`` run on h1 itself (the same code, with
h1's own python3 and a local-connection site file). harborctl over SSH runs both ways of
``backup.compress_on``, interleaved in the same run: ``host`` (pg_dump piped into the host's
zstd, the compressed stream over SSH) and ``controller`` (the raw dump over SSH into the
controller's zstd); plain pipelines of both sides are timed too. Then ``backup create
--all`` of ``--hosts`` hosts with ``backup.parallel: 2`` against one host. Goals: over
SSH under 1.5x on-host; the fleet under 3x one host (every bed host shares this
machine's CPUs). Everything is torn down at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import packaging
import psycopg
import psycopg_binary
import typing_extensions
import yaml
import zstandard

import harbor_ops
from bench.bench_install import write_site
from harbor_ops.install.run import install
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed

VERSION = "2.15.2"
ONHOST = "/opt/harborctl-bench"


def run_remote(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="harborctl-bench-remote-"))
    bed = TestBed.allocate(work / "bed")
    try:
        _run(bed, work, args)
    finally:
        bed.down()
        shutil.rmtree(work, ignore_errors=True)


def _run(bed: TestBed, work: Path, args: argparse.Namespace) -> None:
    hosts = bed.up([f"h{i}" for i in range(1, args.hosts + 1)], docker=True)
    site = write_site(work / "site", VERSION, hosts, bed.client_key)
    config = work / "site" / "harborctl.yml"
    config.write_text(config.read_text() + f"backup:\n  dir: {work}/backups\n"
                      "  jitter_minutes: 0\n  parallel: 2\n")
    os.environ["HARBORCTL_LOCK_FILE"] = str(work / "lock")
    t0 = time.perf_counter()
    install(site, bundle=build_bundle(VERSION, work / "bundles"), log_dir=work / "logs",
            ssh_config=bed.ssh_config_path, timeout=3600)
    print(f"install on {len(hosts)} hosts          {time.perf_counter() - t0:7.1f} s")
    t0 = time.perf_counter()
    for h in hosts:
        size = _fill(h, args.mb)
    print(f"fill {args.mb} MB per host          {time.perf_counter() - t0:7.1f} s  "
          f"(h{len(hosts)}: database {size / 1e6:.0f} MB)")
    env = {**os.environ, "HARBORCTL_SSH_CONFIG": str(bed.ssh_config_path),
           "HARBORCTL_LOCK_FILE": str(work / "lock")}
    h1 = hosts[0]
    _onhost_setup(h1)

    def ssh(host: Host, command: str) -> float:
        return _timed(["sh", "-c", f"{' '.join(host.ssh_argv())} '{command}'"
                       f" > {work}/ref.out"])

    config_ctl = config.with_name("controller.yml")
    config_ctl.write_text(config.read_text() + "  compress_on: controller\n")
    create = [sys.executable, "-m", "harbor_ops.cli.main", "backup", "create", "--host", "h1"]
    t_ssh, t_ctl, t_on, t_zhost, t_zctl = [], [], [], [], []
    for _ in range(args.runs):
        t_ssh.append(_timed([*create, "-c", str(config)], env=env))
        time.sleep(1.1)  # one backup name per second and host
        t_ctl.append(_timed([*create, "-c", str(config_ctl)], env=env))
        t_on.append(_timed(["sh", "-c", "exec " + " ".join(h1.ssh_argv(
            f"PYTHONPATH={ONHOST} python3 -m harbor_ops.cli.main backup create "
            f"-c {ONHOST}/site.yml >/dev/null"))]))
        t_zhost.append(ssh(h1, "docker exec harbor-db pg_dump -U postgres -d registry -Fc "
                               "-Z0 | zstd -q -1 -T0"))
        t_zctl.append(_timed(["sh", "-c", " ".join(h1.ssh_argv(
            "'docker exec harbor-db pg_dump -U postgres -d registry -Fc -Z0'"))
            + f" | zstd -q -1 -T0 > {work}/ref2.out"]))
        time.sleep(1.1)  # one backup name per second and host
    print(f"runs over SSH, zstd on the host:       {' '.join(f'{t:.2f}' for t in t_ssh)}")
    print(f"runs over SSH, zstd on the controller: {' '.join(f'{t:.2f}' for t in t_ctl)}")
    print(f"runs on the host:                      {' '.join(f'{t:.2f}' for t in t_on)}")
    print(f"harborctl create over SSH, compress_on host        {min(t_ssh):7.2f} s   "
          f"ratio {min(t_ssh) / min(t_on):.2f} (goal < 1.5)")
    print(f"harborctl create over SSH, compress_on controller  {min(t_ctl):7.2f} s   "
          f"ratio {min(t_ctl) / min(t_on):.2f}")
    print(f"harborctl create on the host {min(t_on):7.2f} s")
    print(f"  ssh: pg_dump | zstd on the host        {min(t_zhost):7.2f} s")
    print(f"  ssh: pg_dump, zstd on the controller   {min(t_zctl):7.2f} s")
    time.sleep(1.1)
    t_all = _timed([sys.executable, "-m", "harbor_ops.cli.main", "backup", "create", "--all",
                    "-c", str(config)], env=env)
    print(f"create --all, {len(hosts)} hosts, N=2  {t_all:7.2f} s   ratio {t_all / min(t_ssh):.2f}"
          " vs one host (goal < 3)")


def _fill(host: Host, mb: int) -> int:
    """About ``mb`` MB of Harbor-shaped rows (artifacts with digests, audit log)."""
    rows = mb * 1_000_000 // 330
    host.exec("docker exec -i harbor-db psql -U postgres -d registry -v ON_ERROR_STOP=1 -q",
              input=f"""
        INSERT INTO artifact (project_id, repository_id, repository_name, digest, size,
                              media_type)
          SELECT 1, 1, 'library/app-' || (g % 500),
                 'sha256:' || md5(g::text) || md5((g * 7)::text), g,
                 'application/vnd.oci.image.manifest.v1+json'
          FROM generate_series(1, {rows // 2}) g;
        INSERT INTO audit_log (project_id, operation, resource_type, resource, username)
          SELECT 1, 'pull', 'artifact', 'library/app@sha256:' || md5(g::text), 'admin'
          FROM generate_series(1, {rows}) g;
        VACUUM ANALYZE;""".encode(), timeout=3600)
    out = host.exec("docker exec harbor-db psql -U postgres -d registry -tAc "
                    "\"SELECT pg_database_size('registry')\"").stdout
    return int(out.strip())


def _onhost_setup(host: Host) -> None:
    """harborctl on the host itself: its python3 with the same code, a local site file."""
    dest = host.root_path / ONHOST.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for module in (harbor_ops, click, packaging, psycopg, psycopg_binary, yaml, zstandard):
        src = Path(module.__file__ or "").parent
        shutil.copytree(src, dest / src.name, dirs_exist_ok=True)
    libs = Path(psycopg_binary.__file__ or "").parent.with_name("psycopg_binary.libs")
    if libs.is_dir():  # the wheel's bundled libpq and its dependencies
        shutil.copytree(libs, dest / libs.name, dirs_exist_ok=True)
    single = Path(typing_extensions.__file__ or "")  # a one-file module
    shutil.copy2(single, dest / single.name)
    (dest / "site.yml").write_text(f"""harbor:
  version: {VERSION}
  hostname: {host.address}
  http: {{port: 8080}}
  harbor_admin_password_env: UNUSED
  database: {{password_env: UNUSED}}
  data_volume: /data
install: {{dir: /opt/harbor}}
backup: {{dir: /var/backups/harbor}}
""")


def _timed(argv: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False, **kw)  # type: ignore[call-overload]
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)[:200]} failed: {proc.stderr.decode()[-2000:]}")
    return dt
