"""A wheel built from the checkout carries its templates, playbooks and example, and
renders from outside the checkout (importlib.resources, not paths of the source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_wheel_installs_and_renders_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("harborctl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "harbor_ops/templates/harbor.yml.j2" in names
    assert "harbor_ops/site/example.yml" in names
    assert any(n.startswith("harbor_ops/playbooks/") for n in names)
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HARBOR_ADMIN_PASSWORD": "pw-admin",
           "HARBOR_DB_PASSWORD": "pw-db", "PYTHONSAFEPATH": "1"}
    code = ("import harbor_ops, sys; from harbor_ops.cli.main import main; "
            "assert harbor_ops.__file__.startswith(sys.argv[1]), harbor_ops.__file__; "
            "main(['init', '-c', 'site.yml']); "
            "main(['render', '-c', 'site.yml', '--output-dir', 'out', "
            "'--harbor-version', '2.8.6'])")
    run = subprocess.run([sys.executable, "-c", code, str(target)], cwd=elsewhere, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rendered = (elsewhere / "out/harbor.yml").read_text()
    assert "_version: 2.8.0" in rendered
    assert "pw-admin" in rendered and "pw-admin" not in run.stdout + run.stderr
    assert (elsewhere / "out/harbor.yml").stat().st_mode & 0o777 == 0o600
