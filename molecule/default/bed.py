"""Molecule's create/destroy for the harbor role: one test host and the role's inputs.

``bed.py up DIR`` starts a test host (tests/bed: netns, own rootfs, sshd, dockerd) with its
inventory at DIR/inventory.yml, builds (or takes from the cache) the Harbor-shaped bundle,
renders harbor.yml and the host files as `harborctl install` does, and writes the role's
variables to DIR/harbor-vars.json (0600). ``bed.py down DIR`` stops exactly that bed (never
another session's) and deletes DIR. HARBORCTL_MOLECULE_VERSION picks the Harbor release.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harbor_ops.core.hashing import sha256_file  # noqa: E402
from harbor_ops.install.run import role_vars  # noqa: E402
from harbor_ops.render.engine import render_site  # noqa: E402
from harbor_ops.site.load import load_site_text  # noqa: E402
from tests.bed.bundle.builder import build_bundle  # noqa: E402
from tests.bed.hosts import TestBed  # noqa: E402

RECORD = "molecule-bed.json"


def site_text(address: str, secrets: Path, version: str) -> str:
    return f"""\
harbor:
  version: {version}
  hostname: {address}
  http: {{port: 8080}}
  harbor_admin_password_file: {secrets / 'admin'}
  database: {{password_file: {secrets / 'db'}}}
  data_volume: /data
front:
  listen: 0.0.0.0:80
  server_name: {address}
  upstream: http://127.0.0.1:8080
  cache: {{path: /var/cache/nginx/harbor}}
install: {{dir: /opt/harbor, bundle_dir: /opt/harbor-bundles}}
hosts:
  - {{name: h1, address: {address}}}
"""


def up(base: Path) -> None:
    version = os.environ.get("HARBORCTL_MOLECULE_VERSION", "2.15.2")
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    bed = TestBed.allocate(base)
    (base / RECORD).write_text(json.dumps({"network": bed.network}))
    host = bed.up(["h1"], docker=True)[0]
    secrets = base / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    for name in ("admin", "db"):
        (secrets / name).write_text("molecule-" + name + "-pw\n")
    site = load_site_text(site_text(host.address, secrets, version), base_dir=base)
    bundle = build_bundle(version, base / "bundles")
    staging = base / "staging"
    render_site(site, output_dir=staging)
    variables = role_vars(site, bundle=bundle, bundle_sha256=sha256_file(bundle), staging=staging)
    fd = os.open(base / "harbor-vars.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(variables, fh, indent=2)
    print(f"h1 at {host.address}; inventory {bed.inventory_yaml_path}")


def down(base: Path) -> None:
    record = base / RECORD
    if record.is_file():
        TestBed(base, json.loads(record.read_text())["network"]).down()
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    action, directory = sys.argv[1], Path(sys.argv[2])
    {"up": up, "down": down}[action](directory)
