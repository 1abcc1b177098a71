"""``python -m tests.bed up|down|status``: the integration test bed for humans.

    python -m tests.bed up --hosts 2 [--no-docker] [--engine] [--dir DIR] [--network N]
    python -m tests.bed status
    python -m tests.bed down [--all]  # also cleans up after a crashed pytest session
    python -m tests.bed down --dir DIR  # only the bed in DIR (whoever started it)

The bed directory defaults to ``${HARBORCTL_TESTBED_DIR:-<tmp>/harborctl-testbed}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.bed._run import BedError
from tests.bed.dockerd import DockerEngine, recorded_engines, stop_recorded_engines
from tests.bed.hosts import NETWORKS, TestBed


def default_dir() -> Path:
    return Path(
        os.environ.get("HARBORCTL_TESTBED_DIR", Path(tempfile.gettempdir()) / "harborctl-testbed")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start test hosts (and optionally a controller dockerd)")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts h1..hN (default 2)")
    up.add_argument("--no-docker", action="store_true", help="do not start dockerd on hosts")
    up.add_argument(
        "--engine", action="store_true", help="also start a private dockerd on the controller"
    )
    up.add_argument("--dir", type=Path, default=None, help="bed directory")
    up.add_argument(
        "--network",
        type=int,
        default=None,
        help="bridge hctl<n>, hosts 10.200.<n>.10+ (default: first free n)",
    )
    down = sub.add_parser("down", help="tear down beds and engines whose session is gone")
    down.add_argument(
        "--all",
        action="store_true",
        help="also those of sessions still running (stops other people's tests)",
    )
    down.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="only the bed (and engine) in DIR, even while its session runs",
    )
    sub.add_parser("status", help="show what is up")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            engines = stop_recorded_engines(include_live=args.all, under=args.dir)
            beds = TestBed.down_recorded(include_live=args.all, base_dir=args.dir)
            print(f"down: beds={beds or '-'} engines={engines or '-'}")
            return 0
        return _status()
    except BedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    base = (args.dir or default_dir()).resolve()
    started = time.monotonic()
    bed = TestBed.allocate(base) if args.network is None else TestBed(base, args.network)
    hosts = bed.up([f"h{i}" for i in range(1, args.hosts + 1)], docker=not args.no_docker)
    print(f"{len(hosts)} hosts up in {time.monotonic() - started:.1f} s")
    for host in hosts:
        print(f"  {host.name:6} {host.address:12} root={host.root_path}")
    print(f"inventory:  {bed.inventory_path}  (YAML: {bed.inventory_yaml_path})")
    print(f"ssh config: {bed.ssh_config_path}   e.g. ssh -F {bed.ssh_config_path} h1")
    if args.engine:
        engine = DockerEngine(base / "engine")
        engine.start()
        print(f"controller engine: export DOCKER_HOST={engine.env['DOCKER_HOST']}")
    print(f"tear down with: python -m tests.bed down --dir {base}")
    return 0


def _status() -> int:
    records = {n: r for n in range(NETWORKS) if (r := TestBed.recorded(n))}
    print(json.dumps(records, indent=2) if records else "no test bed recorded")
    print("engines:", recorded_engines() or "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
