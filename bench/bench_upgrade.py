"""Benchmark: downtime of `harborctl upgrade apply` against Harbor's manual upgrade procedure.

Same run, same bed host, same data: Harbor 2.14.4 installed by `harborctl install` with a
database of at least ``--db-mb`` MB and Harbor-sized images (the double's images padded to
about ``--pad-mb`` MB of incompressible layers by the bundle builder, so `docker load` costs
what Harbor's ~650 MB of layers cost), then one hop to 2.15.2 (a real pg_upgrade), twice:

1. `harborctl upgrade apply` (backup, unpack, docker load and prepare while 2.14.4 serves;
   then stop, snapshot, switch, start, gate);
2. Harbor's documented procedure (goharbor/website docs/administration/upgrade), scripted
   faithfully on the host: `docker compose down`; `mv harbor /my_backup_dir/harbor`;
   `cp -r /data/database /my_backup_dir/`; extract the new installer; `docker image load -i
   harbor.v2.15.2.tar.gz`; harbor.yml for 2.15.2 (the double has no `prepare migrate`: the
   file harborctl renders for 2.15.2 is copied instead, which only makes the manual path
   faster); `./install.sh`.

Downtime = the time `GET /v2/` through the host's front does not answer 200 or 401, sampled
every 100 ms from the controller. The host is reinstalled between the two runs. Goal (issue
11): harborctl's downtime under 0.35 of the manual one. Printed too: where harborctl's
downtime went (its window's journal lines, the host's container events, harbor-db's
conversion and harbor-core's start, against the sampler's outage) and, as a reference, the
double's own floor: `compose down` then `up -d` of the upgraded release until `/v2/`
answers, no harborctl involved (a database already converted: no pg_upgrade in it).
``--runs N`` runs the two paths N times, interleaved (harborctl, manual, harborctl, ...; the
host reinstalled before each), prints every pair and judges the median of the pairs' ratios:
the manual path's downtime alone varied from 18.8 to 24.7 s between single runs. Run as root
from the repository:

    .venv/bin/python -m bench.bench_upgrade [--pad-mb 650] [--db-mb 250] [--runs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

from bench.pairs import medians, run_count
from harbor_ops.install.run import install
from harbor_ops.site.load import load_site
from harbor_ops.site.model import Site
from harbor_ops.upgrade.apply import Options, apply
from tests.bed._run import BedError
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed

OLD, NEW = "2.14.4", "2.15.2"
GOAL = 0.35
# Rows of ~2 KB of random hex in artifact.extra_attrs: TOAST keeps them near that size.
DATA_SQL = """
INSERT INTO artifact (project_id, repository_id, repository_name, digest, size, extra_attrs)
SELECT 1, i, 'bench/repo' || i, 'sha256:' || md5(i::text), i,
       (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 64) j)
  FROM generate_series({start}, {stop}) i;
"""


def write_site(directory: Path, version: str, host: Host, key: Path) -> Site:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pw").write_text("bench-Admin-pw\n")
    (directory / "harborctl.yml").write_text(f"""\
harbor:
  version: {version}
  hostname: {host.address}
  http: {{port: 8080}}
  harbor_admin_password_file: pw
  database: {{password_file: pw}}
  data_volume: /data
front:
  listen: 0.0.0.0:80
  server_name: {host.address}
  upstream: http://127.0.0.1:8080
install: {{dir: /opt/harbor, bundle_dir: /opt/harbor-bundles}}
hosts:
  - {{name: {host.name}, address: {host.address}, ssh_key_file: {key}}}
""")
    return load_site(directory / "harborctl.yml")


# ------------------------------------------------------------------ downtime sampling


class Sampler:
    """GET /v2/ through the front every 100 ms; the seconds it did not answer 200/401."""

    def __init__(self, url: str) -> None:
        self.url, self.samples = url, []  # type: ignore[var-annotated]
        self.wall = time.time() - time.monotonic()  # a sample's wall-clock time: t + wall
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:  # noqa: S310 - bed
                    ok = r.status == 200
            except urllib.error.HTTPError as exc:
                ok = exc.code == 401
            except OSError:
                ok = False
            self.samples.append((t, ok))
            self._stop.wait(max(0.0, 0.1 - (time.monotonic() - t)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def outages(self) -> list[tuple[float, float]]:
        """(wall time of the first unanswered sample, of the next answered one) per outage."""
        out, began = [], None
        for t, ok in self.samples:
            if not ok and began is None:
                began = t
            elif ok and began is not None:
                out.append((began + self.wall, t + self.wall))
                began = None
        if began is not None:
            out.append((began + self.wall, self.samples[-1][0] + self.wall))
        return out

    def downtime(self) -> float:
        down, prev = 0.0, None
        for t, ok in self.samples:
            if prev is not None and not prev[1]:
                down += t - prev[0]
            prev = (t, ok)
        return down


# ------------------------------------------------------------------ the two procedures


def prepared_host(bed: TestBed, bundles: dict[str, Path], work: Path, db_mb: int) -> Site:
    """h1 fresh, Harbor 2.14.4 installed, ``db_mb`` MB of rows; returns the site at 2.15.2."""
    host = bed.reset("h1")
    site = write_site(work / "site-old", OLD, host, bed.client_key)
    install(site, bundle=bundles[OLD], log_dir=work / "logs", ssh_config=bed.ssh_config_path,
            timeout=1800)
    rows, step = db_mb * 1024 * 1024 // 2200, 20000
    for start in range(1, rows + 1, step):
        host.exec("docker exec -i harbor-db psql -q -v ON_ERROR_STOP=1 -U postgres -d registry",
                  input=DATA_SQL.format(start=start, stop=min(rows, start + step - 1)).encode(),
                  timeout=900)
    size = host.exec("docker exec harbor-db psql -U postgres -d registry -tAc "
                     "\"SELECT pg_database_size('registry')\"").stdout.strip()
    print(f"  database: {int(size) / 1e6:.0f} MB")
    return write_site(work / "site-new", NEW, host, bed.client_key)


def load() -> str:
    """This machine's load averages: the figures mean little on a machine busy elsewhere."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run_harborctl(bed: TestBed, site: Site, bundle_dir: Path, work: Path) -> float:
    host = bed.hosts["h1"]
    lines: list[str] = []
    print(f"  harborctl upgrade apply ({load()})")
    with Sampler(f"http://{host.address}/v2/") as s:
        result = apply(site, to=NEW, host=None, progress=lines.append, opts=Options(
            bundle_dir=bundle_dir, ssh_config=bed.ssh_config_path, log_dir=work / "logs",
            backup_dir=work / "backups"))
    if result.error is not None:
        raise SystemExit(f"harborctl upgrade apply failed: {result.error}")
    hop = result.hosts[0].hops[-1]
    print(f"  harborctl downtime {s.downtime():.1f} s (its own account: "
          f"{hop['downtime_seconds']} s); steps:")
    for step in hop["steps"]:
        print(f"    {step['step']:<12} {step['phase']:<9} {step['seconds']:>7.1f} s")
    timeline(host, s)
    return s.downtime()


TIMELINE_EVENTS = ("create", "start", "die", "destroy", "pause", "unpause")
# The log lines that mark the conversion (entrypoint, initdb, pg_upgrade) and core's start.
LOG_LINES = {
    "harbor-db": ("upgrade DB", "init DB", "Success.", "server started", "server stopped",
                  "Performing", "Checking", "Creating dump", "Restoring", "Copying",
                  "Upgrade Complete", "remove the", "ready to accept", "shutting down"),
    "harbor-core": ("stand-in", "Is the server"),
}


def timeline(host: Host, s: Sampler) -> None:
    """Where the downtime went: the window's journal lines, the host's container events and
    the first log lines of harbor-db and harbor-core, against the sampler's outage, in
    seconds from the window's ``stop begin``."""
    journal = [json.loads(line) for line in host.exec(
        "cat /var/lib/harborctl/upgrade.journal").stdout.splitlines() if line.startswith("{")]
    stop = [r["t"] for r in journal if r["step"] == "stop" and r["event"] == "begin"]
    outages = s.outages()
    if not stop or not outages:
        print("  timeline: no window or no outage seen")
        return
    t0 = stop[-1]
    marks = [(r["t"], f"window {r['step']} {r['event']}") for r in journal if r["t"] >= t0]
    marks += [(a, "/v2/ stops answering") for a, _ in outages]
    marks += [(b, "/v2/ answers again") for _, b in outages]
    since, until = int(t0) - 1, int(max(b for _, b in outages)) + 30
    fmt = "{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}}"
    events = host.exec(f"docker events --since {since} --until {until} --filter type=container "
                       f"--format '{fmt}'", check=False).stdout
    for line in events.splitlines():
        nano, action, name = (line.split(" ", 2) + ["", ""])[:3]
        if action in TIMELINE_EVENTS and nano.isdigit():
            marks.append((int(nano) / 1e9, f"  {name} {action}"))
    for container, keep in LOG_LINES.items():
        logs = host.exec(f"docker logs -t --since {since} {container} 2>&1", check=False).stdout
        for line in logs.splitlines():
            stamp, _, text = line.partition(" ")
            if not any(k in text for k in keep) or '"GET ' in text:
                continue
            with contextlib.suppress(ValueError):
                when = datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00").timestamp()
                marks.append((when, f"    {container}: {text[:90]}"))
    print("  timeline (s from the window's stop begin):")
    for when, what in sorted(marks):
        if when <= until:
            print(f"    {when - t0:7.2f}  {what}")
    ready = [w for w, what in marks if "harbor-db:" in what and "ready to accept" in what]
    connected = [w for w, what in marks if "harbor-core:" in what and (
        "upgrading schema" in what or "schema is up to date" in what)]
    if ready and connected:  # the last ready is the converted cluster's own server
        print(f"  core's retry lost {max(connected[0] - ready[-1], 0):.2f} s (connected "
              f"{connected[0] - t0:.2f}, harbor-db ready {ready[-1] - t0:.2f})")


FLOOR = """set -e
cd /opt/harbor/harbor
compose=$(command -v docker-compose || echo docker compose)
echo "DOWN $(date +%s.%N)"; $compose -p harbor down >/dev/null 2>&1
echo "UP $(date +%s.%N)"; $compose -p harbor up -d >/dev/null 2>&1
echo "UPPED $(date +%s.%N)"
"""


def floor(bed: TestBed) -> None:
    """The double's own floor, no harborctl: the release now installed (2.15.2, database
    converted), `compose down` then `up -d`, until `GET /v2/` answers (a reference line)."""
    host = bed.hosts["h1"]
    with Sampler(f"http://{host.address}/v2/") as s:
        try:
            out = host.exec(FLOOR, timeout=600).stdout
        except BedError as exc:
            print(f"  the double's floor: not measured ({exc})")
            return
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (s.samples and s.samples[-1][1]):
            time.sleep(0.1)
    marks = {p[0]: float(p[1]) for p in (ln.split() for ln in out.splitlines()) if len(p) == 2}
    answered = s.outages()[-1][1] if s.outages() else float("nan")
    print(f"  the double's floor ({load()}): compose down {marks['UP'] - marks['DOWN']:.1f} s, "
          f"up -d {marks['UPPED'] - marks['UP']:.1f} s, /v2/ answers "
          f"{answered - marks['UP']:.1f} s after up -d began; downtime {s.downtime():.1f} s")


MANUAL = """set -e
t() {{ echo "STEP $1 $(date +%s.%N)"; }}
mkdir -p /my_backup_dir /opt/harbor-manual
t down; cd /opt/harbor/harbor && docker-compose -p harbor down
t mv; cd /opt/harbor && mv harbor-{old} /my_backup_dir/harbor
t cp; cp -r /data/database /my_backup_dir/
t extract; tar xzf /root/harbor-offline-installer-v{new}.tgz -C /opt/harbor-manual
t load; docker image load -i /opt/harbor-manual/harbor/harbor.v{new}.tar.gz
t migrate; cp /root/harbor.yml.{new} /opt/harbor-manual/harbor/harbor.yml
t install; cd /opt/harbor-manual/harbor && COMPOSE_PROJECT_NAME=harbor ./install.sh
t done
"""


def run_manual(bed: TestBed, site: Site, bundle: Path, work: Path) -> float:
    from harbor_ops.render.engine import render_site

    host = bed.hosts["h1"]
    print(f"  manual procedure ({load()})")
    render_site(site, output_dir=work / "rendered", validate=False)
    shutil.copy(bundle, host.root_path / "root" / bundle.name)
    shutil.copy(work / "rendered" / "harbor.yml", host.root_path / "root" / f"harbor.yml.{NEW}")
    with Sampler(f"http://{host.address}/v2/") as s:
        out = host.exec(MANUAL.format(old=OLD, new=NEW), timeout=1800).stdout
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (s.samples and s.samples[-1][1]):
            time.sleep(0.2)
    marks = [(p[1], float(p[2])) for p in (ln.split() for ln in out.splitlines())
             if len(p) == 3 and p[0] == "STEP"]
    print(f"  manual downtime {s.downtime():.1f} s; steps:")
    for (name, t0), (_, t1) in zip(marks, marks[1:], strict=False):
        print(f"    {name:<12} {t1 - t0:7.1f} s")
    return s.downtime()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pad-mb", type=int, default=650)
    ap.add_argument("--db-mb", type=int, default=250)
    ap.add_argument("--runs", type=run_count, default=1, metavar="N",
                    help="pairs of runs (harborctl, then manual), interleaved; 1 to 9")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upgrade-"))
    os.environ["HARBORCTL_LOCK_FILE"] = str(work / "harborctl.lock")
    bed = TestBed.allocate(work / "bed")
    try:
        bed.up(["h1"], docker=True)
        bundle_dir = work / "bundles"
        bundles = {v: build_bundle(v, bundle_dir, pad_mb=args.pad_mb) for v in (OLD, NEW)}
        print(f"bench_upgrade: {OLD} -> {NEW}, images padded by {args.pad_mb} MB, "
              f"database >= {args.db_mb} MB")
        pairs: list[tuple[float, float]] = []
        for number in range(1, args.runs + 1):
            if args.runs > 1:
                print(f"pair {number} of {args.runs}")
            ours = run_harborctl(bed, prepared_host(bed, bundles, work, args.db_mb),
                                 bundle_dir, work)
            if number == 1:
                floor(bed)
            manual = run_manual(bed, prepared_host(bed, bundles, work, args.db_mb),
                                bundles[NEW], work)
            pairs.append((ours, manual))
        ours, manual, ratio, ratios = medians(pairs)
        if args.runs > 1:
            for number, ((one, by_hand), each) in enumerate(zip(pairs, ratios, strict=True),
                                                            1):
                print(f"  pair {number}: harborctl {one:.1f} s, manual {by_hand:.1f} s, "
                      f"ratio {each:.2f}")
        which = f", medians of {args.runs} pairs" if args.runs > 1 else ""
        print(f"downtime: harborctl {ours:.1f} s, manual {manual:.1f} s, ratio {ratio:.2f}"
              f"{which} (goal < {GOAL}): {'MET' if ratio < GOAL else 'NOT MET'}")
    finally:
        bed.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
