"""The role's validators for systemd units and the cron file, run on real rendered files:
they pass what harborctl renders and refuse what systemd or cron would choke on, so a bad
file never replaces a working one on a host (the role's copy tasks call them first)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harbor_ops.hosts.playbook import playbook_dir
from harbor_ops.render import engine as render
from tests.bed.fixtures import unavailable
from tests.unit.test_render import make_site

FILES = playbook_dir() / "roles" / "harbor" / "files"


def _texts() -> dict[str, str]:
    site = make_site()
    return render.render_texts(site, harbor_values=site.harbor, rel=site.release)


def _check(tool: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FILES / tool), *args, str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("unit", ["harbor.service", "harborctl-agent.service",
                                  "harborctl-agent.timer"])
def test_unit_check_passes_our_units_and_refuses_a_broken_one(tmp_path: Path,
                                                               unit: str) -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze is not installed (see .ci/provision)")
    candidate = tmp_path / "candidate"
    text = _texts()[f"systemd/{unit}"]
    candidate.write_text(text)
    assert _check("unit-check", candidate, unit).returncode == 0
    candidate.write_text(text.replace("[Unit]", "[Unit]\nRequiresMountsFor=relative/path"))
    bad = _check("unit-check", candidate, unit)
    assert bad.returncode == 1 and "relative/path" in bad.stderr, bad


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda t: t.replace("*/5 * * * * root", "*/5 * * * root"), "bad time field root"),
    (lambda t: t.replace("*/5 * * * * root", "*/5 * root"), "bad time field root"),
    (lambda t: t.rstrip("\n"), "does not end in a newline"),
    (lambda t: t + "@reboot root\n", "needs a user and a command"),
])
def test_cron_check_passes_our_file_and_refuses_broken_ones(tmp_path: Path, spoil, message
                                                            ) -> None:  # type: ignore[no-untyped-def]
    candidate = tmp_path / "harborctl"
    text = _texts()["cron/harborctl"]
    candidate.write_text(text)
    assert _check("cron-check", candidate).returncode == 0
    candidate.write_text(spoil(text))
    bad = _check("cron-check", candidate)
    assert bad.returncode == 1 and message in bad.stderr, bad.stderr
