"""What the harbor role's host-side code shares: the modules' runtime (``HostModule``),
Harbor's health answer judged, the release symlink swapped, a file's SHA-256.

One file, two ways onto the host: the role's modules (harbor_host_state, harbor_host_files,
harbor_bundle, harbor_command) import it as module_utils, and their action plugin
(harbor_host_run) sends it with the module's source and arguments to the host's Python in
one payload; the role copies it beside the upgrade-window helper, which imports it from
its own folder (the window runs as a plain script). Standard library only, for the Python
Ansible runs on the host.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from typing import Any, NoReturn

# The call harbor_host_run's bootstrap sets before it runs a module: the module's arguments
# (validated and defaulted on the controller against its ARGUMENT_SPEC), check and diff mode.
CALL: dict[str, Any] = {}


class HostModule:
    """What the role's modules use of Ansible's AnsibleModule, without its runtime.

    Why: under Ansible's module runtime (AnsiballZ) every module run on the host first
    imports ansible.module_utils.basic from a zip of sources, compiled anew each time (88 ms
    of imports alone), on every host, six times per install. harbor_host_run sends the
    module's source instead, with this file and the arguments the controller already
    validated; the host runs it with nothing else.
    """

    def __init__(self, call: dict[str, Any] | None = None) -> None:
        call = CALL if call is None else call
        self.params: dict[str, Any] = dict(call.get("params") or {})
        self.check_mode = bool(call.get("check_mode"))
        self._diff = bool(call.get("diff"))

    def exit_json(self, **result: Any) -> NoReturn:
        self._answer(result, 0)

    def fail_json(self, msg: str, **result: Any) -> NoReturn:
        self._answer({**result, "failed": True, "msg": msg}, 1)

    _answered = False

    def _answer(self, result: dict[str, Any], code: int) -> NoReturn:
        # One JSON document on a line of its own, and only the first answer: a failure
        # answered from a worker thread is not followed by the main thread's.
        if not HostModule._answered:
            HostModule._answered = True
            sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
            sys.stdout.flush()
        raise SystemExit(code)

    @staticmethod
    def run_command(argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
        """argv run without a shell, stdin closed, in ``cwd``: (exit code, stdout, stderr).
        A program (or folder) that is not there: 127, as a shell reports it, and why."""
        try:
            proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, errors="surrogateescape", check=False)
        except OSError as exc:  # no such program, or no such folder
            return 127, "", str(exc)
        return proc.returncode, proc.stdout, proc.stderr

    @staticmethod
    def atomic_move(src: str, dest: str) -> None:
        """``src`` renamed to ``dest``; across file systems copied beside ``dest`` first,
        then renamed over it, so ``dest`` is never a partial file."""
        try:
            os.replace(src, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        tmp = f"{dest}.harborctl-{os.getpid()}"
        try:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        os.unlink(src)


def ask_health(url: str, validate_certs: bool,
               timeout: float = 5.0) -> tuple[dict[str, Any], str]:
    """One GET of Harbor's health endpoint: (its JSON document, '') or ({}, why not)."""
    context = None if validate_certs else ssl._create_unverified_context()  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
            answer = json.loads(resp.read(1 << 20).decode("utf-8", "replace"))
    except (OSError, ValueError) as exc:
        return {}, str(exc)
    if not isinstance(answer, dict):
        return {}, f"{str(answer)[:80]!r} is not Harbor's health document"
    return answer, ""


def health_problem(answer: dict[str, Any], components: list[str], why: str = "") -> str:
    """'' when Harbor says healthy and lists every wanted component, each healthy; else
    what is wrong (``why``: the reason there is no answer)."""
    if not answer:
        return "no answer" + (f": {why}" if why else "")
    listed = [c for c in answer.get("components") or [] if isinstance(c, dict)]
    unhealthy = [str(c.get("name")) for c in listed if c.get("status") != "healthy"]
    names = {c.get("name") for c in listed}
    missing = [n for n in components if n not in names]
    if answer.get("status") == "healthy" and not unhealthy and not missing:
        return ""
    return (f"status {answer.get('status')!s}; unhealthy: {', '.join(unhealthy) or 'none'}; "
            f"missing: {', '.join(missing) or 'none'}")


def swap_link(target: str, path: str) -> None:
    """Point the symlink ``path`` at ``target`` with one rename of a new link over it, so
    the path always names a release; anything there that is not a symlink is refused."""
    if os.path.lexists(path) and not os.path.islink(path):
        raise OSError(f"{path} exists and is not a symlink")
    tmp = f"{path}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def sha256_of(path: str) -> str:
    """A file's SHA-256, read in 1 MiB pieces (a bundle is gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
