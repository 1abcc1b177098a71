"""`harborctl install`: preflight, render, then the harbor role on every host of the inventory.

Why this order: every check that can refuse the install (a corrupt bundle, a version that
is not the site file's, a key that does not match, an occupied port, an unreachable host)
runs BEFORE any host is touched; the rendered files (harbor.yml holds secrets) exist only
in a private staging folder for the length of the playbook run, and are deleted whatever
happens. Ansible does the rest idempotently: a second run changes nothing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harbor_ops.core.errors import (
    HealthError,
    LockHeld,
    PreflightFailed,
    RemoteError,
    UsageError,
)
from harbor_ops.core.hashing import sha256_file
from harbor_ops.core.lock import job_lock
from harbor_ops.core.paths import log_dir
from harbor_ops.hosts import health
from harbor_ops.hosts import playbook as runner
from harbor_ops.site.model import Site

if TYPE_CHECKING:
    from harbor_ops.preflight.run import PreflightReport

PLAYBOOK = "install.yml"
HEALTH_TASK = "Fail naming the components that are not healthy"
HOST_LOCK_TASK = "Fail because another harborctl job runs on this host"
STAGING_PREFIX = "harborctl-install-"


@dataclass
class InstallResult:
    """What the playbook did, per host; ``check`` runs changed nothing."""

    version: str
    bundle: Path
    check: bool
    elapsed: float
    hosts: dict[str, runner.HostTally] = field(default_factory=dict)
    log_path: Path | None = None
    controller_schedule: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(t.changed for t in self.hosts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "bundle": str(self.bundle), "check": self.check,
                "changed": self.changed, "elapsed": round(self.elapsed, 1),
                "hosts": {h: t.to_dict() for h, t in self.hosts.items()},
                "log": str(self.log_path) if self.log_path else None,
                "controller_schedule": self.controller_schedule}

    def __str__(self) -> str:
        verb = "would change" if self.check else "changed"
        lines = [f"Harbor {self.version} {'checked' if self.check else 'installed'} on "
                 f"{len(self.hosts)} host(s) in {self.elapsed:.1f} s"]
        for host, t in self.hosts.items():
            lines.append(f"  {host}: ok={t.ok} {verb}={t.changed} failed={t.failed} "
                         f"skipped={t.skipped}")
        if self.controller_schedule:
            lines.append("agent schedule on this controller (backs up every SSH host; none "
                         f"on the hosts): {', '.join(self.controller_schedule)}")
        if self.log_path:
            lines.append(f"full Ansible log: {self.log_path}")
        return "\n".join(lines)


def default_log_dir() -> Path:
    """Where full Ansible logs go (see :func:`harbor_ops.core.paths.log_dir`)."""
    return log_dir()


def role_vars(site: Site, *, bundle: Path, bundle_sha256: str, staging: Path,
              compose: dict[str, str] | None = None) -> dict[str, Any]:
    """The harbor role's variables for this site (see roles/harbor/meta/argument_specs.yml)."""
    rel = site.release
    trivy = site.install.with_trivy and "--with-trivy" in rel.install_flags
    harbor = site.harbor
    http_port = int((harbor.get("http") or {}).get("port", 80))
    tls: dict[str, dict[str, str]] = {}
    https = harbor.get("https") or {}
    for key, mode in (("certificate", "0644"), ("private_key", "0600")):
        if https.get(key):
            tls[str(https[key])] = {"src": str(https[key]), "dest": str(https[key]), "mode": mode}
    if site.front is not None and site.front.tls is not None:
        for path, mode in ((site.front.tls.certificate, "0644"),
                           (site.front.tls.private_key, "0600")):
            tls[str(path)] = {"src": str(path), "dest": str(path), "mode": mode}
    cache = site.front.cache if site.front is not None else None
    return {
        "harbor_version": str(rel.version),
        "harbor_bundle_src": str(bundle),
        "harbor_bundle_sha256": bundle_sha256,
        "harbor_staging_dir": str(staging),
        "harbor_install_root": str(site.install.dir),
        "harbor_bundle_dir": str(site.install.bundle_dir),
        "harbor_install_flags": ["--with-trivy"] if trivy else [],
        "harbor_http_port": http_port,
        "harbor_health_url": health.endpoint(harbor).loopback_url,
        "harbor_health_components": list(rel.health_components) + (["trivy"] if trivy else []),
        "harbor_front_enabled": site.front is not None,
        "harbor_nginx_cache_dir": str(cache.path) if cache is not None else "",
        "harbor_tls_files": list(tls.values()),
        # Per host, the Compose preflight found there: the boot unit and cron line use it.
        "harbor_compose_commands": dict(compose or {}),
    }


def failed_checks(report: PreflightReport) -> list[str]:
    """One line per failed check of a preflight report: host, check, reason, fix."""
    out = []
    for host, r in report.failures():
        out.append(f"{host}: {r.name}: {r.reason}" + (f" ({r.fix})" if r.fix else ""))
    return out


def install(site: Site, *, bundle: Path, inventory: Path | None = None, check: bool = False,
            skip_checks: Sequence[str] = (), progress: Callable[[str], None] = lambda _: None,
            log_dir: Path, forks: int | None = None, ssh_config: Path | None = None,
            accept_new_host_keys: bool = False, timeout: float = 3600,
            schedule_root: Path | None = None) -> InstallResult:
    """Install (or, with ``check``, dry-run) Harbor from ``bundle`` on the site's hosts.

    With ``schedule_root`` (the CLI: ``/``) and SSH hosts in the site, the agent's
    schedule is installed on this controller, which backs every host up over SSH.
    """
    from harbor_ops.preflight.run import run_preflight

    bundle = Path(bundle).resolve()
    if not bundle.is_file():
        raise UsageError(f"--bundle: {bundle} is not a file")
    started = time.monotonic()
    progress("preflight: checking hosts and bundle before touching anything")
    report = run_preflight(site, bundle=bundle, skip=list(skip_checks), inventory=inventory,
                           ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys)
    failed = failed_checks(report)
    if failed:
        raise PreflightFailed("nothing was changed; failed check(s):\n"
                              + "\n".join(f"  - {f}" for f in failed),
                              hint="fix them, or skip one with --skip-check NAME")
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = log_dir / f"install-{stamp}.log"
    output_path = log_dir / f"install-{stamp}.out"
    for path in (log_path, output_path):
        path.touch(mode=0o600, exist_ok=True)
    # One job at a time on this host: a nightly backup never dumps a database that
    # install.sh is taking down (check mode changes nothing, so it needs no lock).
    with nullcontext() if check else job_lock(job="install"):
        # The preflight already hashed the bundle (or found it in its cache): no second read.
        digest = (report.bundle.sha256 if report.bundle is not None and report.bundle.sha256
                  else sha256_file(bundle))
        outcome, schedule = _render_and_run(
            site, bundle=bundle, digest=digest, inventory=inventory, check=check, forks=forks,
            ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
            compose=report.compose, log_path=log_path, output_path=output_path,
            progress=progress, timeout=timeout,
            schedule_root=None if check else schedule_root)
    _raise_for(outcome, log_path, output_path)
    return InstallResult(version=str(site.release.version), bundle=bundle, check=check,
                         elapsed=time.monotonic() - started, hosts=outcome.hosts,
                         log_path=log_path, controller_schedule=schedule)


def _render_and_run(site: Site, *, bundle: Path, digest: str, inventory: Path | None,
                    check: bool, forks: int | None, ssh_config: Path | None,
                    compose: dict[str, str],
                    accept_new_host_keys: bool, log_path: Path,
                    output_path: Path, progress: Callable[[str], None], timeout: float,
                    schedule_root: Path | None) -> tuple[runner.PlaybookOutcome, list[str]]:
    """Render into a private staging folder, run the playbook, delete the staging folder."""
    from harbor_ops.install.schedule import install_controller_schedule, needs_controller_schedule
    from harbor_ops.render.engine import render_site

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX))  # 0700: harbor.yml has secrets
    try:
        progress(f"render: harbor.yml and host files for Harbor {site.release.version}")
        render_site(site, output_dir=staging / "files")
        argv, env = runner.build_command(
            playbook=runner.playbook_path(PLAYBOOK), work_dir=staging / "run",
            log_path=log_path, hosts=site.hosts, inventory=inventory, forks=forks,
            check=check, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
            extra_vars={**role_vars(site, bundle=bundle, bundle_sha256=digest,
                                    staging=staging / "files", compose=compose),
                        # install() holds the job lock here, the lock of a local host.
                        "harbor_job_lock_held_locally": not check})
        run = runner.run_playbook(argv, env, output_path=output_path, cwd=staging / "run",
                                  timeout=timeout)
        for line in run:
            progress(line)
        schedule: list[str] = []
        if run.outcome.ok and schedule_root is not None and needs_controller_schedule(site):
            schedule = install_controller_schedule(staging / "files", schedule_root)
            progress(f"controller: agent schedule for the SSH hosts in {', '.join(schedule)}")
        return run.outcome, schedule
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _raise_for(outcome: runner.PlaybookOutcome, log_path: Path, output_path: Path) -> None:
    if outcome.ok:
        return
    where = f"full Ansible log: {log_path}"
    if outcome.failures:
        lines = "\n".join(f"  - {f}" for f in outcome.failures)
        if any(f.task == HEALTH_TASK for f in outcome.failures):
            raise HealthError("Harbor did not become healthy:\n" + lines, hint=where)
        if any(f.task == HOST_LOCK_TASK for f in outcome.failures):
            raise LockHeld("a harborctl job runs on a target host:\n" + lines, hint=where)
        unreachable = sorted({f.host for f in outcome.failures if f.status == "unreachable"})
        head = (f"unreachable host(s): {', '.join(unreachable)}" if unreachable
                else "the install failed")
        raise RemoteError(f"{head}:\n{lines}", hint=where)
    tail = output_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
    raise RemoteError(f"ansible-playbook exited with {outcome.returncode}:\n  "
                      + "\n  ".join(tail), hint=where)
