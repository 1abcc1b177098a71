"""A test host's files: an overlay root over the golden root, its Docker data, and snapshots.

Why an overlay: every host starts as the golden root (a cached debootstrap) and pays only for
what it writes; throwing the upper layer away is a reset. The overlay is mounted in the root
namespace, so the controller reads and asserts on the host's files at ``merged/``
(``Host.root_path``). The host's dockerd keeps ``/var/lib/docker`` in ``docker/``, a plain
directory bind-mounted into the host, because overlay2 cannot sit on overlayfs.

Why snapshots: fault tests need an *installed* host, and an install costs half a minute. A
snapshot copies the two layers that hold everything the host wrote (``upper/`` and
``docker/``) while the host is down; a restore brings them back (only what changed since is
copied: :func:`sync_tree`) and boots, in seconds.

Layout of ``<bed>/hosts/<name>/``: ``upper/``, ``work/``, ``merged/``, ``docker/``, ``log/``;
snapshots in ``<bed>/snapshots/<name>/<label>/{upper,docker}``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.bed._run import BedError, run, unmount_all_under
from tests.bed.inventory import write_file

LAYERS = ("upper", "docker")  # what a host writes; work/ is overlayfs scratch, merged/ a view


class HostFs:
    """The directories of one host under ``host_dir``."""

    def __init__(self, host_dir: Path) -> None:
        self.dir = host_dir
        self.merged = host_dir / "merged"
        self.docker = host_dir / "docker"
        self.log = host_dir / "log"

    def mount(self, golden: Path) -> None:
        """Create the directories and mount the overlay (golden below, the host's upper above)."""
        for sub in ("upper", "work", "merged", "docker", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        upper, work = self.dir / "upper", self.dir / "work"
        options = f"lowerdir={golden},upperdir={upper},workdir={work}"
        run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)])
        (self.merged / "var/lib/docker").mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        """Unmount everything below the host directory and delete it (the host must be down)."""
        unmount_all_under(str(self.dir))
        shutil.rmtree(self.dir, ignore_errors=True)

    def write_identity(
        self, *, name: str, hosts_lines: list[str], authorized_key: str, host_key: Path
    ) -> None:
        """Name, /etc/hosts, the bed's client key for root, and the bed's one host key."""
        root = self.merged
        write_file(root / "etc/hostname", name + "\n")
        lines = ["127.0.0.1 localhost", f"127.0.1.1 {name}", "::1 localhost", *hosts_lines]
        write_file(root / "etc/hosts", "\n".join(lines) + "\n")
        write_file(root / "root/.ssh/authorized_keys", authorized_key, 0o600)
        (root / "root/.ssh").chmod(0o700)
        write_file(root / "etc/ssh/ssh_host_ed25519_key", host_key.read_text(), 0o600)
        pub = Path(str(host_key) + ".pub").read_text()
        write_file(root / "etc/ssh/ssh_host_ed25519_key.pub", pub)

    def write_daemon_json(self, *, pool: str, cgroup_parent: str) -> None:
        """dockerd off iptables and docker0, compose networks from the host's own pool."""
        config = {
            "bridge": "none",
            "iptables": False,
            "ip-forward": False,
            "ip-masq": False,
            "storage-driver": "overlay2",
            "default-address-pools": [{"base": pool, "size": 24}],
            "cgroup-parent": cgroup_parent,
        }
        write_file(self.merged / "etc/docker/daemon.json", json.dumps(config, indent=2) + "\n")

    def save_layers(self, dest: Path) -> None:
        """Bring the copy at ``dest`` to the host's layers now; the host must be down.

        The copy is renamed to ``<label>.partial`` while it changes, so a crash mid-way never
        leaves a half snapshot under the label (a restore then says there is none).
        """
        tmp = dest.with_name(dest.name + ".partial")
        if dest.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            dest.rename(tmp)
        for layer in LAYERS:
            (tmp / layer).mkdir(parents=True, exist_ok=True)
            sync_tree(self.dir / layer, tmp / layer)
        tmp.rename(dest)

    def load_layers(self, src: Path, golden: Path) -> None:
        """Bring the host's layers back to the copies in ``src`` and mount the overlay again.

        The host must be down; everything it wrote since the snapshot is dropped.
        """
        if not all((src / layer).is_dir() for layer in LAYERS):
            raise BedError(f"no complete snapshot at {src}")
        unmount_all_under(str(self.dir))
        shutil.rmtree(self.dir / "work", ignore_errors=True)  # overlayfs scratch: start empty
        for layer in LAYERS:
            (self.dir / layer).mkdir(parents=True, exist_ok=True)
            sync_tree(src / layer, self.dir / layer)
        self.mount(golden)


def sync_tree(src: Path, dest: Path) -> None:
    """Make ``dest`` an exact copy of ``src``, copying only what differs.

    rsync, because a restore must cost what the host changed, not the size of its images
    (copying and deleting 300 MB of Docker layers took 10-15 s; the sync takes about one).
    It keeps owners, modes, hard links, device nodes and the xattrs that overlayfs whiteouts
    and opaque directories are made of. A file counts as unchanged when its size and mtime
    (nanoseconds) are: a test that rewrites a file must not set its mtime back.
    """
    run(
        ["rsync", "-aHAX", "--numeric-ids", "--delete", f"{src}/", f"{dest}/"],
        timeout=600,
    )
