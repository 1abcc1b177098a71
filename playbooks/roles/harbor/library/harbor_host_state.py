#!/usr/bin/python
"""Read, in ONE round trip, everything the harbor role decides on.

Why a module: the role used to ask the host one question per task (fact gathering for the
service manager, a stat per file, a slurp, ``docker ps``, two ``getent``): a dozen SSH round
trips before anything happened. This reads the same state at once and changes nothing, so
it runs in check mode too. The bundle's SHA-256 (a read of the whole file) is computed only
while its release is not yet completely unpacked: afterwards the unpack marker already
records which bundle was unpacked, and the nightly converge does not re-read gigabytes.

It also proves a host unchanged: given every file the role installs (with the SHA-256 the
controller computed, mode and owner), the services that must run and the health URL, it
reports what differs (``drift``, ``services_off``) and Harbor's health answer. When nothing
differs the role skips all its other tasks: the nightly converge is this one round trip.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.module_utils.harbor_host_common import (
        HostModule,
        ask_health,
        health_problem,
        sha256_of,
    )
except ImportError:  # the role from playbooks/ (the role's module_utils/)
    from ansible.module_utils.harbor_host_common import (
        HostModule,
        ask_health,
        health_problem,
        sha256_of,
    )

DOCUMENTATION = r"""
module: harbor_host_state
short_description: Read the state the harbor role decides on, in one round trip
description:
  - Reports whether systemd is PID 1, the bundle's checksum (only while its release is not
    unpacked), whether the release is unpacked, the last install stamp, whether harbor-core
    runs, whether Harbor's uid has an account and group, where the active symlink points
    and which given paths exist.
  - Never changes the host, but for one file when asked: as the health gate, with
    I(stamp_content), it writes the install stamp once Harbor is healthy.
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
  files:
    description:
      - Files and folders the role installs, compared with the host's.
      - Each has C(path), C(mode), C(owner), C(group), C(state) (C(file) or C(directory)),
        for a file C(sha256) (of the wanted content), and optionally C(systemd) (wanted only
        where systemd is, or is not, PID 1) and C(needs) (wanted only where that path exists).
    type: list
    elements: dict
    default: []
  services:
    description:
      - Services that must run (C(running)) or be enabled at boot (C(enabled), systemd only),
        with the same optional C(systemd) and C(needs) as I(files).
    type: list
    elements: dict
    default: []
  health_url:
    description: Harbor's health endpoint, asked once (no retry); empty to skip.
    type: str
    default: ""
  health_validate_certs:
    description: Verify the TLS certificate of I(health_url).
    type: bool
    default: false
  health_components:
    description: The components Harbor must list as healthy (see C(health_problem)).
    type: list
    elements: str
    default: []
  health_wait:
    description:
      - Ask I(health_url) again every I(health_interval) s until Harbor is healthy, at most
        this many seconds; 0 asks once. Polling here, on the host, costs no SSH round trip
        per try (the gate after install.sh).
    type: float
    default: 0
  health_interval:
    description: The pause between two health requests while waiting.
    type: float
    default: 0.25
  stamp_content:
    description:
      - The health gate's last step, in the same run: once Harbor answered healthy, write
        this (and a newline) to I(install_stamp), atomically, 0644, where the stamp differs.
        Nothing is written when Harbor is not healthy, in check mode, or when empty.
    type: str
    default: ""
  fail_unhealthy:
    description:
      - As the gate: fail, naming what was wrong (C(health_problem)), when Harbor is not
        healthy after I(health_wait) s. The result carries every return value all the same.
    type: bool
    default: false
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
drift:
  description: The paths of I(files) wanted on this host whose type, content, mode or owner differ.
  type: list
  returned: always
services_off:
  description: The names of I(services) wanted on this host that do not run or are not enabled.
  type: list
  returned: always
health:
  description: The (last) answer of I(health_url) as JSON; empty when it gave none.
  type: dict
  returned: always
health_problem:
  description:
    - Empty when Harbor answered C(healthy) and listed each of I(health_components) as
      healthy; else what was wrong (no answer, the unhealthy and the missing components).
  type: str
  returned: always
health_seconds:
  description: How long the health requests took, the waiting included.
  type: float
  returned: always
stamp_written:
  description: I(stamp_content) was written to I(install_stamp) (C(changed) says the same).
  type: bool
  returned: always
"""


def read_stamp(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def write_stamp(path: str, content: str) -> None:
    """The stamp through a temporary file and a rename (0644, root): present means complete."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, (content.strip() + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


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


def core_running(module: HostModule) -> bool:
    """Like `docker ps`: an interrupted install or lost containers make install.sh run again."""
    rc, out, err = module.run_command(
        ["docker", "ps", "--quiet", "--filter", "name=^/?harbor-core$",
         "--filter", "status=running"])
    if rc != 0:
        module.fail_json(msg=f"docker ps failed (rc {rc}): {err.strip()[-400:]}")
    return bool(str(out).strip())


def bundle_digest(module: HostModule, bundle: str, unpacked: bool) -> str:
    """The bundle's SHA-256 while its release is not unpacked; '' when missing or unpacked."""
    digest = ""
    if not unpacked and os.path.isfile(bundle):
        try:
            digest = sha256_of(bundle)
        except OSError as exc:
            module.fail_json(msg=f"cannot read {bundle}: {exc}")
    return digest


def wanted(item: dict[str, Any], systemd: bool) -> bool:
    """Whether a file or service entry applies to this host (its service manager, a binary)."""
    if item.get("systemd") is not None and bool(item["systemd"]) != systemd:
        return False
    return not item.get("needs") or os.path.exists(item["needs"])


def differs(item: dict[str, Any]) -> bool:
    """The path is missing, of another type, or its content, mode or owner is not the wanted one."""
    path = item["path"]
    try:
        st = os.lstat(path)
        owner, group = pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        return True
    directory = item.get("state", "file") == "directory"
    of_type = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not of_type:
        return True
    if (stat.S_IMODE(st.st_mode), owner, group) != (
            int(str(item["mode"]), 8), item.get("owner", "root"), item.get("group", "root")):
        return True
    try:
        return not directory and sha256_of(path) != item.get("sha256")
    except OSError:
        return True


def service_off(module: HostModule, item: dict[str, Any], systemd: bool) -> bool:
    """A wanted service that does not run, or (systemd) is not enabled at boot."""
    name = item["name"]
    if systemd:
        asks = [["systemctl", "is-active", "--quiet", name]] if item.get("running") else []
        asks += [["systemctl", "is-enabled", "--quiet", name]] if item.get("enabled") else []
    else:
        asks = [["service", name, "status"]] if item.get("running") else []
    return any(module.run_command(argv)[0] != 0 for argv in asks)


def health(url: str, validate_certs: bool) -> dict[str, Any]:
    """One GET of the health endpoint; {} when it does not answer with JSON (no retry here)."""
    answer: dict[str, Any] = ask_health(url, validate_certs)[0] if url else {}
    return answer


def wait_healthy(url: str, validate_certs: bool, components: list[str], wait: float,
                 interval: float) -> tuple[dict[str, Any], str, float]:
    """Ask until healthy or ``wait`` s have passed (at least once; bounded in tries too):
    the last answer, what was wrong with it ('' when healthy) and the seconds spent."""
    began = time.monotonic()
    tries = 1 + int(wait / max(interval, 0.01))
    while True:
        answer = health(url, validate_certs)
        problem = health_problem(answer, components) if url else "not asked"
        tries -= 1
        if not problem or tries <= 0 or time.monotonic() - began >= wait:
            return answer, problem, round(time.monotonic() - began, 2)
        time.sleep(interval)


# Checked on the controller (harbor_host_run), as Ansible checks a module's arguments.
ARGUMENT_SPEC = {
    "bundle": {"type": "path", "required": True},
    "unpacked_marker": {"type": "path", "required": True},
    "install_stamp": {"type": "path", "required": True},
    "uid": {"type": "int", "required": True},
    "active_link": {"type": "path", "required": True},
    "paths": {"type": "list", "elements": "str", "default": []},
    "files": {"type": "list", "elements": "dict", "default": []},
    "services": {"type": "list", "elements": "dict", "default": []},
    "health_url": {"type": "str", "default": ""},
    "health_validate_certs": {"type": "bool", "default": False},
    "health_components": {"type": "list", "elements": "str", "default": []},
    "health_wait": {"type": "float", "default": 0.0},
    "health_interval": {"type": "float", "default": 0.25},
    "stamp_content": {"type": "str", "default": ""},
    "fail_unhealthy": {"type": "bool", "default": False},
}


def main() -> None:
    module = HostModule()
    p = module.params
    systemd = os.path.isdir("/run/systemd/system")
    unpacked = os.path.exists(p["unpacked_marker"])
    # The commands and the health request wait on other processes: asked at once, while
    # this thread hashes the bundle and the files.
    with ThreadPoolExecutor(max_workers=4) as pool:
        core = pool.submit(core_running, module)
        answer = pool.submit(wait_healthy, p["health_url"], p["health_validate_certs"],
                             p["health_components"], p["health_wait"], p["health_interval"])
        services = [(s["name"], pool.submit(service_off, module, s, systemd))
                    for s in p["services"] if wanted(s, systemd)]
        bundle_sha256 = bundle_digest(module, p["bundle"], unpacked)
        drift = [f["path"] for f in p["files"] if wanted(f, systemd) and differs(f)]
        last, problem, seconds = answer.result()
        stamp = read_stamp(p["install_stamp"])
        # The gate's last step: the stamp records the completed install only once Harbor
        # is healthy (a failed gate leaves the old stamp, and the next run installs again).
        wanted_stamp = p["stamp_content"].strip()
        written = bool(wanted_stamp) and not problem and not module.check_mode \
            and stamp != wanted_stamp
        if written:
            try:
                write_stamp(p["install_stamp"], wanted_stamp)
            except OSError as exc:
                module.fail_json(msg=f"cannot write the install stamp {p['install_stamp']}: "
                                 f"{exc}")
            stamp = wanted_stamp
        result = dict(
            changed=written,
            stamp_written=written,
            systemd=systemd,
            bundle_sha256=bundle_sha256,
            unpacked=unpacked,
            stamp=stamp,
            core_running=core.result(),
            uid_user=known(pwd.getpwuid, p["uid"]),
            uid_group=known(grp.getgrgid, p["uid"]),
            active_target=link_target(p["active_link"]),
            exists={path: os.path.exists(os.path.expanduser(path)) for path in p["paths"]},
            drift=drift,
            services_off=[name for name, off in services if off.result()],
            health=last,
            health_problem=problem,
            health_seconds=seconds,
        )
        if p["fail_unhealthy"] and problem:
            module.fail_json(msg=f"Harbor is not healthy after {p['health_wait']} s at "
                             f"{p['health_url']}: {problem}", **result)
        module.exit_json(**result)


if __name__ == "__main__":
    main()
