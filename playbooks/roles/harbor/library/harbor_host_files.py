#!/usr/bin/python
"""Install the role's folders, small host files, the release symlink, Harbor's uid account and
stopped services in ONE round trip, each file replaced atomically.

Why a module: the copy, file, group, user and service modules cost a stat, a transfer and
a module run each, so a fresh host's folders, half dozen host files (logrotate, the
validators, the Nginx front, the boot and agent schedule), account and two service starts
cost about twenty SSH round trips, and on a fleet every one of them is a barrier the hosts
wait at. This does them all at once, in the given order (folders before their files, the
validators before the files they check): each file that differs is written to a temporary
file beside it, owned and moded, checked with its validator, and only then renamed over the
installed one; an unchanged file is not touched. The contents travel in the module's
arguments: the role passes its secret files (harbor.yml, TLS keys) in a call of their own
with ``no_log``. With ``--diff`` each change is reported as Ansible's ``diff``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shlex
import stat
import tempfile
from typing import Any

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.module_utils.harbor_host_common import (
        HostModule,
        swap_link,
    )
except ImportError:  # the role from playbooks/ (the role's module_utils/)
    from ansible.module_utils.harbor_host_common import HostModule, swap_link

DOCUMENTATION = r"""
module: harbor_host_files
short_description: Install folders, small host files, an account and services in one round trip
description:
  - Creates the account first (when given and missing), then each folder or file whose type,
    content, mode or owner differs (a file through a validated temporary file in the same
    folder that replaces the installed one), then starts the given services.
  - Secrets belong in a call of their own with C(no_log) (the contents are module arguments).
options:
  files:
    description:
      - The folders and files, in order. Each has C(path), C(mode) (octal string), optionally
        C(owner), C(group) (default root) and either C(state=directory) (a folder; missing
        parents are created 0755) or C(content) and optionally C(validate) (a command with
        C(%s) for the candidate's path); or C(path), C(state=link) and C(target) (a symlink,
        replaced atomically; never over anything that is not a symlink).
    type: list
    elements: dict
    default: []
  account:
    description:
      - C(name), C(uid) and C(shell) of a system account and its group (gid = uid), created
        where no group has that gid or no user has that uid.
    type: dict
  start:
    description: Services to start (C(systemctl start) under systemd, else C(service NAME start)).
    type: list
    elements: str
    default: []
author: harborctl
"""

RETURN = r"""
written:
  description: The paths that were (in check mode, would be) written or created.
  type: list
  returned: always
account:
  description: What was (would be) created of the account, C(group) and/or C(user).
  type: list
  returned: always
started:
  description: The services that were (would be) started.
  type: list
  returned: always
"""

DIFF_LIMIT = 64 * 1024  # bytes of text shown per file; a bigger one is named, not shown


def content_bytes(item: dict[str, Any]) -> bytes:
    """A file entry's content as the bytes written (undecodable bytes kept as they came)."""
    return str(item["content"]).encode("utf-8", "surrogateescape")


def text_of(data: bytes) -> str:
    """Bytes shown in a diff."""
    return data.decode("utf-8", "replace")


def link_up_to_date(item: dict[str, Any]) -> bool:
    try:
        return bool(os.readlink(item["path"]) == item["target"])
    except OSError:  # missing, or not a symlink
        return False


def link_diff(item: dict[str, Any]) -> dict[str, str]:
    path = item["path"]
    before = (f"-> {os.readlink(path)}\n" if os.path.islink(path)
              else "exists, not a symlink\n" if os.path.lexists(path) else "absent\n")
    return {"before_header": path, "after_header": path, "before": before,
            "after": f"-> {item['target']}\n"}


def ids_of(item: dict[str, Any]) -> tuple[int, int]:
    return (pwd.getpwnam(item.get("owner", "root")).pw_uid,
            grp.getgrnam(item.get("group", "root")).gr_gid)


def attributes(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}\n"


def current(item: dict[str, Any]) -> tuple[os.stat_result | None, bytes | None]:
    """The installed path's lstat and (for a regular file) content; None where missing."""
    try:
        st = os.lstat(item["path"])
    except OSError:
        return None, None
    if item.get("state") == "directory" or not stat.S_ISREG(st.st_mode):
        return st, None
    try:
        with open(item["path"], "rb") as fh:
            return st, fh.read()
    except OSError:
        return st, None


def up_to_date(item: dict[str, Any], ids: tuple[int, int], st: os.stat_result | None,
               data: bytes | None) -> bool:
    """The installed path has this type, content, mode and owner already."""
    if st is None:
        return False
    directory = item.get("state") == "directory"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return False
    if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (int(item["mode"], 8), *ids):
        return False
    return directory or data == content_bytes(item)


def diff_of(item: dict[str, Any], ids: tuple[int, int], st: os.stat_result | None,
            data: bytes | None) -> dict[str, str]:
    """Ansible's diff for one path: the content where it changed, else the attributes."""
    path = item["path"]
    wanted_attrs = f"mode {int(item['mode'], 8):04o}, owner {ids[0]}:{ids[1]}\n"
    if item.get("state") == "directory":
        before = "absent\n" if st is None else (
            attributes(st) if stat.S_ISDIR(st.st_mode) else "not a folder\n")
        return {"before_header": path, "after_header": path,
                "before": before, "after": "folder, " + wanted_attrs}
    after = content_bytes(item)
    if data == after and st is not None:
        return {"before_header": path, "after_header": path,
                "before": attributes(st), "after": wanted_attrs}
    if len(after) > DIFF_LIMIT or (data is not None and len(data) > DIFF_LIMIT):
        return {"before_header": path, "after_header": path,
                "before": "(content not shown: too big)\n", "after": "(new content)\n"}
    return {"before_header": path, "after_header": path,
            "before": text_of(data or b""),
            "after": text_of(after)}


def make_folder(item: dict[str, Any], ids: tuple[int, int]) -> None:
    path = item["path"]
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OSError("exists and is not a folder")
    os.makedirs(path, mode=0o755, exist_ok=True)
    os.chown(path, *ids)
    os.chmod(path, int(item["mode"], 8))


def write(module: HostModule, item: dict[str, Any], ids: tuple[int, int]) -> None:
    """Temporary file beside the target, validated, then renamed over it."""
    path = item["path"]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".harborctl-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content_bytes(item))
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


def ensure_account(module: HostModule, account: dict[str, Any] | None) -> list[str]:
    """The system group (gid = uid) and user, where the host has none with that id."""
    if not account:
        return []
    uid, name = int(account["uid"]), str(account["name"])
    steps: list[tuple[str, list[str]]] = []
    try:
        grp.getgrgid(uid)
    except KeyError:
        steps.append(("group", ["groupadd", "--system", "--gid", str(uid), name]))
    try:
        pwd.getpwuid(uid)
    except KeyError:
        steps.append(("user", ["useradd", "--system", "--uid", str(uid), "--gid", str(uid),
                               "--no-create-home", "--shell", str(account["shell"]), name]))
    for _, argv in steps if not module.check_mode else []:
        rc, out, err = module.run_command(argv)
        if rc != 0:
            module.fail_json(
                msg=f"{argv[0]} {name} failed (rc {rc}): {(err or out).strip()[-400:]}")
    return [what for what, _ in steps]


# Where cron records that its @reboot jobs have run since boot (/run is emptied at boot):
# Debian's cron, cronie.
CRON_BOOT_MARKERS = ("/run/crond.reboot", "/run/cron.reboot")


def mark_boot_jobs_run() -> None:
    """Starting cron here is not a boot: its @reboot jobs must not run now.

    A cron that starts for the first time since boot runs every @reboot line, the role's
    own among them (`compose up -d` in the active release), while the Harbor install.sh just
    started is still coming up, outside the host's job lock. Compose then meets containers
    whose harbor-core is migrating the schema; a recreated core dies mid-migration and leaves
    schema_migrations dirty. Marking the boot's jobs as run keeps them for the next boot.
    """
    for marker in CRON_BOOT_MARKERS:
        if not os.path.isdir(os.path.dirname(marker)):
            continue
        with contextlib.suppress(FileExistsError):  # this boot's jobs have run already
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o644))


def start(module: HostModule, names: list[str]) -> list[str]:
    systemd = os.path.isdir("/run/systemd/system")
    for name in names if not module.check_mode else []:
        if name == "cron" and not systemd:
            mark_boot_jobs_run()
        argv = ["systemctl", "start", name] if systemd else ["service", name, "start"]
        rc, out, err = module.run_command(argv)
        if rc != 0:
            module.fail_json(msg=f"starting {name} failed (rc {rc}): {(err or out).strip()[-400:]}")
    return list(names)


def apply(module: HostModule, item: dict[str, Any], diffs: list[dict[str, str]]) -> bool:
    """Put one symlink, folder or file in place where it differs; whether it did (would)."""
    if item.get("state") == "link":
        if link_up_to_date(item):
            return False
        diffs.extend([link_diff(item)] if module._diff else [])
        if not module.check_mode:
            swap_link(item["target"], item["path"])
        return True
    ids = ids_of(item)
    st, data = current(item)
    if up_to_date(item, ids, st, data):
        return False
    diffs.extend([diff_of(item, ids, st, data)] if module._diff else [])
    if not module.check_mode:
        (make_folder(item, ids) if item.get("state") == "directory"
         else write(module, item, ids))
    return True


# Checked on the controller (harbor_host_run), as Ansible checks a module's arguments.
ARGUMENT_SPEC = {
    "files": {"type": "list", "elements": "dict", "default": []},
    "account": {"type": "dict"},
    "start": {"type": "list", "elements": "str", "default": []},
}


def main() -> None:
    module = HostModule()
    account = ensure_account(module, module.params["account"])
    written: list[str] = []
    diffs: list[dict[str, str]] = []
    for item in module.params["files"]:
        try:
            if apply(module, item, diffs):
                written.append(item["path"])
        except (OSError, KeyError) as exc:
            module.fail_json(msg=f"{item.get('path')}: {exc}", written=written)
    started = start(module, module.params["start"])
    module.exit_json(changed=bool(written or account or started), written=written,
                     account=account, started=started, diff=diffs)


if __name__ == "__main__":
    main()
