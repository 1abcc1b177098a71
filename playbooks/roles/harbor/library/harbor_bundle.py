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
import shutil
import subprocess

try:  # the role inside the collection harborctl.harbor
    from ansible_collections.harborctl.harbor.plugins.module_utils.harbor_host_common import (
        HostModule,
        sha256_of,
    )
except ImportError:  # the role from playbooks/ (the role's module_utils/)
    from ansible.module_utils.harbor_host_common import HostModule, sha256_of

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


def check_digest(module: HostModule, path: str, expected: str, found: str | None,
                 error: str, sent: bool) -> None:
    """Fail unless ``path`` had the controller's digest; a sent copy that had not is deleted."""
    if found is None:
        module.fail_json(msg=f"cannot read the bundle {path}: {error}", sent=sent)
    if found != expected.lower():
        if sent:
            os.unlink(path)
        module.fail_json(msg=f"the bundle on the host has SHA-256 {found}, the controller's has "
                         f"{expected}: {'the copy was deleted' if sent else 'not unpacked'}; "
                         "nothing was unpacked", sent=sent)


def digest_of(path: str) -> tuple[str | None, str]:
    try:
        return sha256_of(path), ""
    except OSError as exc:
        return None, str(exc)


def unpack_beside_hash(path: str, into: str) -> tuple[str | None, str, int, str]:
    """Unpack ``path`` into the new folder ``into`` WHILE this process hashes it (tar reads
    the file on its own): the digest, why it could not be read, tar's exit code and stderr.
    The caller renames ``into`` into place only when the digest is the controller's."""
    os.makedirs(into, mode=0o755)
    # argv, no shell: the paths are never shell text.
    proc = subprocess.Popen(["tar", "-xzf", path, "--strip-components=1", "-C", into],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found, error = digest_of(path)
    _, stderr = proc.communicate()
    return found, error, proc.returncode, stderr


# Checked on the controller (harbor_host_run), as Ansible checks a module's arguments.
ARGUMENT_SPEC = {
    "src": {"type": "path", "required": True},
    "dest": {"type": "path", "required": True},
    "sha256": {"type": "str", "required": True},
    "host_sha256": {"type": "str", "default": ""},
    "release_dir": {"type": "path", "required": True},
    "marker": {"type": "path", "required": True},
}


def main() -> None:
    module = HostModule()
    p = module.params
    if os.path.exists(p["marker"]):
        module.exit_json(changed=False, sent=False, sha256=p["sha256"])
    # The action plugin put the bundle at src on the host when it sent one.
    sent = p["src"] != p["dest"]
    if module.check_mode:
        module.exit_json(changed=True, sent=sent)
    release = p["release_dir"].rstrip("/")
    # A release folder that is not there yet is unpacked beside it while the bundle is
    # hashed (one pass of the CPU-bound gunzip and one of the hash at the same time, not one
    # after the other), then renamed into place only if the digest is the controller's: a
    # corrupt bundle still leaves nothing unpacked. A folder left by an interrupted unpack is
    # unpacked into after the check, as before.
    partial = None if os.path.exists(release) else f"{release}.partial"
    old_umask = os.umask(0o022)
    try:
        if partial is not None:
            if os.path.lexists(partial):  # an interrupted run's
                shutil.rmtree(partial)
            os.makedirs(os.path.dirname(release) or "/", mode=0o755, exist_ok=True)
            found, error, rc, stderr = unpack_beside_hash(p["src"], partial)
            if found != p["sha256"].lower():
                shutil.rmtree(partial)
            check_digest(module, p["src"], p["sha256"], found, error, sent)
        else:
            found, error = digest_of(p["src"])
            check_digest(module, p["src"], p["sha256"], found, error, sent)
        if sent:
            os.makedirs(os.path.dirname(p["dest"]), mode=0o755, exist_ok=True)
            module.atomic_move(p["src"], p["dest"])
        os.chown(p["dest"], 0, 0)
        os.chmod(p["dest"], 0o644)
        if partial is None:
            proc = subprocess.run(["tar", "-xzf", p["dest"], "--strip-components=1", "-C",
                                   release], capture_output=True, text=True, check=False)
            rc, stderr = proc.returncode, proc.stderr
    finally:
        os.umask(old_umask)
    if rc != 0:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        module.fail_json(msg=f"tar could not unpack {p['dest']} (rc {rc}): "
                         f"{stderr.strip()[-800:]}", sent=sent)
    if partial is not None:
        os.rename(partial, release)
    write_marker(p["marker"], p["sha256"])
    module.exit_json(changed=True, sent=sent, sha256=p["sha256"])


if __name__ == "__main__":
    main()
