"""Cached debootstrapped Debian roots: the one builder behind every root the bed makes.

Two kinds of root come out of it: the golden root every test host boots from
(:mod:`tests.bed.golden`) and the suite roots the bundle builder takes the PostgreSQL majors
bookworm lacks from (:mod:`tests.bed.bundle.suites`). Both are ``debootstrap
--variant=minbase`` + ``apt-get install`` of a package list, then an optional customisation.

Each root lives in ``${HARBORCTL_TESTBED_CACHE:-/var/cache/harborctl-testbed}/<prefix>-<key>/``;
``<key>`` hashes the suite, mirror (:func:`mirror`), package list and recipe version, so
changing any of them builds a new root. A build goes to a temporary directory renamed into
place only when complete (its marker file written last), under a lock file, so concurrent
sessions build it once and a crashed build is harmless.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.bed._run import BedError, run, unmount_all_under

MIRROR_ENV = "HARBORCTL_TESTBED_MIRROR"
POLICY_RC_D = "#!/bin/sh\n# test bed: apt never starts services\nexit 101\n"


def cache_dir() -> Path:
    """Where roots are cached; overridable so CI can keep it on a persisted volume."""
    return Path(os.environ.get("HARBORCTL_TESTBED_CACHE", "/var/cache/harborctl-testbed"))


APT_SOURCES = Path("/etc/apt")


@functools.cache
def mirror() -> str:
    """The Debian mirror roots are debootstrapped from: ``$HARBORCTL_TESTBED_MIRROR``, else
    the one this machine's apt already uses for its own release (its sources.list and
    sources.list.d/, one-line and deb822 forms), so the bed reaches only what apt reaches.

    Read from the files, not ``apt-get indextargets`` (which takes a minute on a loaded
    machine). Written without a trailing slash: the same mirror gives the same cache key."""
    configured = os.environ.get(MIRROR_ENV)
    if configured:
        return configured.rstrip("/")
    release = _os_release().get("VERSION_CODENAME", "")
    for uri, suites in _apt_sources(APT_SOURCES):
        if release and release in suites:
            return uri.rstrip("/")
    raise BedError(f"no Debian source for this machine's release ({release or 'unknown'}) in "
                   f"{APT_SOURCES}/sources.list(.d); set {MIRROR_ENV} to a Debian mirror")


def _apt_sources(etc: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled ``deb`` source in ``etc``'s apt configuration."""
    found: list[tuple[str, list[str]]] = []
    lists = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        for line in _text(path).splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append((words[1], [words[2]]))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", _text(path)):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                found += [(uri, fields.get("Suites", "").split())
                          for uri in fields.get("URIs", "").split()]
    return found


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _os_release() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in _text(Path("/etc/os-release")).splitlines()
             if "=" in line)
    return {k: v.strip().strip('"') for k, v in pairs}


@dataclass(frozen=True)
class RootSpec:
    """What one cached root holds and how it is made.

    ``prefix`` names the cache directory (``<prefix>-<key>``) and its lock (``<lock>``);
    ``marker`` is the file written last, whose presence means the root is complete;
    ``apt_setup`` runs in the root before ``apt-get install``; ``customise`` adapts the
    root afterwards. Bump ``recipe`` when either changes, since the key cannot see code.
    """

    prefix: str
    suite: str
    packages: tuple[str, ...]
    recipe: str
    marker: str
    lock: str
    apt_setup: str = ""
    customise: Callable[[Path], None] | None = field(default=None, compare=False)

    def key(self) -> str:
        """A short hash that changes whenever what the root contains would change."""
        material = json.dumps(
            {
                "suite": self.suite,
                "mirror": mirror(),
                "packages": sorted(self.packages),
                "recipe": self.recipe,
            },
            sort_keys=True,
        )
        return hashlib.sha256(material.encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return f"{self.prefix}-{self.key()}"


def cached_root(spec: RootSpec, cache: Path | None = None) -> Path:
    """Return the root of ``spec`` in ``cache`` (default :func:`cache_dir`), building on a miss."""
    base = cache or cache_dir()
    final = base / spec.dirname
    if (final / spec.marker).is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    with open(base / spec.lock, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same key
        if not (final / spec.marker).is_file():
            _build(spec, final)
    return final


def _build(spec: RootSpec, final: Path) -> None:
    """debootstrap + apt into a temp dir, then rename it to ``final`` (atomic publish)."""
    if shutil.which("debootstrap") is None:
        raise BedError("debootstrap is not installed (apt-get install debootstrap)")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    _remove_tree(tmp)
    started = time.monotonic()
    try:
        run(["debootstrap", "--variant=minbase", spec.suite, str(tmp), mirror()], timeout=1200)
        _write(tmp / "usr/sbin/policy-rc.d", POLICY_RC_D, 0o755)
        shutil.copyfile("/etc/resolv.conf", tmp / "etc/resolv.conf")
        chroot_sh(
            tmp,
            "export DEBIAN_FRONTEND=noninteractive; set -e; "
            + spec.apt_setup
            + "apt-get update -qq; apt-get install -y -qq --no-install-recommends "
            + " ".join(spec.packages)
            + "; apt-get clean; rm -rf /var/lib/apt/lists/*",
        )
        if spec.customise is not None:
            spec.customise(tmp)
        record = {
            "key": spec.key(),
            "suite": spec.suite,
            "packages": list(spec.packages),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        _write(tmp / spec.marker, json.dumps(record) + "\n")
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise


def chroot_sh(root: Path, script: str) -> None:
    """Run ``script`` in the chroot inside a private mount namespace, so /proc cannot leak."""
    run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t proc proc "{root}/proc" && exec chroot "{root}" /bin/sh -c "$0"',
            script,
        ],
        timeout=1200,
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _remove_tree(path: Path) -> None:
    if path.exists():
        unmount_all_under(str(path))
        shutil.rmtree(path)
