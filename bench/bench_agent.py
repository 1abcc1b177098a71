"""The idle agent: `harborctl agent run` memory and CPU against a sleeping Python, same run.

Starts the real foreground agent on a throw-away site whose jobs all ran just now (a
pre-written status file), so it does what it does most of the day: sleep until the next
job. Measures, over the same window, its resident memory (VmRSS and peak VmHWM from
/proc/<pid>/status) and CPU time (utime+stime from /proc/<pid>/stat), and the same for
`python -c "import time; time.sleep(N)"`. Goals: RSS < 50 MB, CPU about 0.
When RSS is over the goal it lists the heaviest imports at agent start (-X importtime).

    .venv/bin/python -m bench.bench_agent [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench.cpu_split import process_stat

RSS_GOAL_MB = 50.0
JOBS = ("backup", "drill", "upgrade_check", "health", "certificates", "disk_and_logs")


def proc_sample(pid: int) -> tuple[float, float, float]:
    """(RSS MB, peak RSS MB, CPU seconds) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)) / 1024  # type: ignore[union-attr]
    hwm = int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1)) / 1024  # type: ignore[union-attr]
    return rss, hwm, process_stat(pid)[2]


def write_site(folder: Path) -> tuple[Path, str]:
    """A site whose nightly work is 12 hours away and whose interval jobs just ran."""
    (folder / "data" / "secret" / "keys").mkdir(parents=True)
    (folder / "logs").mkdir()
    (folder / "bundles").mkdir()
    at = (datetime.now() + timedelta(hours=12)).strftime("%H:%M")
    site = folder / "harborctl.yml"
    site.write_text(f"""
harbor:
  version: 2.14.4
  hostname: harbor.bench.internal
  http:
    port: 8080
  harbor_admin_password_env: BENCH_HARBOR_ADMIN
  database:
    password_env: BENCH_HARBOR_DB
  data_volume: {folder / "data"}
  log:
    local:
      location: {folder / "logs"}
backup:
  dir: {folder / "backups"}
  at: "{at}"
agent:
  status_file: {folder / "status.json"}
  metrics_dir: {folder}
  bundle_dir: {folder / "bundles"}
install:
  dir: {folder / "opt"}
  bundle_dir: {folder / "bundles"}
""")
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    status = {"jobs": {name: {"last_run": now, "last_success": now, "result": "ok"}
                       for name in JOBS}}
    (folder / "status.json").write_text(json.dumps(status))
    return site, now


def wait_ready(status_file: Path, pid: int, proc: subprocess.Popen[bytes],
               timeout: float = 30.0) -> None:
    """The agent rewrites the status file with its own pid once it is up and scheduled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            sys.exit(f"the agent exited early: {err}")
        try:
            if json.loads(status_file.read_text()).get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    sys.exit("the agent did not come up within 30 s")


def heaviest_imports(site: Path, env: dict[str, str], top: int = 12) -> list[tuple[int, str]]:
    """Cumulative import time (us) of the top-level packages imported by `agent run`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "harbor_ops.cli.main",
                           "agent", "run", "--config", str(site), "--max-seconds", "0.2"],
                          env=env, capture_output=True, text=True, check=False, timeout=120)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 1:  # top-level imports only
            rows.append((int(m.group(1)), m.group(3)))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    harborctl = shutil.which("harborctl") or str(Path(sys.executable).with_name("harborctl"))
    folder = Path(tempfile.mkdtemp(prefix="harborctl-bench-agent-"))
    env = {**os.environ, "BENCH_HARBOR_ADMIN": "bench-only-admin",
           "BENCH_HARBOR_DB": "bench-only-db",
           "HARBORCTL_LOCK_FILE": str(folder / "harborctl.lock")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        site, written = write_site(folder)
        agent = subprocess.Popen([harborctl, "agent", "run", "--config", str(site)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(agent)
        ref = subprocess.Popen([sys.executable, "-c",
                                f"import time; time.sleep({args.seconds + 30})"])
        procs.append(ref)
        wait_ready(folder / "status.json", agent.pid, agent)
        a0, r0 = proc_sample(agent.pid), proc_sample(ref.pid)
        t0 = time.monotonic()
        time.sleep(args.seconds)  # the measured window itself; nothing to probe
        a1, r1 = proc_sample(agent.pid), proc_sample(ref.pid)
        window = time.monotonic() - t0
        jobs = json.loads((folder / "status.json").read_text())["jobs"]
        ran = [n for n, j in jobs.items() if j.get("last_run") != written]
        a_cpu, r_cpu = a1[2] - a0[2], r1[2] - r0[2]
        print(f"idle window {window:.1f} s; jobs run by the agent: {ran or 'none'}")
        print(f"{'':32} {'RSS MB':>8} {'peak MB':>8} {'CPU s':>8}")
        print(f"{'harborctl agent run':32} {a1[0]:8.1f} {a1[1]:8.1f} {a_cpu:8.3f}")
        print(f"{'python -c time.sleep()':32} {r1[0]:8.1f} {r1[1]:8.1f} {r_cpu:8.3f}")
        print(f"RSS ratio agent/reference {a1[0] / r1[0]:.2f}; "
              f"RSS {a1[0]:.1f} MB vs goal < {RSS_GOAL_MB:.0f} MB: "
              f"{'MET' if a1[0] < RSS_GOAL_MB else 'MISSED'}")
        print(f"CPU over {window:.0f} s: {a_cpu:.3f} s ({100 * a_cpu / window:.3f} % of a core)"
              f" vs reference {r_cpu:.3f} s; goal about 0: "
              f"{'MET' if a_cpu <= 0.05 * window / 60 else 'MISSED'}")
        if a1[0] >= RSS_GOAL_MB:
            print("heaviest imports at agent start (cumulative us, top-level):")
            for us, name in heaviest_imports(site, env):
                print(f"  {us:>9}  {name}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
