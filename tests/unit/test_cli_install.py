"""`harborctl preflight` / `install` through the real entry point: bad input, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harbor_ops.cli.main import main
from harbor_ops.preflight.run import CHECKS

SITE = """\
harbor:
  version: 2.15.2
  hostname: 10.200.99.10
  harbor_admin_password_env: HCTL_TEST_ADMIN
  database: {{password_env: HCTL_TEST_DB}}
  data_volume: {tmp}/data
install:
  dir: {tmp}/opt
  bundle_dir: {tmp}/bundles
"""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return (code if isinstance(code, int) else 0), out, err


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HCTL_TEST_ADMIN", "admin-secret-value")
    monkeypatch.setenv("HCTL_TEST_DB", "db-secret-value")
    path = tmp_path / "site.yml"
    path.write_text(SITE.format(tmp=tmp_path))
    return path


def test_unknown_skip_names_the_valid_checks(site: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["preflight", "-c", str(site), "--skip", "cpus"], capsys)
    assert code == 2
    assert "cpus" in err and "memory" in err and "Traceback" not in err


def test_missing_bundle_file_is_a_usage_error(site: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["install", "-c", str(site), "--bundle", str(site.parent / "nope.tgz")],
                        capsys)
    assert code == 2 and "nope.tgz" in err


def test_corrupt_bundle_is_refused_before_any_change(site: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "harbor-offline-installer-v2.15.2.tgz"
    bundle.write_bytes(os.urandom(4096))
    skips = [a for name in CHECKS if name != "bundle" for a in ("--skip-check", name)]
    code, _, err = _run(["install", "-c", str(site), "--bundle", str(bundle), *skips], capsys)
    assert code == 4, err
    assert "bundle" in err
    assert not (tmp_path / "opt").exists() and not (tmp_path / "bundles").exists()
    assert "secret-value" not in err


def test_preflight_json_lists_every_check_by_name(site: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["preflight", "-c", str(site), "-o", "json"], capsys)
    doc = json.loads(out)
    names = {r["name"] for results in doc["hosts"].values() for r in results}
    assert {"cpu", "memory", "disk", "docker", "ports", "hostname"} <= names
    assert code in (0, 4) and (code == 4) == (not doc["ok"])


def test_install_is_refused_while_a_backup_holds_the_lock(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from harbor_ops.core.lock import LOCK_ENV, job_lock

    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "harborctl.lock"))
    bundle = tmp_path / "harbor-offline-installer-v2.15.2.tgz"
    bundle.write_bytes(b"checked by preflight, skipped here")
    skips = [a for name in CHECKS for a in ("--skip-check", name)]
    with job_lock(job="backup create"):
        code, _, err = _run(["install", "-c", str(site), "--bundle", str(bundle), *skips],
                            capsys)
    assert code == 7, err
    assert "backup create" in err
    assert not (tmp_path / "opt").exists()
