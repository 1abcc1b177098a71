"""What the harbor role's host-side code shares: Harbor's health answer judged, the
release symlink swapped, a file's SHA-256.

One file, two ways onto the host: the role's modules (harbor_host_state,
harbor_host_files, harbor_bundle) import it as module_utils, so Ansible ships it inside
each module's payload; the role copies it beside the upgrade-window helper, which imports
it from its own folder (the window runs as a plain script, outside Ansible's module
runtime, so no module_utils reach it). Standard library only, for the Python Ansible runs
on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import urllib.request
from typing import Any


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
