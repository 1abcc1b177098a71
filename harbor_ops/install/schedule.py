"""The agent's schedule on the controller, for a site whose Harbor hosts are reached over SSH.

Why here and not on the hosts: the controller backs every host up over SSH
(:mod:`harbor_ops.backup.fleet`), so nothing of harborctl is needed on a Harbor host and
the role installs no schedule there. The files are the ones rendered for the site (the
systemd timer where systemd runs this machine, else the cron file), written atomically.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harbor_ops.core.errors import RemoteError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.site.model import Site

UNITS = ("harborctl-agent.service", "harborctl-agent.timer")


def needs_controller_schedule(site: Site) -> bool:
    return any(h.connection != "local" for h in site.hosts)


def install_controller_schedule(rendered: Path, root: Path = Path("/")) -> list[str]:
    """Write the agent's timer (systemd) or cron file under ``root``; the paths written."""
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        written = []
        for name in UNITS:
            dest = root / "etc/systemd/system" / name
            atomic_write(dest, (rendered / "systemd" / name).read_bytes(), mode=0o644)
            written.append(str(dest))
        for argv in (["systemctl", "daemon-reload"],
                     ["systemctl", "enable", "--now", "harborctl-agent.timer"]):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  check=False)
            if proc.returncode != 0:
                raise RemoteError(f"`{' '.join(argv)}` on the controller failed: "
                                  f"{proc.stderr.strip()[-300:]}")
        return written
    dest = root / "etc/cron.d/harborctl"
    atomic_write(dest, (rendered / "cron" / "harborctl").read_bytes(), mode=0o644)
    return [str(dest)]
