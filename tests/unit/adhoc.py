"""One of the harbor role's modules run by Ansible on this machine (connection local), as the
role runs it: through its action plugin (harbor_host_run), so the arguments are checked on
the controller and the module runs on the host's Python without Ansible's module runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harbor_ops.hosts.playbook import playbook_dir


def run_role_module(name: str, args: dict[str, Any], tmp_path: Path, check: bool = False,
                    diff: bool = False, interpreter: str = sys.executable,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
    """``ansible localhost -m name``: the host's result as the json callback reports it."""
    role = playbook_dir() / "roles/harbor"
    run_env = {**os.environ, "ANSIBLE_LIBRARY": str(role / "library"),
               "ANSIBLE_MODULE_UTILS": str(role / "module_utils"),
               "ANSIBLE_ACTION_PLUGINS": str(role / "action_plugins"),
               "ANSIBLE_LOAD_CALLBACK_PLUGINS": "true", "ANSIBLE_STDOUT_CALLBACK": "json",
               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
               "ANSIBLE_PIPELINING": "true", "ANSIBLE_NOCOLOR": "true", **(env or {})}
    argv = [str(Path(sys.executable).with_name("ansible")), "localhost", "-c", "local",
            "-e", f"ansible_python_interpreter={interpreter}",
            "-m", name, "-a", json.dumps(args)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    proc = subprocess.run(argv, capture_output=True, text=True, env=run_env, timeout=300,
                          check=False)
    out = json.loads(proc.stdout)
    result: dict[str, Any] = out["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result
