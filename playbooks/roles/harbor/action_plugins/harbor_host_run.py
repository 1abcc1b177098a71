"""The controller half of the role's host modules (harbor_host_state, harbor_host_files,
harbor_bundle, harbor_command): their arguments are validated here, against the module's
own ARGUMENT_SPEC, and the host's Python runs the module's source with nothing of Ansible's
module runtime.

Why: a module run through Ansible's runtime (AnsiballZ) starts by importing
ansible.module_utils.basic from a zip of sources, compiled anew on every run (88 ms of
imports alone, `python -X importtime`), and an install runs six modules on every host; one
`ansible localhost -m harbor_host_files` cost 0.715 CPU-s that way, 0.505 this way. These
modules use none of it: they get their arguments checked and defaulted here, by Ansible's
own validator, and send their answer as JSON (HostModule in harbor_host_common). The payload
(the module's source, the role's module_utils and the arguments) travels on the connection's
stdin, as Ansible's pipelining sends a module; with pipelining off it is written to the
task's temporary folder and removed after.

harbor_host_state.py, harbor_host_files.py and harbor_command.py beside this file are
symlinks to it: the module it runs is the one the task names. harbor_bundle's action
subclasses it.

What stays Ansible's: become, the interpreter (ansible_python_interpreter or its discovery,
recorded as a fact as for any module), the task's environment, check and diff mode, no_log
(of the task) and the parsing of the answer.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.executor.interpreter_discovery import (
    InterpreterDiscoveryRequiredError,
    discover_interpreter,
)
from ansible.executor.module_common import _get_shebang
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.json import Direction, get_module_encoder
from ansible.module_utils.errors import UnsupportedError
from ansible.plugins.action import ActionBase
from ansible.utils.collection_loader import resource_from_fqcr

# The module_utils every module of the role imports; the first is their runtime (HostModule).
RUNTIME = "harbor_host_common"
UTILS = (RUNTIME,)

# Run by the host's Python with -c: read the payload (stdin, or the file named), load the
# module_utils under the names the modules import them by, hand the call to the runtime
# and run the module as a script. Constant: nothing from the payload is shell text.
BOOTSTRAP = "\n".join([
    "import json, sys, types",
    "raw = open(sys.argv[1], 'rb').read() if len(sys.argv) > 1 else sys.stdin.buffer.read()",
    "call = json.loads(raw)",
    "for name, source in call['utils']:",
    "    unit = types.ModuleType('ansible.module_utils.' + name)",
    "    unit.__file__ = name + '.py'",
    "    sys.modules[unit.__name__] = unit",
    "    exec(compile(source, unit.__file__, 'exec'), unit.__dict__)",
    f"sys.modules['ansible.module_utils.{RUNTIME}'].CALL = call",
    "exec(compile(call['module'], call['name'] + '.py', 'exec'), {'__name__': '__main__'})",
])


def argument_spec(source: str, path: str) -> dict[str, Any]:
    """The module's ``ARGUMENT_SPEC = {...}``, a literal read without running the module."""
    for node in ast.parse(source, path).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "ARGUMENT_SPEC"
                for target in node.targets):
            spec: dict[str, Any] = ast.literal_eval(node.value)
            return spec
    raise AnsibleError(f"{path} has no ARGUMENT_SPEC")


def payload(name: str, source: str, utils: list[tuple[str, str]], params: dict[str, Any],
            check_mode: bool, diff: bool) -> bytes:
    """What the bootstrap reads: the module, its module_utils and its call."""
    encoder = get_module_encoder("legacy", Direction.CONTROLLER_TO_MODULE)
    return json.dumps({"name": name, "module": source, "utils": utils, "params": params,
                       "check_mode": check_mode, "diff": diff}, cls=encoder).encode()


class ActionModule(ActionBase):  # type: ignore[misc]  # Ansible ships no type hints
    TRANSFERS_FILES = False  # a temporary folder only where pipelining is off

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        try:
            result.update(self.run_on_host(self._task.action, dict(self._task.args),
                                           task_vars or {}))
        except AnsibleError as exc:
            result.update(failed=True, msg=str(exc))
        return result

    def run_on_host(self, name: str, args: dict[str, Any],
                    task_vars: dict[str, Any]) -> dict[str, Any]:
        """Run the role's module ``name`` with ``args`` on the host: its result. A short
        name is looked up where the task's own action was (its collection, if named)."""
        collection, _, _ = self._task.action.rpartition(".")
        if "." not in name and collection:
            name = f"{collection}.{name}"
        found = self._shared_loader_obj.module_loader.find_plugin_with_context(
            name, collection_list=self._task.collections)
        if not found.resolved:
            raise AnsibleError(f"the module {name} was not found beside its action plugin")
        name = resource_from_fqcr(name)
        path = Path(found.plugin_resolved_path)
        source = path.read_text(encoding="utf-8")
        checked = ArgumentSpecValidator(argument_spec(source, str(path))).validate(args)
        if checked.error_messages:
            unsupported = isinstance(checked.errors.errors[0], UnsupportedError)
            raise AnsibleActionFail(("Unsupported parameters for " if unsupported else "")
                                    + f"({name}) module: {'; '.join(checked.error_messages)}")
        # The role's library/ and module_utils/ are siblings, as are a collection's
        # plugins/modules/ and plugins/module_utils/.
        utils = [(util, (path.parent.parent / "module_utils" / f"{util}.py")
                  .read_text(encoding="utf-8")) for util in UTILS]
        data = payload(name, source, utils, checked.validated_parameters,
                       bool(self._task.check_mode), bool(self._task.diff))
        command = f"{self._interpreter(task_vars)} -c {self._connection._shell.quote(BOOTSTRAP)}"
        env = self._compute_environment_string()
        command = f"{env} {command}" if env else command
        if self._connection.is_pipelining_enabled():
            answer = self._low_level_execute_command(command, sudoable=True, in_data=data)
        else:
            tmpdir = self._connection._shell.tmpdir  # harbor_bundle's, if it made one
            own = not tmpdir
            tmpdir = self._make_tmp_path() if own else tmpdir
            try:
                remote = self._connection._shell.join_path(tmpdir, "payload.json")
                self._transfer_data(remote, data)
                self._fixup_perms2((tmpdir, remote), execute=False)
                answer = self._low_level_execute_command(
                    f"{command} {self._connection._shell.quote(remote)}", sudoable=True)
            finally:
                if own:
                    self._remove_tmp_path(tmpdir)
        result: dict[str, Any] = self._parse_returned_data(answer, "legacy")
        if self._discovered_interpreter_key:
            result.setdefault("ansible_facts", {})[self._discovered_interpreter_key] = \
                self._discovered_interpreter
        return result

    def _interpreter(self, task_vars: dict[str, Any]) -> str:
        """The Python Ansible would run a module with: ansible_python_interpreter, or the
        discovered one (discovered once, then recorded as a fact like any module's)."""
        remote_is_local = bool(getattr(self._connection, "_remote_is_local", False))
        try:
            _, interpreter = _get_shebang("/usr/bin/python", task_vars, self._templar,
                                          remote_is_local=remote_is_local)
        except InterpreterDiscoveryRequiredError as need:
            found = discover_interpreter(action=self, interpreter_name=need.interpreter_name,
                                         discovery_mode=need.discovery_mode,
                                         task_vars=task_vars)
            self._discovered_interpreter = found
            self._discovered_interpreter_key = f"discovered_interpreter_{need.interpreter_name}"
            task_vars.setdefault("ansible_facts", {})[self._discovered_interpreter_key] = found
            interpreter = found
        self._used_interpreter = interpreter
        return str(self._connection._shell.quote(str(interpreter)))
