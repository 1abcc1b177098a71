"""The harbor role as the collection harborctl.harbor: built, installed, used by a playbook.

What an Ansible user does: build the tarball (scripts/build-collection, which CI runs too),
`ansible-galaxy collection install` it into a collections path, and call the role from a
three-line playbook of their own, here in check mode against a fresh test host (Ansible
really connects, reads the host and reports what it would change). The checkout's own
playbooks/ is kept out of Ansible's search paths, so the role can only come from the
installed collection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harbor_ops.core.hashing import sha256_file
from harbor_ops.install.run import role_vars
from harbor_ops.render.engine import render_site
from harbor_ops.site.load import load_site
from tests.bed.bundle.builder import build_bundle
from tests.bed.hosts import Host, TestBed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VERSION = "2.15.2"
# The README's three-line playbook.
PLAYBOOK = """\
- hosts: harbor
  become: true
  roles: [harborctl.harbor.harbor]
"""


def ansible_tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built tarball installed into a private collections path."""
    work = tmp_path_factory.mktemp("collection")
    built = subprocess.run(["bash", str(ROOT / "scripts" / "build-collection"),
                            str(work / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    tarball = Path(built.stdout.strip().splitlines()[-1])
    assert tarball.name == "harborctl-harbor-0.1.0.tar.gz" and tarball.is_file()
    path = work / "collections"
    done = subprocess.run([ansible_tool("ansible-galaxy"), "collection", "install",
                           str(tarball), "-p", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    role = path / "ansible_collections" / "harborctl" / "harbor" / "roles" / "harbor"
    assert (role / "tasks" / "main.yml").is_file()
    return path


def ansible_env(collections: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_ROLES_PATH=str(tmp / "no-roles"), ANSIBLE_NOCOLOR="true",
               ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
               ANSIBLE_PIPELINING="true", ANSIBLE_RETRY_FILES_ENABLED="false")
    return env


@pytest.mark.parametrize("playbook", ["site.yml", "harborctl.harbor.install",
                                      "harborctl.harbor.upgrade", "harborctl.harbor.trust"])
def test_playbooks_pass_syntax_check(collections: Path, tmp_path: Path, playbook: str) -> None:
    """The README's three-line playbook, and the collection's own playbooks."""
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    p = subprocess.run([ansible_tool("ansible-playbook"), "-i", "localhost,", "--syntax-check",
                        playbook], env=ansible_env(collections, tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_three_line_playbook_checks_a_fresh_host(collections: Path, testbed: TestBed,
                                                 fresh_host: Host, tmp_path: Path) -> None:
    """--check on a fresh host: the role reads it and says install.sh would run."""
    bundle = build_bundle(VERSION, tmp_path / "bundles")
    site_file = tmp_path / "harborctl.yml"
    (tmp_path / "admin").write_text("coll-Admin-pw\n")
    (tmp_path / "db").write_text("coll-Db-pw\n")
    site_file.write_text(f"""\
harbor:
  version: {VERSION}
  hostname: {fresh_host.address}
  http: {{port: 8080}}
  harbor_admin_password_file: admin
  database: {{password_file: db}}
  data_volume: /data
hosts:
  - {{name: {fresh_host.name}, address: {fresh_host.address}}}
""")
    site = load_site(site_file)
    render_site(site, output_dir=tmp_path / "staging", validate=False)
    extra = role_vars(site, bundle=bundle, bundle_sha256=sha256_file(bundle),
                      staging=tmp_path / "staging")
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    (tmp_path / "site.yml").write_text(PLAYBOOK)
    p = subprocess.run([ansible_tool("ansible-playbook"), "-i", str(testbed.inventory_path),
                        "--limit", fresh_host.name, "--check", "-e", f"@{tmp_path / 'vars.json'}",
                        str(tmp_path / "site.yml")], env=ansible_env(collections, tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "harborctl.harbor.harbor : Report that install.sh would run" in out
    assert "install.sh would run" in out
    assert "failed=0" in out and "unreachable=0" in out
    # Check mode changed nothing on the host.
    assert fresh_host.exec("test -e /opt/harbor", check=False).returncode != 0


def test_the_collections_modules_run_where_ansible_discovers_the_interpreter(
        collections: Path, testbed: TestBed, fresh_host: Host, tmp_path: Path) -> None:
    """harbor_host_run asks Ansible's interpreter discovery, as any module does, and
    records what it found as the same fact; the module then runs on that Python."""
    env = {**ansible_env(collections, tmp_path), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "true"}
    p = subprocess.run([ansible_tool("ansible"), "-i", str(testbed.inventory_path),
                        fresh_host.name, "-e", "ansible_python_interpreter=auto_silent",
                        "-m", "harborctl.harbor.harbor_host_files", "-a",
                        json.dumps({"start": []})], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)["plays"][0]["tasks"][0]["hosts"][fresh_host.name]
    assert result["written"] == [] and not result["changed"], result
    found = result["ansible_facts"]["discovered_interpreter_python"]
    assert found.startswith("/usr/bin/python3"), found
