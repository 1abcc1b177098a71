#!/usr/bin/python
"""Install the role's small host files in ONE round trip, each replaced atomically.

Why a module: the copy module costs a stat, a transfer and a module run per file, so the
half dozen host files (logrotate, the validators, the Nginx front, the boot and agent
schedule) cost a dozen and a half SSH round trips on a fresh host. This writes them all at
once, in the given order (the validators first, then the files they check): each file that
differs is written to a temporary file beside it, owned and moded, checked with its
validator, and only then renamed over the installed one; an unchanged file is not touched.
The contents travel in the module's arguments, so secrets (harbor.yml, TLS keys) never go
through here: they keep their own no_log copies.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes

DOCUMENTATION = r"""
module: harbor_host_files
short_description: Install small host files in one round trip, each validated and atomic
description:
  - Writes each file whose content, mode or owner differs, through a temporary file in the
    same folder that is validated before it replaces the installed one.
  - The folders must exist. Not for secrets (the contents are module arguments).
options:
  files:
    description:
      - The files, in order. Each has C(path), C(content), C(mode) (octal string) and
        optionally C(owner), C(group) (default root) and C(validate) (a command with C(%s)
        for the candidate's path).
    type: list
    elements: dict
    required: true
author: harborctl
"""

RETURN = r"""
written:
  description: The paths that were (in check mode, would be) written.
  type: list
  returned: always
"""


def wanted_bytes(item: dict[str, Any]) -> bytes:
    data: bytes = to_bytes(item["content"], errors="surrogate_or_strict")
    return data


def up_to_date(item: dict[str, Any], ids: tuple[int, int]) -> bool:
    """The installed file has this content, mode and owner already."""
    try:
        st = os.lstat(item["path"])
        if not stat.S_ISREG(st.st_mode):
            return False
        if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (int(item["mode"], 8), *ids):
            return False
        with open(item["path"], "rb") as fh:
            return fh.read() == wanted_bytes(item)
    except OSError:
        return False


def write(module: AnsibleModule, item: dict[str, Any], ids: tuple[int, int]) -> None:
    """Temporary file beside the target, validated, then renamed over it."""
    path = item["path"]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".harborctl-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(wanted_bytes(item))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, int(item["mode"], 8))
        os.chown(tmp, *ids)
        if item.get("validate"):
            argv = [tmp if word == "%s" else word for word in shlex.split(item["validate"])]
            rc, out, err = module.run_command(argv)
            if rc != 0:
                module.fail_json(msg=f"{path}: failed to validate: {(err or out).strip()[-800:]}",
                                 path=path)
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> None:
    module = AnsibleModule(
        argument_spec={"files": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    written: list[str] = []
    for item in module.params["files"]:
        try:
            ids = (pwd.getpwnam(item.get("owner", "root")).pw_uid,
                   grp.getgrnam(item.get("group", "root")).gr_gid)
            if up_to_date(item, ids):
                continue
            if not module.check_mode:
                write(module, item, ids)
        except (OSError, KeyError) as exc:
            module.fail_json(msg=f"{item.get('path')}: {exc}", written=written)
        written.append(item["path"])
    module.exit_json(changed=bool(written), written=written)


if __name__ == "__main__":
    main()
