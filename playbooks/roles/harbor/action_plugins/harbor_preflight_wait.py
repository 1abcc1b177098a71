"""Wait, on the controller, for the verdict of harborctl's preflight before a host is touched.

Why: ``harborctl install`` starts ansible-playbook while its preflight still probes the hosts,
so the playbook's own start-up (about half a second of Python imports and parsing) overlaps
the probes instead of following them. This task is the role's first after the argument check:
nothing reads or changes a host before harborctl writes the verdict, a JSON file in its private
staging folder (``{"go": true, "compose": {host: command}}``, renamed into place whole). Any
other verdict, or none within ``timeout`` s, fails the host. No module runs on the host.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

POLL = 0.01  # s between two looks for the verdict file


class ActionModule(ActionBase):  # type: ignore[misc]  # Ansible ships no type hints
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("verdict", "timeout"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        path = str(self._task.args.get("verdict") or "")
        try:
            if not path:
                raise AnsibleError("harbor_preflight_wait: verdict is required")
            timeout = float(self._task.args.get("timeout", 900))
            verdict = wait_for_verdict(path, timeout)
        except (AnsibleError, ValueError) as exc:
            result.update(failed=True, msg=str(exc))
            return result
        if verdict.get("go") is not True:
            result.update(failed=True, msg="harborctl's preflight refused the install; "
                          "nothing was changed on this host")
            return result
        compose = verdict.get("compose")
        result.update(changed=False, compose=compose if isinstance(compose, dict) else {})
        return result


def wait_for_verdict(path: str, timeout: float) -> dict[str, Any]:
    """The verdict file's JSON object once it exists; bounded in time and in looks."""
    began = time.monotonic()
    for _ in range(int(timeout / POLL) + 1):
        try:
            with open(path, encoding="utf-8") as fh:
                verdict = json.load(fh)
        except FileNotFoundError:
            if time.monotonic() - began >= timeout:
                break
            time.sleep(POLL)
            continue
        except (OSError, ValueError) as exc:
            raise AnsibleError(f"harbor_preflight_wait: cannot read the verdict: {exc}") from exc
        if not isinstance(verdict, dict):
            raise AnsibleError("harbor_preflight_wait: the verdict is not a JSON object")
        return verdict
    raise AnsibleError(f"harbor_preflight_wait: no preflight verdict after {timeout:.0f} s")
