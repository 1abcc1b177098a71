#!/usr/bin/python
"""Verify the offline bundle against the controller's SHA-256, keep it, unpack it: one run.

Why a module (and the action plugin of the same name that sends the bundle first): the copy
module hashed the bundle on the controller for every host, asked the host for a stat (a
module run), sent the file, hashed it again on the host in a second module run, and the
unpack was a third: about 2 s of round trips and hashing per fresh host before Harbor's own
install.sh. Here the file arrives once (the connection's put_file, into Ansible's private
temporary folder), and this one run on the host hashes it, refuses it on a mismatch (a
corrupt or changed copy is deleted, nothing is unpacked), moves it to its place, unpacks it
and only then writes the marker: an interrupted copy or unpack leaves no marker and is done
again by the next run.
"""

from __future__ import annotations

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.module_utils.harbor_host_common import (
        sha256_of,
    )
except ImportError:  # the role from playbooks/ (the role's module_utils/)
    from ansible.module_utils.harbor_host_common import sha256_of

DOCUMENTATION = r"""
module: harbor_bundle
short_description: Verify, keep and unpack Harbor's offline bundle in one run on the host
description:
  - Sends I(src) from the controller to the host (the action plugin of the same name), checks
    its SHA-256 against I(sha256) before anything uses it, moves it to I(dest), unpacks it
    into I(release_dir) (the archive's top folder stripped) and writes I(marker).
  - Where I(host_sha256) already equals I(sha256) the bundle at I(dest) is unpacked without
    being sent again (it is still verified). Nothing is done when I(marker) exists.
options:
  src:
    description: The bundle on the controller (the action plugin sends it).
    type: path
    required: true
  dest:
    description: Where the bundle is kept on the host (its folder is created 0755).
    type: path
    required: true
  sha256:
    description: The bundle's SHA-256 as the controller computed it.
    type: str
    required: true
  host_sha256:
    description: The SHA-256 of the file at I(dest) on the host, as read before (empty if none).
    type: str
    default: ""
  release_dir:
    description: The versioned folder the bundle is unpacked into.
    type: path
    required: true
  marker:
    description: The file written once the bundle is completely unpacked.
    type: path
    required: true
author: harborctl
"""

RETURN = r"""
sent:
  description: The bundle was sent to the host (it was missing or different there).
  type: bool
  returned: always
sha256:
  description: The SHA-256 of the bundle the host verified.
  type: str
  returned: success
"""


def write_marker(path: str, text: str) -> None:
    """The marker through a temporary file and a rename: present means complete."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def verify(module: AnsibleModule, path: str, expected: str, sent: bool) -> None:
    """Fail unless ``path`` has the controller's digest; a sent copy that does not is deleted."""
    try:
        found = sha256_of(path)
    except OSError as exc:
        module.fail_json(msg=f"cannot read the bundle {path}: {exc}", sent=sent)
    if found != expected.lower():
        if sent:
            os.unlink(path)
        module.fail_json(msg=f"the bundle on the host has SHA-256 {found}, the controller's has "
                         f"{expected}: {'the copy was deleted' if sent else 'not unpacked'}; "
                         "nothing was unpacked", sent=sent)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "sha256": {"type": "str", "required": True},
            "host_sha256": {"type": "str", "default": ""},
            "release_dir": {"type": "path", "required": True},
            "marker": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    if os.path.exists(p["marker"]):
        module.exit_json(changed=False, sent=False, sha256=p["sha256"])
    # The action plugin put the bundle at src on the host when it sent one.
    sent = p["src"] != p["dest"]
    if module.check_mode:
        module.exit_json(changed=True, sent=sent)
    verify(module, p["src"], p["sha256"], sent)
    if sent:
        os.makedirs(os.path.dirname(p["dest"]), mode=0o755, exist_ok=True)
        module.atomic_move(p["src"], p["dest"])
    os.chown(p["dest"], 0, 0)
    os.chmod(p["dest"], 0o644)
    old_umask = os.umask(0o022)
    try:
        os.makedirs(p["release_dir"], mode=0o755, exist_ok=True)
        # argv, no shell: the paths are never shell text.
        proc = subprocess.run(["tar", "-xzf", p["dest"], "--strip-components=1", "-C",
                               p["release_dir"]], capture_output=True, text=True, check=False)
    finally:
        os.umask(old_umask)
    if proc.returncode != 0:
        module.fail_json(msg=f"tar could not unpack {p['dest']} (rc {proc.returncode}): "
                         f"{proc.stderr.strip()[-800:]}", sent=sent)
    write_marker(p["marker"], p["sha256"])
    module.exit_json(changed=True, sent=sent, sha256=p["sha256"])


if __name__ == "__main__":
    main()
