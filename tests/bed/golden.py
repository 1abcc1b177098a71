"""The golden root filesystem that every test host boots from (read-only overlay lower layer).

Why a cached, debootstrapped Debian: test hosts must have their own /etc, /var, package database
and process table so that playbooks can write real paths (/opt/harbor, /data, /etc/logrotate.d)
without touching the CI machine. Hosts have no route to the internet, so every package a test
host needs must be baked in here, in ``GOLDEN_PACKAGES``.

The cache lives in ``${HARBORCTL_TESTBED_CACHE:-/var/cache/harborctl-testbed}/golden-<key>/``;
``<key>`` hashes the suite, mirror, package list and recipe version, so changing any of them
builds a new rootfs. A build goes to a temporary directory that is renamed into place only
when complete, under a lock file, so concurrent sessions and crashed builds are harmless.

API::

    golden_root() -> pathlib.Path     # build if missing, return the directory
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from tests.bed._run import BedError, run, unmount_all_under

SUITE = "bookworm"
MIRROR = os.environ.get("HARBORCTL_TESTBED_MIRROR", "http://deb.debian.org/debian")

# Everything a test host can ever use. Changing this list changes the cache key.
GOLDEN_PACKAGES: tuple[str, ...] = (
    "python3",
    "openssh-server",
    "sudo",
    "acl",
    "iproute2",
    "procps",
    "tini",
    "postgresql-15",
    "nginx-light",
    "logrotate",
    "zstd",
    "cron",
    "ca-certificates",
    "curl",
    "docker.io",
    "docker-compose",
)

# Bump when the post-install recipe below changes in a way the package list does not show.
RECIPE_VERSION = "4"

# sshd settings for test hosts: key-only root login, no PAM (no systemd/logind in hosts).
SSHD_CONFIG = """\
# harborctl test bed
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
AcceptEnv LANG LC_*
"""


def cache_dir() -> Path:
    """Where golden roots are cached; overridable so CI can keep it on a persisted volume."""
    return Path(os.environ.get("HARBORCTL_TESTBED_CACHE", "/var/cache/harborctl-testbed"))


def golden_key() -> str:
    """A short hash that changes whenever what the golden rootfs contains would change."""
    material = json.dumps(
        {
            "suite": SUITE,
            "mirror": MIRROR,
            "packages": sorted(GOLDEN_PACKAGES),
            "recipe": RECIPE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def golden_root() -> Path:
    """Return the golden rootfs directory, building it first if the cache does not have it."""
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"golden-{golden_key()}"
    if (final / ".harborctl-golden.json").is_file():
        return final
    with open(base / "golden.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same key
        if not (final / ".harborctl-golden.json").is_file():
            _build(final)
    return final


def _build(final: Path) -> None:
    """debootstrap + apt into a temp dir, then rename it to ``final`` (atomic publish)."""
    if shutil.which("debootstrap") is None:
        raise BedError("debootstrap is not installed (apt-get install debootstrap)")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    _remove_tree(tmp)
    started = time.monotonic()
    try:
        run(["debootstrap", "--variant=minbase", SUITE, str(tmp), MIRROR], timeout=1200)
        _write(
            tmp / "usr/sbin/policy-rc.d",
            "#!/bin/sh\n# test bed: apt never starts services\nexit 101\n",
            0o755,
        )
        shutil.copyfile("/etc/resolv.conf", tmp / "etc/resolv.conf")
        _chroot_sh(
            tmp,
            "export DEBIAN_FRONTEND=noninteractive; set -e; apt-get update -qq; "
            "apt-get install -y -qq --no-install-recommends "
            + " ".join(GOLDEN_PACKAGES)
            + "; apt-get clean; rm -rf /var/lib/apt/lists/*",
        )
        _customise(tmp)
        _write(
            tmp / ".harborctl-golden.json",
            json.dumps(
                {
                    "key": golden_key(),
                    "suite": SUITE,
                    "packages": list(GOLDEN_PACKAGES),
                    "build_seconds": round(time.monotonic() - started, 1),
                }
            )
            + "\n",
        )
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise


def _customise(root: Path) -> None:
    """Adapt the rootfs to life as a test host (no systemd, no internet, own keys per bed)."""
    _write(root / "etc/resolv.conf", "# test hosts have no DNS\n")
    _write(root / "etc/ssh/sshd_config.d/harborctl-testbed.conf", SSHD_CONFIG)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every bed generates its own throw-away host key
    # Debian's init script raises rlimits the CI machine forbids (no CAP_SYS_RESOURCE), and
    # `set -e` then aborts `service docker start`; keep the limits best-effort instead.
    init = root / "etc/init.d/docker"
    if init.is_file():
        text = init.read_text(encoding="utf-8")
        for stmt in ("ulimit -n 1048576", "ulimit -u unlimited", "ulimit -p unlimited"):
            text = text.replace(f"\t\t{stmt}\n", f"\t\t{stmt} 2>/dev/null || true\n")
            text = text.replace(f"\t\t\t{stmt}\n", f"\t\t\t{stmt} 2>/dev/null || true\n")
        init.write_text(text, encoding="utf-8")


def _chroot_sh(root: Path, script: str) -> None:
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
