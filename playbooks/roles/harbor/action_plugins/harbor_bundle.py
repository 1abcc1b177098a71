"""The controller half of harbor_bundle: send the bundle with the connection's put_file, then
run the module once on the host (it verifies the SHA-256, keeps and unpacks the bundle),
through harbor_host_run like the role's other host modules.

Why not ansible.builtin.copy: it hashes the source on the controller for every host and the
copy again on the host, in two module runs around the transfer; the controller's digest is
already known (harbor_bundle_sha256) and the host's check happens in the same run as the unpack.
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.action.harbor_host_run import (
        ActionModule as HostRun,
    )
except ImportError:  # the role from playbooks/ (the role's action_plugins/)
    from ansible.plugins.loader import action_loader

    HostRun = action_loader.get("harbor_host_run", class_only=True)


class ActionModule(HostRun):  # type: ignore[misc]  # Ansible ships no type hints
    TRANSFERS_FILES = False  # a temporary folder only when the bundle is sent
    _VALID_ARGS = frozenset(("src", "dest", "sha256", "host_sha256", "release_dir", "marker"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        # ActionBase's checks only: HostRun.run would run the module with the task's args.
        result: dict[str, Any] = ActionBase.run(self, tmp, task_vars)
        args = dict(self._task.args)
        try:
            for name in ("src", "dest", "sha256", "release_dir", "marker"):
                if not args.get(name):
                    raise AnsibleError(f"harbor_bundle: {name} is required")
            local = self._find_needle("files", args["src"])
            send = (args.get("host_sha256") or "") != args["sha256"]
            module_args = {**args, "src": args["dest"]}
            if send and not self._task.check_mode:
                tmpdir = self._make_tmp_path()
                remote = self._connection._shell.join_path(tmpdir, "bundle")
                self._transfer_file(local, remote)
                self._fixup_perms2((tmpdir, remote))
                module_args["src"] = remote
            result.update(self.run_on_host("harbor_bundle", module_args, task_vars or {}))
            result["sent"] = send  # in check mode: would be sent
        except AnsibleError as exc:
            result.update(failed=True, msg=str(exc))
        finally:
            if self._connection._shell.tmpdir:
                self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
