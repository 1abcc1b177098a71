"""`harborctl support-bundle`: one archive a maintainer can read, with no secret in it.

What goes in is what maintainers ask for first in Harbor's issue tracker: versions, the
configs as rendered (and as they are on the host), container state, the tail of each log,
health, disk use of the data volume, the agent's status and the last doctor result. Every
text passes through :class:`~harbor_ops.doctor.redact.Redactor`; private keys and the
secret key are never read into the archive at all. Collection is best effort: what cannot
be read is listed in ``errors.txt`` instead of failing the bundle.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harbor_ops.core.errors import ConfigError, UsageError
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.paths import state_dir
from harbor_ops.doctor.redact import Redactor, redact_mapping, secret_values
from harbor_ops.doctor.wire import Endpoint, Wire
from harbor_ops.site.model import Site

LOG_LINES = 200
MAX_FILE = 1 << 20
COMMAND_TIMEOUT = 30.0
HARBOR_CONTAINERS = ("harbor-core", "harbor-db", "harbor-jobservice", "harbor-log",
                     "harbor-portal", "nginx", "redis", "registry", "registryctl",
                     "trivy-adapter")
CONFIG_SUFFIXES = ("", ".env", ".yml", ".yaml", ".conf", ".json", ".cfg", ".ini")


@dataclass
class BundleResult:
    path: Path
    members: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "members": self.members, "errors": self.errors,
                "seconds": round(self.seconds, 3)}

    def __str__(self) -> str:
        lines = [f"support bundle {self.path} (mode 0600, {len(self.members)} files, "
                 f"{self.seconds:.1f} s)"]
        lines += [f"  not collected: {e}" for e in self.errors]
        return "\n".join(lines)


class _Collector:
    """Adds redacted members to an in-memory tar; records what could not be collected."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.files: dict[str, bytes] = {}
        self.errors: list[str] = []

    def text(self, name: str, text: str) -> None:
        self.files[name] = self.redactor.text(text).encode("utf-8")

    def attempt(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except (OSError, subprocess.SubprocessError, ValueError, UnicodeError) as exc:
            self.errors.append(f"{what}: {exc}")

    def file(self, name: str, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE)
        self.text(name, data.decode("utf-8", "replace"))

    def tar(self) -> bytes:
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in sorted(self.files.items()):
                info = tarfile.TarInfo(f"support/{name}")
                info.size, info.mtime, info.mode = len(data), int(now), 0o600
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def known_secrets(site: Site) -> Redactor:
    """Every secret value the site resolves to (what resolves), plus the files of keys."""
    from harbor_ops.site.load import resolve_secrets

    values: set[str] = set()
    # an unset variable is no secret of ours; the key rules still apply
    with contextlib.suppress(ConfigError):
        values |= secret_values(resolve_secrets(site))
    data = Path(str(site.harbor.get("data_volume", "/data")))
    for path in [data / "secret" / "keys" / "secretkey"] + _key_files(site):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        # the whole file, and each line of it (a key file may carry comments)
        values |= {text.strip()} | {ln.strip() for ln in text.splitlines()
                                    if ln.strip() and not ln.startswith("#")}
    return Redactor(values)


def _key_files(site: Site) -> list[Path]:
    files = [Path(str((site.harbor.get("https") or {}).get("private_key", "")))]
    if site.front is not None and site.front.tls is not None:
        files.append(site.front.tls.private_key)
    if site.backup.remote is not None and site.backup.remote.key_file is not None:
        files.append(site.backup.remote.key_file)
    if site.backup.encryption is not None and site.backup.encryption.identity_file is not None:
        files.append(site.backup.encryption.identity_file)
    files += [h.ssh_key_file for h in site.hosts if h.ssh_key_file is not None]
    return [f for f in files if str(f) not in ("", ".")]


def support_bundle(site: Site, *, output_file: Path | None = None,
                   log_lines: int = LOG_LINES) -> BundleResult:
    t0 = time.monotonic()
    if log_lines < 0:
        raise UsageError(f"--log-lines {log_lines}: must be 0 or more")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = output_file or Path(f"harbor-support-{platform.node() or 'host'}-{stamp}.tar.gz")
    c = _Collector(known_secrets(site))
    c.text("versions.json", json.dumps(_versions(site), indent=2))
    if site.path is not None:
        c.attempt("site file", lambda: c.file("site/harborctl.yml", site.path))  # type: ignore[arg-type]
    c.attempt("rendered configs", lambda: _rendered(c, site))
    c.attempt("installed configs", lambda: _installed(c, site))
    c.attempt("docker ps", lambda: c.text("docker/ps.txt", _run(
        ["docker", "ps", "-a", "--format", "{{.Names}}\t{{.Image}}\t{{.Status}}"])))
    c.attempt("container logs", lambda: _container_logs(c, log_lines))
    c.attempt("log files", lambda: _log_files(c, site, log_lines))
    c.attempt("health", lambda: _health(c, site))
    c.attempt("disk use", lambda: _disk(c, site))
    c.attempt("agent status", lambda: c.file("agent-status.json", site.agent.status_file))
    c.attempt("last doctor result", lambda: c.file("doctor-last.json",
                                                   state_dir() / "doctor-last.json"))
    c.text("errors.txt", "\n".join(c.errors) + "\n")
    atomic_write(path, c.tar(), mode=0o600)
    return BundleResult(path=path, members=sorted(c.files), errors=c.errors,
                        seconds=time.monotonic() - t0)


def _versions(site: Site) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("harborctl")
    except PackageNotFoundError:
        mine = "unknown"
    return {"harborctl": mine, "harbor": str(site.release.version), "python": sys.version,
            "platform": platform.platform(), "collected": dt.datetime.now(dt.UTC).isoformat()}


def _rendered(c: _Collector, site: Site) -> None:
    """The configs harborctl would write, rendered from the site with secrets redacted."""
    from harbor_ops.render.engine import render_texts

    texts = render_texts(site, harbor_values=redact_mapping(site.harbor), rel=site.release)
    for name, text in texts.items():
        c.text(f"rendered/{name}", text)


def _installed(c: _Collector, site: Site) -> None:
    """harbor.yml and Harbor's generated configs as they are on this host."""
    root = site.install.dir / "harbor"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist (Harbor is not installed here)")
    c.attempt("installed harbor.yml", lambda: c.file("installed/harbor.yml",
                                                     root / "harbor.yml"))
    config = root / "common" / "config"
    for path in sorted(config.rglob("*")) if config.is_dir() else []:
        if path.is_file() and not path.is_symlink() and path.suffix in CONFIG_SUFFIXES and \
                "key" not in path.name and path.stat().st_size <= MAX_FILE:
            rel = path.relative_to(config)
            c.attempt(f"config {rel}", functools.partial(c.file, f"installed/config/{rel}", path))


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(f"{argv[0]} is not installed")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          check=False, errors="replace")
    if proc.returncode != 0:
        raise subprocess.SubprocessError(f"{argv[0]} {argv[1]} exited {proc.returncode}: "
                                         f"{proc.stderr.strip()[:200]}")
    return proc.stdout + proc.stderr


def _container_logs(c: _Collector, lines: int) -> None:
    names = _run(["docker", "ps", "-a", "--format", "{{.Names}}"]).split()
    for name in names:
        if name in HARBOR_CONTAINERS:
            argv = ["docker", "logs", "--tail", str(lines), "--", name]
            c.attempt(f"docker logs {name}", _step(c, f"logs/docker/{name}.log",
                                                   functools.partial(_run, argv)))


def _log_files(c: _Collector, site: Site, lines: int) -> None:
    location = Path(str(((site.harbor.get("log") or {}).get("local") or {})
                        .get("location", "/var/log/harbor")))
    if not location.is_dir():
        raise FileNotFoundError(f"{location} does not exist")
    for path in sorted(location.glob("*.log")):
        c.attempt(f"log {path.name}", _step(c, f"logs/files/{path.name}",
                                            functools.partial(_tail, path, lines)))


def _step(c: _Collector, name: str, produce: Callable[[], str]) -> Callable[[], None]:
    return lambda: c.text(name, produce())


def _tail(path: Path, lines: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 256 * max(lines, 1)))
        data = fh.read().decode("utf-8", "replace").splitlines()
    return "\n".join(data[-lines:] if lines else []) + "\n"


def _health(c: _Collector, site: Site) -> None:
    from harbor_ops.doctor.run import site_url

    ep = Endpoint.parse(site_url(site))
    wire = Wire(ep, address=ep.host, timeout=5.0)
    try:
        resp = wire.request("GET", "/api/v2.0/health")
    finally:
        wire.close()
    c.text("health.json", resp.body.decode("utf-8", "replace"))


def _disk(c: _Collector, site: Site) -> None:
    data = Path(str(site.harbor.get("data_volume", "/data")))
    st = os.statvfs(data)
    lines = [f"{data}: {st.f_bavail * st.f_frsize} bytes free of {st.f_blocks * st.f_frsize}"]
    entries = sorted(str(p) for p in data.iterdir())
    if entries:
        lines.append(_run(["du", "-s", "--block-size=1", "--", *entries]))
    c.text("disk.txt", "\n".join(lines) + "\n")
