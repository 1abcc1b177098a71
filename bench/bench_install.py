"""Benchmark: `harborctl install` against the bare install.sh path, on 1 and on N hosts.

Brings up a test bed of N hosts (default 8: netns, own rootfs, sshd, dockerd), builds the
Harbor-shaped offline installer once (tests/bed/bundle), then times, in the same run:

1. the bare path on one fresh host: what a person scripts without harborctl (scp the bundle,
   then one ssh command that unpacks it, writes harbor.yml and runs install.sh);
2. `harborctl install` (preflight, render, the harbor role over SSH, health gate) on one fresh
   host, and a no-change re-run on that host (the nightly converge);
3. `harborctl install` ON one fresh host with ``connection: local`` (harborctl brought in
   with the offline wheelhouse first, not timed; bench/local_install.py), and its re-run;
4. the bare path on N fresh hosts, in parallel (one thread per host);
5. `harborctl install` on N fresh hosts, in parallel through Ansible's forks.

Goals (issue 8): 1 host under 1.5x bare, N hosts under 1.3x bare on N hosts, re-run under
4 s; local no slower than SSH (issue 13). Each harborctl run also prints where its time
went: the preflight, and the playbook's tasks on the critical path (from the progress lines
of the event stream); every timed run, bare or not, prints where the machine's CPU went
(bench/cpu_split.py: the controller's processes, the hosts', their containers', idle).
Everything is torn down at the end, whatever happens. Run as root
from the repository:

    .venv/bin/python -m bench.bench_install [--hosts 8] [--runs N] [--version 2.15.2]
        [--wheelhouse W]

``--runs N`` times the wide pair (4, then 5) N times, interleaved, and judges the median
ratio: the bare path alone varies by a quarter between runs (38.3-48.5 s on 8 hosts).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import local_install
from bench.cpu_split import Measure, Split
from bench.pairs import medians, run_count
from harbor_ops.install.run import InstallResult, install
from harbor_ops.render.engine import render_site
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed

STEP = re.compile(r"^\[\s*([\d.]+)s\] (\S+): (.+) \.\.\. (\w+)$")
ADMIN_PASSWORD = "bench-Admin-pw"  # throw-away values for throw-away hosts
DB_PASSWORD = "bench-Db-pw"
BARE_DIR = "/opt/harbor-bare"


def write_site(directory: Path, version: str, hosts: list[Host], key: Path,
               local: bool = False) -> Site:
    """One site for ``hosts``: identical replicas, all named by the first host's address;
    with ``local``, the default inventory instead (this host, local connection)."""
    directory.mkdir(parents=True, exist_ok=True)
    secrets = directory / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    (secrets / "admin").write_text(ADMIN_PASSWORD + "\n")
    (secrets / "db").write_text(DB_PASSWORD + "\n")
    name = hosts[0].address
    entries = "".join(f"  - {{name: {h.name}, address: {h.address}, ssh_key_file: {key}}}\n"
                      for h in hosts)
    if local:
        entries = "  - {name: localhost, connection: local}\n"
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


# ------------------------------------------------------------------------------ bare path


def bare_install(host: Host, bundle: Path, harbor_yml: Path) -> float:
    """scp the bundle, then ONE ssh command: unpack, harbor.yml from stdin, install.sh."""
    t0 = time.perf_counter()
    cfg = ["-F", str(host.ssh_config)]
    subprocess.run(["ssh", *cfg, host.name, f"mkdir -p {BARE_DIR}"], check=True, timeout=60)
    subprocess.run(["scp", "-q", *cfg, str(bundle), f"{host.name}:{BARE_DIR}/"], check=True,
                   timeout=600)
    script = (f"set -e; cd {BARE_DIR} && tar -xzf {bundle.name} && cat > harbor/harbor.yml"
              " && cd harbor && ./install.sh >install.log 2>&1")
    subprocess.run(["ssh", *cfg, host.name, script], input=harbor_yml.read_bytes(), check=True,
                   timeout=1800)
    return time.perf_counter() - t0


def timed_bare(hosts: list[Host], bundle: Path, harbor_yml: Path, what: str) -> float:
    with Measure([h.netns for h in hosts]) as cpu:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            per_host = list(pool.map(lambda h: bare_install(h, bundle, harbor_yml), hosts))
        elapsed = time.perf_counter() - t0
    print(f"  {what:<34} {elapsed:7.1f} s  (slowest host {max(per_host):.1f} s)", flush=True)
    print_split(cpu.split)
    return elapsed


def print_split(split: Split, tail: tuple[str, float] | None = None) -> None:
    """The run's CPU: the controller's processes, the hosts' (the rest), idle."""
    for line in split.lines():
        print(f"      {line}")
    if tail is not None:
        idle, seconds = split.idle_after(tail[1])
        print(f"      idle after {tail[0]}: {idle:.1f} CPU-s in the last {seconds:.1f} s")


# ------------------------------------------------------------------------------ harborctl


GATE_TASK = "Wait until Harbor reports every component healthy"
INSTALL_SH_TASK = "Run Harbor's install.sh"


def step_spans(lines: list[str]) -> list[tuple[str, float]]:
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
    return spans


def slowest_steps(lines: list[str], top: int = 5) -> list[tuple[str, float]]:
    return sorted(step_spans(lines), key=lambda s: -s[1])[:top]


def timed_install(site: Site, bundle: Path, bed: TestBed, log_dir: Path, what: str,
                  top: int) -> tuple[float, InstallResult, float]:
    """Seconds taken, the result, and the seconds of what the bare path does not do (the
    preflight and the health gate's wait on the critical path)."""
    lines: list[str] = []
    rendered_at = 0.0
    install_sh_done = 0.0  # when the last host's install.sh result arrived

    def progress(line: str) -> None:
        nonlocal rendered_at, install_sh_done
        if line.startswith("preflight: passed"):  # the verdict (probes beside the start)
            rendered_at = time.perf_counter()
        m = STEP.match(line)
        if m and m.group(3) == INSTALL_SH_TASK:
            install_sh_done = time.perf_counter()
        lines.append(line)

    with Measure([bed.hosts[h.name].netns for h in site.hosts]) as cpu:
        t0 = time.perf_counter()
        result = install(site, bundle=bundle, log_dir=log_dir, ssh_config=bed.ssh_config_path,
                         progress=progress, timeout=1800)
        elapsed = time.perf_counter() - t0
    bad = {h: t for h, t in result.hosts.items() if t.failed or t.unreachable}
    if bad or len(result.hosts) != len(site.hosts):
        sys.exit(f"{what}: install did not succeed on every host: {result}")
    changed = sum(t.changed for t in result.hosts.values())
    tasks = sum(t.ok + t.changed + t.skipped for t in list(result.hosts.values())[:1])
    print(f"  {what:<34} {elapsed:7.1f} s  ({len(result.hosts)} host(s), "
          f"{changed} change(s), {tasks} task results per host)", flush=True)
    print(f"      {rendered_at - t0:6.1f} s  until the preflight's verdict (controller + SSH "
          "probe per host, beside the playbook's start)")
    print(f"      {time.perf_counter() - rendered_at:6.1f} s  playbook after the verdict; its "
          "steps:")
    for task, span in slowest_steps(lines, top=top):
        print(f"        {span:6.1f} s  {task}")
    print_split(cpu.split, ("the last host's install.sh", install_sh_done - t0)
                if install_sh_done else None)
    extra = (rendered_at - t0) + sum(span for task, span in step_spans(lines)
                                     if task == GATE_TASK)
    return elapsed, result, extra


def fresh(bed: TestBed, hosts: list[Host]) -> None:
    """Every host back to the golden image (files, containers, images)."""
    for host in hosts:
        bed.reset(host.name)


def ratio_line(label: str, ours: float, bare: float, goal: float) -> str:
    r = ours / bare
    return (f"{label:<30} {r:5.2f}x  ({ours:.1f} s vs {bare:.1f} s; goal < {goal}x: "
            f"{'met' if r < goal else 'NOT met'})")


def apart_line(ours: float, extra: float, bare: float) -> str:
    """For reading only (the goal is the whole ratio above): without the preflight and the
    health gate's wait, which the bare path does not do."""
    return (f"{'  of which preflight + gate':<30} {extra:5.1f} s; the rest / bare "
            f"{(ours - extra) / bare:.2f}x")


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
    rendered = render_site(one, output_dir=work / "bare-render", validate=False)
    harbor_yml = rendered.output_dir / "harbor.yml"
    bare1 = timed_bare(hosts[:1], bundle, harbor_yml, "bare install.sh, 1 fresh host")
    fresh(bed, hosts[:1])
    first, _, first_extra = timed_install(one, bundle, bed, work / "logs",
                                          "harborctl install, 1 fresh host", args.top)
    rerun, result, _ = timed_install(one, bundle, bed, work / "logs",
                                     "re-run, 1 host, no change", args.top)
    if result.changed:
        print("  WARNING: the re-run changed something; see " + str(result.log_path))

    fresh(bed, hosts[:1])
    local_first, local_rerun = time_local(hosts[0], bundle, work, args)

    print()
    print(f"machine: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")
    print(ratio_line("harborctl / bare, 1 host", first, bare1, 1.5))
    print(apart_line(first, first_extra, bare1))
    print(f"{'no-change re-run, 1 host':<30} {rerun:5.1f} s  (goal < 4 s: "
          f"{'met' if rerun < 4 else 'NOT met'})")
    print(ratio_line("local / SSH, 1 fresh host", local_first, first, 1.0)
          + f"; re-run local {local_rerun:.1f} s vs SSH {rerun:.1f} s")
    if len(hosts) == 1:
        return
    many = write_site(work / f"site-{len(hosts)}", args.version, hosts, bed.client_key)
    pairs: list[tuple[float, float]] = []
    for number in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"pair {number} of {args.runs}, {len(hosts)} hosts", flush=True)
        fresh(bed, hosts)
        bare_n = timed_bare(hosts, bundle, harbor_yml,
                            f"bare install.sh, {len(hosts)} fresh hosts")
        fresh(bed, hosts)
        wide, _, wide_extra = timed_install(many, bundle, bed, work / "logs",
                                            f"harborctl install, {len(hosts)} fresh hosts",
                                            args.top)
        pairs.append((wide, bare_n))
        print(f"machine load average now {os.getloadavg()[0]:.1f}")
        print(ratio_line(f"harborctl / bare, {len(hosts)} hosts", wide, bare_n, 1.3))
        print(apart_line(wide, wide_extra, bare_n))
    if args.runs > 1:
        wide, bare_n, ratio, ratios = medians(pairs)
        print(f"{f'{len(hosts)} hosts, medians of {args.runs} pairs':<30} {ratio:5.2f}x  "
              f"({wide:.1f} s vs {bare_n:.1f} s; pairs "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal < 1.3x: "
              f"{'met' if ratio < 1.3 else 'NOT met'})")


def time_local(host: Host, bundle: Path, work: Path,
               args: argparse.Namespace) -> tuple[float, float]:
    """The same install, run by harborctl on the fresh host itself (connection: local)."""
    wheelhouse = args.wheelhouse or local_install.build_wheelhouse(work / "wheelhouse")
    site = write_site(work / "site-local", args.version, [host], Path("/unused"), local=True)
    assert site.path is not None
    site_text = site.path.read_text()
    took = local_install.prepare(host, wheelhouse, bundle, site_text,
                                 {"admin": ADMIN_PASSWORD, "db": DB_PASSWORD})
    print(f"  {'harborctl into the host (offline)':<34} {took:7.1f} s  (not part of install)",
          flush=True)
    with local_install.agent_held(host):
        first, _ = local_install.timed_local_install(host, bundle,
                                                     "harborctl install, local, fresh")
        rerun, result = local_install.timed_local_install(host, bundle,
                                                          "re-run, local, no change")
    if result["changed"]:
        print("  WARNING: the local re-run changed something")
    return first, rerun


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8, help="hosts of the wide run (default 8)")
    ap.add_argument("--version", default="2.15.2", help="Harbor release of the bundle")
    ap.add_argument("--top", type=int, default=6, help="slowest playbook steps shown per run")
    ap.add_argument("--wheelhouse", type=Path, help="scripts/wheelhouse's archive (default: "
                    "built for the run)")
    ap.add_argument("--runs", type=run_count, default=1, metavar="N",
                    help="pairs of wide runs (bare, then harborctl), interleaved and judged "
                    "by their median; 1 to 9")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_install needs root (it starts test hosts in network namespaces)")
    work = Path(tempfile.mkdtemp(prefix="harborctl-bench-install-"))
    # A lock of its own: a harborctl job elsewhere on this machine must not refuse ours.
    os.environ["HARBORCTL_LOCK_FILE"] = str(work / "harborctl.lock")
    bed = TestBed.allocate(work / "bed")
    print(f"bench_install: Harbor {args.version}, bed network {bed.subnet}", flush=True)
    try:
        run(bed, work, args)
    finally:
        bed.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
