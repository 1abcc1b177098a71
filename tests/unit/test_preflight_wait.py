"""The playbook starts beside harborctl's preflight (install.run.PreflightGate): the role's
first task, harbor_preflight_wait, must hold every later task until the verdict says go, and
stop the host when it says no. A real ansible-playbook on localhost, with the role's plugin."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harbor_ops.hosts import playbook as runner
from harbor_ops.install.run import write_private_json
from harbor_ops.site.model import HostEntry

ROLE = runner.playbook_dir() / "roles" / "harbor"
HANG_GUARD = 600  # a bound for a hung run, not for speed

BOOK = textwrap.dedent("""\
    - name: Wait, then touch a file
      hosts: all
      gather_facts: false
      tasks:
        - name: Wait for harborctl's preflight
          harbor_preflight_wait:
            verdict: "{{ verdict }}"
            timeout: 60
          register: harbor_preflight
        - name: Touch the marker
          ansible.builtin.copy:
            dest: "{{ marker }}"
            content: "{{ harbor_preflight.compose[inventory_hostname] }}\\n"
            mode: "0600"
    """)


def _run(tmp_path: Path, verdict: dict[str, object] | None, delay: float,
         timeout: int = 60) -> tuple[str, Path]:
    book = tmp_path / "book.yml"
    book.write_text(BOOK.replace("timeout: 60", f"timeout: {timeout}"))
    path, marker = tmp_path / "verdict.json", tmp_path / "marker"
    argv, env = runner.build_command(
        playbook=book, work_dir=tmp_path / "run", log_path=tmp_path / "ansible.log",
        extra_vars={"verdict": str(path), "marker": str(marker)},
        hosts=(HostEntry(name="localhost", connection="local"),))
    env["ANSIBLE_ACTION_PLUGINS"] = str(ROLE / "action_plugins")

    def decide() -> None:
        time.sleep(delay)  # the preflight still runs while the playbook starts
        if verdict is not None:
            write_private_json(path, verdict)

    writer = threading.Thread(target=decide)
    writer.start()
    run = runner.run_playbook(argv, env, output_path=tmp_path / "out.log", timeout=HANG_GUARD)
    text = "\n".join(run)
    writer.join()
    return text, marker


def test_the_host_waits_for_go_and_takes_the_compose_command(tmp_path: Path) -> None:
    text, marker = _run(tmp_path, {"go": True, "compose": {"localhost": "docker compose"}}, 2.0)
    assert "Wait for harborctl's preflight ... ok" in text, text
    assert marker.read_text() == "docker compose\n"


@pytest.mark.parametrize("verdict", [{"go": False, "compose": {}}, {"compose": {}}, None])
def test_no_go_stops_the_host_before_anything_else(tmp_path: Path,
                                                    verdict: dict[str, object] | None) -> None:
    # None: never decided; the wait's own bound (shortened here) ends it
    text, marker = _run(tmp_path, verdict, 0.5, timeout=60 if verdict is not None else 1)
    assert "Wait for harborctl's preflight ... failed" in text, text
    assert "Touch the marker" not in text
    assert not marker.exists()


def test_the_verdict_appears_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "verdict.json"
    verdict = {"go": True, "compose": {"h1": "/usr/bin/docker-compose"}}
    write_private_json(path, verdict)
    assert json.loads(path.read_text()) == verdict
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["verdict.json"]
