"""`harborctl upgrade plan` and `harborctl versions` as a user runs them.

Refusals are raised as HarborctlError and turned into a message and an exit code by the
console entry point (``main``), so those cases run ``main`` inside CliRunner's isolation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from harbor_ops.cli.main import cli, main


@dataclass
class Run:
    code: int
    out: str
    err: str


def harborctl(*args: str, env: dict[str, str] | None = None) -> Run:
    """Run the real console entry point (error mapping included), capturing its output."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Run(code, out.getvalue().decode(), err.getvalue().decode())


def test_plan_json_through_click_group() -> None:
    result = CliRunner().invoke(cli, ["upgrade", "plan", "--from", "2.0.6", "--to", "2.15.2",
                                      "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["stops"] == ["2.2.4", "2.4.3", "2.6.4", "2.8.6", "2.10.3", "2.12.4",
                             "2.14.4", "2.15.2"]
    assert data["current"] == "2.0.6" and data["target"] == "2.15.2"
    assert data["data_layout"] == "9.6"
    assert len(data["hops"]) == len(data["stops"])
    assert data["next_command"] == "harborctl upgrade apply --to 2.15.2"
    assert data["hops"][0]["command"] == (
        "harborctl backup create && harborctl install --bundle "
        "harbor-offline-installer-v2.2.4.tgz --harbor-version 2.2.4")


def test_plan_text_is_kubeadm_style() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.8.6", "--to", "2.12.4", "--db-size", "10G")
    assert r.code == 0, r.err
    assert "2.8.6 -> 2.10.3 -> 2.12.4" in r.out
    assert "Hop 1/2: 2.8.6 -> 2.10.3" in r.out
    assert "pg13 -> pg14 by pg_upgrade in harbor-db" in r.out
    assert "OUT of support" in r.out  # 2.8 is outside the support window
    assert "= 11.0 GiB" in r.out  # 1.0 x 10 GiB database + 1 GiB images
    assert r.out.rstrip().endswith("harborctl upgrade apply --to 2.12.4")


def test_plan_text_shows_yml_rename_and_removed_components() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.7.4", "--to", "2.8.6")
    assert r.code == 0, r.err
    assert "storage_service.redirect.disabled -> storage_service.redirect.disable" in r.out
    assert "chartmuseum" in r.out and "--with-chartmuseum" in r.out


def test_already_at_target() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.14.4", "--to", "2.14.4")
    assert r.code == 0 and "Already at target" in r.out
    r = harborctl("upgrade", "plan", "--from", "2.14.4", "--to", "2.14.4", "-o", "json")
    assert json.loads(r.out)["stops"] == [] and json.loads(r.out)["hops"] == []


def test_downgrade_exit_3() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.12.4", "--to", "2.10.3")
    assert r.code == 3
    assert "refused upgrade" in r.err and "downgrade" in r.err and r.out == ""
    assert "Traceback" not in r.err


def test_unknown_version_exit_2_lists_known_range() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.12.4", "--to", "2.16.0")
    assert r.code == 2
    assert "2.16.0 is not a known GA release" in r.err and "2.0.0 … 2.15.2" in r.err


def test_layout_contradiction_exit_3_explains() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.8.6", "--to", "2.12.4",
                  "--data-layout", "pg14")
    assert r.code == 3
    assert "/data/database/pg14" in r.err and "2.9.0 … 2.10.3" in r.err


def test_bad_layout_choice_exit_2() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.8.6", "--to", "2.12.4",
                  "--data-layout", "pg16")
    assert r.code == 2 and "pg16" in r.err


def test_bad_db_size_exit_2() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.8.6", "--to", "2.12.4", "--db-size", "lots")
    assert r.code == 2 and "not a size" in r.err


def test_to_is_required() -> None:
    r = harborctl("upgrade", "plan", "--from", "2.8.6")
    assert r.code == 2 and "--to" in r.err


def test_from_defaults_to_site_file_version(tmp_path: Path) -> None:
    example = resources.files("harbor_ops").joinpath("site/example.yml").read_text()
    assert "version: 2.15.2" in example
    site = tmp_path / "harborctl.yml"
    site.write_text(example.replace("version: 2.15.2", "version: 2.10.3", 1))
    r = harborctl("upgrade", "plan", "-c", str(site), "--to", "2.15.2", "-o", "json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["current"] == "2.10.3" and data["stops"] == ["2.12.4", "2.14.4", "2.15.2"]


def test_from_missing_and_no_site_file_exit_2(tmp_path: Path) -> None:
    r = harborctl("upgrade", "plan", "-c", str(tmp_path / "absent.yml"), "--to", "2.15.2")
    assert r.code == 2 and "--from" in r.err


def test_from_given_needs_no_site_file(tmp_path: Path) -> None:
    r = harborctl("upgrade", "plan", "-c", str(tmp_path / "absent.yml"), "--from", "2.13.5",
                  "--to", "2.15.2")
    assert r.code == 0 and "pg15 -> pg18" in r.out


def test_versions_text() -> None:
    r = harborctl("versions")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split()[:2] == ["RELEASES", "DB"]
    assert any(line.startswith("2.15.2 ") and "pg18" in line and "supported" in line
               for line in lines)
    assert any(line.startswith("2.15.0 … 2.15.1") and "pg15" in line for line in lines)
    assert any(line.startswith("2.0.0 … 2.0.6") and "end of life" in line for line in lines)


def test_versions_json() -> None:
    result = CliRunner().invoke(cli, ["versions", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_version = {r["version"]: r for r in data["releases"]}
    assert len(by_version) == 85 and data["newest"] == "2.15.2"
    assert by_version["2.15.2"]["data_layout"] == "pg18"
    assert by_version["2.15.1"]["data_layout"] == "pg15"
    assert by_version["2.8.6"]["supported"] is False and by_version["2.8.6"]["latest_patch"]
    assert data["supported_minors"] == ["2.13", "2.14", "2.15"]


@pytest.mark.parametrize("args", [["upgrade", "--help"], ["upgrade", "plan", "--help"]])
def test_help(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "plan" in result.output


def _local_site(tmp_path: Path, version: str = "2.15.2") -> Path:
    (tmp_path / "pw").write_text("it-pw-1\n")
    site = tmp_path / "harborctl.yml"
    site.write_text(f"""\
harbor:
  version: {version}
  hostname: harbor.test.internal
  http: {{port: 8080}}
  data_volume: {tmp_path}/data
  harbor_admin_password_file: pw
  database: {{password_file: pw}}
install: {{dir: {tmp_path}/opt}}
hosts:
  - {{name: here, connection: local}}
""")
    return site


def test_apply_to_must_equal_the_site_target(tmp_path: Path) -> None:
    r = harborctl("upgrade", "apply", "-c", str(_local_site(tmp_path)), "--to", "2.14.4",
                  "--dry-run")
    assert r.code == 2
    assert "harbor.version" in r.err and "Traceback" not in r.err


def test_apply_refuses_a_bad_reconnect_window_before_reading_any_host(tmp_path: Path) -> None:
    r = harborctl("upgrade", "apply", "-c", str(_local_site(tmp_path)), "--dry-run",
                  env={"HARBORCTL_RECONNECT_SECONDS": "300"})
    assert r.code == 2, r.err
    assert "HARBORCTL_RECONNECT_SECONDS='300': must be 'pause,window' in seconds" in r.err
    assert "Traceback" not in r.err


def test_apply_dry_run_refuses_a_host_without_harbor_in_json(tmp_path: Path) -> None:
    """The probe really runs on this machine: no Harbor under the site's install dir."""
    r = harborctl("upgrade", "apply", "-c", str(_local_site(tmp_path)), "--dry-run",
                  "-o", "json", env={"HARBORCTL_LOG_DIR": str(tmp_path / "logs")})
    assert r.code == 3, r.err
    data = json.loads(r.out)
    assert data["exit_code"] == 3 and data["dry_run"] is True
    host = data["hosts"][0]
    assert host["outcome"] == "refused"
    assert host["plan"]["refusals"][0]["check"] == "installed"
    assert "nothing was changed" in r.err
    assert not (tmp_path / "opt").exists() and not (tmp_path / "data").exists()


def test_status_of_a_host_without_a_journal(tmp_path: Path) -> None:
    r = harborctl("upgrade", "status", "-c", str(_local_site(tmp_path)), "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["hosts"][0]["plan"]["journal"]["outcome"] == "none"
