#!/usr/bin/python
"""Run one command (an argv, no shell) in a folder on the host: what the role asks of
ansible.builtin.command for install.sh, without Ansible's module runtime.

Why a module: install.sh runs at every fresh install on every host, and through
ansible.builtin.command each run first imported ansible.module_utils.basic on the host
(AnsiballZ; about 0.2 CPU-s of host and controller per run, measured apart). Run by
harbor_host_run like the role's other modules, the host runs this file and nothing else.
Like ansible.builtin.command it never runs in check mode, reports changed, and returns the
exit code: Ansible fails the task on a non-zero one unless the task's failed_when says
otherwise (install.sh's 75: the job lock was held). A program or folder that is not there
is rc 127 with the reason on stderr, as a shell would report it.
"""

from __future__ import annotations

import time

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.module_utils.harbor_host_common import (
        HostModule,
    )
except ImportError:  # the role from playbooks/ (the role's module_utils/)
    from ansible.module_utils.harbor_host_common import HostModule

DOCUMENTATION = r"""
module: harbor_command
short_description: Run an argv in a folder on the host, without Ansible's module runtime
description:
  - Runs I(argv) (no shell) in I(chdir) with stdin closed and reports its exit code and
    output, as ansible.builtin.command does with C(argv) and C(chdir); a non-zero exit code
    fails the task unless its C(failed_when) says otherwise.
  - Skipped in check mode.
options:
  argv:
    description: The program and its arguments.
    type: list
    elements: str
    required: true
  chdir:
    description: The folder the command runs in.
    type: path
    required: true
author: harborctl
"""

RETURN = r"""
rc:
  description: The command's exit code.
  type: int
  returned: when run
stdout:
  description: What it printed on stdout.
  type: str
  returned: when run
stderr:
  description: What it printed on stderr.
  type: str
  returned: when run
cmd:
  description: The argv run.
  type: list
  returned: always
delta:
  description: How long it ran, in seconds.
  type: float
  returned: when run
"""

# Checked on the controller (harbor_host_run), as Ansible checks a module's arguments.
ARGUMENT_SPEC = {
    "argv": {"type": "list", "elements": "str", "required": True},
    "chdir": {"type": "path", "required": True},
}


def main() -> None:
    module = HostModule()
    argv, chdir = module.params["argv"], module.params["chdir"]
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, cmd=argv,
                         msg="not run in check mode (as ansible.builtin.command)")
    if not argv:
        module.fail_json(msg="argv is empty: name the program to run", cmd=argv)
    began = time.monotonic()
    rc, out, err = module.run_command(argv, cwd=chdir)
    module.exit_json(changed=True, cmd=argv, rc=rc, stdout=out, stderr=err,
                     delta=round(time.monotonic() - began, 3))


if __name__ == "__main__":
    main()
