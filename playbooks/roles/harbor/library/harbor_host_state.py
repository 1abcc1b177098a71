#!/usr/bin/python
"""Read, in ONE round trip, everything the harbor role decides on.

Why a module: the role used to ask the host one question per task (fact gathering for the
service manager, a stat per file, a slurp, ``docker ps``, two ``getent``): a dozen SSH round
trips before anything happened. This reads the same state at once and changes nothing, so
it runs in check mode too. The bundle's SHA-256 (a read of the whole file) is computed only
while its release is not yet completely unpacked: afterwards the unpack marker already
records which bundle was unpacked, and the nightly converge does not re-read gigabytes.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from collections.abc import Callable

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: harbor_host_state
short_description: Read the state the harbor role decides on, in one round trip
description:
  - Reports whether systemd is PID 1, the bundle's checksum (only while its release is not
    unpacked), whether the release is unpacked, the last install stamp, whether harbor-core
    runs, whether Harbor's uid has an account and group, where the active symlink points
    and which given paths exist.
  - Never changes the host.
options:
  bundle:
    description: The bundle's path on the host.
    type: path
    required: true
  unpacked_marker:
    description: The file present once that bundle was completely unpacked.
    type: path
    required: true
  install_stamp:
    description: The stamp written after the last completed install.
    type: path
    required: true
  uid:
    description: The uid and gid Harbor's containers write as.
    type: int
    required: true
  active_link:
    description: The symlink naming the active release (its target is reported).
    type: path
    required: true
  paths:
    description: Further paths whose existence is reported under C(exists).
    type: list
    elements: str
    default: []
author: harborctl
"""

RETURN = r"""
systemd:
  description: systemd is the service manager (C(/run/systemd/system) exists).
  type: bool
  returned: always
bundle_sha256:
  description: SHA-256 of the bundle; empty when it is missing or its release is unpacked.
  type: str
  returned: always
unpacked:
  description: The unpack marker exists.
  type: bool
  returned: always
stamp:
  description: The last install stamp, stripped; empty when there is none.
  type: str
  returned: always
core_running:
  description: A running container named harbor-core exists.
  type: bool
  returned: always
uid_user:
  description: The uid has a passwd entry.
  type: bool
  returned: always
uid_group:
  description: The gid has a group entry.
  type: bool
  returned: always
active_target:
  description: The target of I(active_link) as written; empty when it is not a symlink.
  type: str
  returned: always
exists:
  description: For each of I(paths), whether it exists.
  type: dict
  returned: always
"""


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_stamp(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def known(lookup: Callable[[int], object], uid: int) -> bool:
    try:
        lookup(uid)
        return True
    except KeyError:
        return False


def link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # missing, or not a symlink
        return ""


def core_running(module: AnsibleModule) -> bool:
    """Like `docker ps`: an interrupted install or lost containers make install.sh run again."""
    rc, out, err = module.run_command(
        ["docker", "ps", "--quiet", "--filter", "name=^/?harbor-core$",
         "--filter", "status=running"])
    if rc != 0:
        module.fail_json(msg=f"docker ps failed (rc {rc}): {err.strip()[-400:]}")
    return bool(str(out).strip())


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "bundle": {"type": "path", "required": True},
            "unpacked_marker": {"type": "path", "required": True},
            "install_stamp": {"type": "path", "required": True},
            "uid": {"type": "int", "required": True},
            "active_link": {"type": "path", "required": True},
            "paths": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    unpacked = os.path.exists(p["unpacked_marker"])
    bundle_sha256 = ""
    if not unpacked and os.path.isfile(p["bundle"]):
        try:
            bundle_sha256 = sha256_of(p["bundle"])
        except OSError as exc:
            module.fail_json(msg=f"cannot read {p['bundle']}: {exc}")
    module.exit_json(
        changed=False,
        systemd=os.path.isdir("/run/systemd/system"),
        bundle_sha256=bundle_sha256,
        unpacked=unpacked,
        stamp=read_stamp(p["install_stamp"]),
        core_running=core_running(module),
        uid_user=known(pwd.getpwuid, p["uid"]),
        uid_group=known(grp.getgrgid, p["uid"]),
        active_target=link_target(p["active_link"]),
        exists={path: os.path.exists(os.path.expanduser(path)) for path in p["paths"]},
    )


if __name__ == "__main__":
    main()
