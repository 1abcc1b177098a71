"""The golden root filesystem that every test host boots from (read-only overlay lower layer).

Why a cached, debootstrapped Debian: test hosts must have their own /etc, /var, package database
and process table so that playbooks can write real paths (/opt/harbor, /data, /etc/logrotate.d)
without touching the CI machine. Hosts have no route to the internet, so every package a test
host needs must be baked in here, in ``GOLDEN_PACKAGES``.

Built and cached by :mod:`tests.bed.debootstrap` in ``<cache>/golden-<key>/``.

API::

    golden_root() -> pathlib.Path     # build if missing, return the directory
"""

from __future__ import annotations

from pathlib import Path

from tests.bed.debootstrap import RootSpec, cache_dir, cached_root

__all__ = ["GOLDEN", "GOLDEN_PACKAGES", "SUITE", "cache_dir", "golden_key", "golden_root"]

SUITE = "bookworm"

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

# Bump when _customise below changes in a way the package list does not show.
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


def _customise(root: Path) -> None:
    """Adapt the rootfs to life as a test host (no systemd, no internet, own keys per bed)."""
    (root / "etc/resolv.conf").write_text("# test hosts have no DNS\n", encoding="utf-8")
    conf = root / "etc/ssh/sshd_config.d/harborctl-testbed.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(SSHD_CONFIG, encoding="utf-8")
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


GOLDEN = RootSpec(
    prefix="golden",
    suite=SUITE,
    packages=GOLDEN_PACKAGES,
    recipe=RECIPE_VERSION,
    marker=".harborctl-golden.json",
    lock="golden.lock",
    customise=_customise,
)


def golden_key() -> str:
    """A short hash that changes whenever what the golden rootfs contains would change."""
    return GOLDEN.key()


def golden_root() -> Path:
    """Return the golden rootfs directory, building it first if the cache does not have it."""
    return cached_root(GOLDEN)
