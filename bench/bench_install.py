"""Benchmark: `harborctl install` on 1 test host against 8 test hosts, same run.

Brings up a test bed of N hosts (default 8: netns, own rootfs, sshd, dockerd), builds the
Harbor-shaped offline installer once (tests/bed/bundle), then times the real install
(preflight, render, the harbor role over SSH with Ansible, health gate) of:

1. one fresh host;
2. a no-change re-run on that host (the idempotent path a nightly converge takes);
3. all N hosts, each fresh (the first host is reset), in parallel through Ansible's forks.

Prints the ratio N hosts / 1 host (goal: under 2.5 for 8 hosts) and re-run / first install.
Everything is torn down at the end, whatever happens. Run as root from the repository:

    .venv/bin/python -m bench.bench_install [--hosts 8] [--version 2.15.2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harbor_ops.install.run import InstallResult, install
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed

STEP = re.compile(r"^\[\s*([\d.]+)s\] (\S+): (.+) \.\.\. (\w+)$")
ADMIN_PASSWORD = "bench-Admin-pw"  # throw-away values for throw-away hosts
DB_PASSWORD = "bench-Db-pw"


def write_site(directory: Path, version: str, hosts: list[Host], key: Path) -> Site:
    """One site for ``hosts``: identical replicas, all named by the first host's address."""
    directory.mkdir(parents=True, exist_ok=True)
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "admin").write_text(ADMIN_PASSWORD + "\n")
    (secrets / "db").write_text(DB_PASSWORD + "\n")
    name = hosts[0].address
    entries = "".join(f"  - {{name: {h.name}, address: {h.address}, ssh_key_file: {key}}}\n"
                      for h in hosts)
    (directory / "harborctl.yml").write_text(f"""\
harbor:
  version: {version}
  hostname: {name}
  http: {{port: 8080}}
  harbor_admin_password_file: secrets/admin
  database: {{password_file: secrets/db}}
  data_volume: /data
front:
  listen: 0.0.0.0:80
  server_name: {name}
  upstream: http://127.0.0.1:8080
  cache: {{path: /var/cache/nginx/harbor}}
install: {{dir: /opt/harbor, bundle_dir: /opt/harbor-bundles}}
hosts:
{entries}""")
    return load_site(directory / "harborctl.yml")


def slowest_steps(lines: list[str], top: int = 5) -> list[tuple[str, float]]:
    """Steps on the critical path: time from the previous step's last host to this one's."""
    done: dict[str, float] = {}
    for line in lines:
        m = STEP.match(line)
        if m:
            done[m.group(3)] = max(done.get(m.group(3), 0.0), float(m.group(1)))
    spans, last = [], 0.0
    for task, t in done.items():  # first-seen order is the playbook's order
        spans.append((task, max(0.0, t - last)))
        last = max(last, t)
    return sorted(spans, key=lambda s: -s[1])[:top]


def timed_install(site: Site, bundle: Path, bed: TestBed, log_dir: Path,
                  what: str) -> tuple[float, InstallResult]:
    lines: list[str] = []
    rendered_at = 0.0

    def progress(line: str) -> None:
        nonlocal rendered_at
        if line.startswith("render:"):
            rendered_at = time.perf_counter()
        lines.append(line)

    t0 = time.perf_counter()
    result = install(site, bundle=bundle, log_dir=log_dir, ssh_config=bed.ssh_config_path,
                     progress=progress, timeout=1800)
    elapsed = time.perf_counter() - t0
    bad = {h: t for h, t in result.hosts.items() if t.failed or t.unreachable}
    if bad or len(result.hosts) != len(site.hosts):
        sys.exit(f"{what}: install did not succeed on every host: {result}")
    changed = sum(t.changed for t in result.hosts.values())
    print(f"  {what:<34} {elapsed:7.1f} s  ({len(result.hosts)} host(s), "
          f"{changed} change(s))", flush=True)
    print(f"      {rendered_at - t0:6.1f} s  preflight (controller + SSH probe per host)")
    print(f"      {time.perf_counter() - rendered_at:6.1f} s  render + playbook, of which:")
    for task, span in slowest_steps(lines, top=4):
        print(f"        {span:6.1f} s  {task}")
    return elapsed, result


def run(bed: TestBed, work: Path, args: argparse.Namespace) -> None:
    names = [f"h{i}" for i in range(1, args.hosts + 1)]
    t0 = time.perf_counter()
    hosts = bed.up(names, docker=True)
    print(f"  {f'test bed: {len(hosts)} hosts up':<34} {time.perf_counter() - t0:7.1f} s",
          flush=True)
    t0 = time.perf_counter()
    bundle = build_bundle(args.version, work / "bundles")
    print(f"  {'bundle (built or cached)':<34} {time.perf_counter() - t0:7.1f} s "
          f"({bundle.stat().st_size / 1e6:.0f} MB)", flush=True)

    one = write_site(work / "site-1", args.version, hosts[:1], bed.client_key)
    first, _ = timed_install(one, bundle, bed, work / "logs", "install, 1 fresh host")
    rerun, result = timed_install(one, bundle, bed, work / "logs", "re-run, 1 host, no change")
    if result.changed:
        print("  WARNING: the re-run changed something; see " + str(result.log_path))

    bed.reset(hosts[0].name)  # every host of the N-host run starts fresh
    many = write_site(work / f"site-{len(hosts)}", args.version, hosts, bed.client_key)
    wide, _ = timed_install(many, bundle, bed, work / "logs",
                            f"install, {len(hosts)} fresh hosts")

    ratio = wide / first
    print()
    print(f"{len(hosts)} hosts / 1 host:      {ratio:5.2f}  (goal < 2.5: "
          f"{'met' if ratio < 2.5 else 'NOT met'}; machine has {os.cpu_count()} CPU(s))")
    print(f"no-change re-run / first: {rerun / first:5.2f}  ({rerun:.1f} s vs {first:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8, help="hosts of the wide run (default 8)")
    ap.add_argument("--version", default="2.15.2", help="Harbor release of the bundle")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_install needs root (it starts test hosts in network namespaces)")
    work = Path(tempfile.mkdtemp(prefix="harborctl-bench-install-"))
    bed = TestBed.allocate(work / "bed")
    print(f"bench_install: Harbor {args.version}, bed network {bed.subnet}", flush=True)
    try:
        run(bed, work, args)
    finally:
        bed.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
