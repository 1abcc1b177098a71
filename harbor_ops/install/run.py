"""`harborctl install`: preflight, render, then the harbor role on every host of the inventory.

Why this order: every check that can refuse the install (a corrupt bundle, a version that
is not the site file's, a key that does not match, an occupied port, an unreachable host)
runs BEFORE any host is touched; the rendered files (harbor.yml holds secrets) exist only
in a private staging folder for the length of the playbook run, and are deleted whatever
happens. Ansible does the rest idempotently: a second run changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
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
from harbor_ops.core.fsutil import atomic_write
from harbor_ops.core.hashing import sha256_file
from harbor_ops.core.lock import job_lock
from harbor_ops.core.paths import log_dir
from harbor_ops.core.workdir import private_workdir
from harbor_ops.hosts import health
from harbor_ops.hosts import playbook as runner
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.site.model import Site

if TYPE_CHECKING:
    from harbor_ops.preflight.run import PreflightReport

PLAYBOOK = "install.yml"
# The gate: its own failure says "Harbor is not healthy after ..." (harbor_host_state's
# fail_unhealthy); any other failure of that task (the stamp not written) is not that.
HEALTH_TASK = "Wait until Harbor reports every component healthy"
HEALTH_FAILURE = "Harbor is not healthy after "
HOST_LOCK_TASK = "Fail because another harborctl job runs on this host"
STAGING_KIND = "install"  # the staging folder: harborctl-install-XXXX in the temp dir
VERDICT_FILE = "preflight-verdict.json"


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
    from harbor_ops.render.engine import COMPOSE_PROJECT

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
        # The project install.sh, the boot cron line and the upgrade window run Harbor
        # under: the one harborctl's rendered unit names (``-p``), never the role's default.
        "harbor_compose_project": COMPOSE_PROJECT,
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

    The preflight's host probes and ansible-playbook's start-up run at the same time; the
    role touches no host before the preflight's verdict (:class:`PreflightGate`), and a
    refusal raises PreflightFailed with nothing changed, as before.
    With ``schedule_root`` (the CLI: ``/``) and SSH hosts in the site, the agent's
    schedule is installed on this controller, which backs every host up over SSH.
    """
    from harbor_ops.preflight.run import validate_skip

    bundle = Path(bundle).resolve()
    if not bundle.is_file():
        raise UsageError(f"--bundle: {bundle} is not a file")
    started = time.monotonic()
    skipped = validate_skip(skip_checks)
    progress("preflight: checking hosts and bundle before touching anything")
    # The controller's read of the bundle first (cached by file identity): the playbook
    # needs its digest to start, the preflight judges it.
    info = None if "bundle" in skipped else bundle_mod.inspect_bundle_cached(bundle)
    new_log_dir = not log_dir.exists()
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = log_dir / f"install-{stamp}.log"
    output_path = log_dir / f"install-{stamp}.out"
    for path in (log_path, output_path):
        path.touch(mode=0o600, exist_ok=True)
    gate = PreflightGate(site, bundle=bundle, skip=sorted(skipped), inventory=inventory,
                         ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
                         bundle_info=info)
    try:
        # One job at a time on this host: a nightly backup never dumps a database that
        # install.sh is taking down (check mode changes nothing, so it needs no lock).
        with nullcontext() if check else job_lock(job="install"):
            digest = info.sha256 if info is not None and info.sha256 else sha256_file(bundle)
            outcome, schedule = _render_and_run(
                site, bundle=bundle, digest=digest, inventory=inventory, check=check,
                forks=forks, ssh_config=ssh_config, accept_new_host_keys=accept_new_host_keys,
                gate=gate, log_path=log_path, output_path=output_path,
                progress=progress, timeout=timeout,
                schedule_root=None if check else schedule_root)
    except BaseException:
        if gate.refused:  # no host was touched: no log of a run that did not happen
            for path in (log_path, output_path):
                path.unlink(missing_ok=True)
            if new_log_dir:
                with contextlib.suppress(OSError):
                    log_dir.rmdir()
        raise
    _raise_for(outcome, log_path, output_path)
    return InstallResult(version=str(site.release.version), bundle=bundle, check=check,
                         elapsed=time.monotonic() - started, hosts=outcome.hosts,
                         log_path=log_path, controller_schedule=schedule)


class PreflightGate:
    """The preflight, run in a thread beside ansible-playbook, and its verdict file.

    Why: the playbook's start-up (about 0.5 s of imports and parsing per run, more on a busy
    controller) no longer waits for the probes. The role's first task
    (harbor_preflight_wait) waits for the verdict on the controller before it reads or
    changes a host; the verdict is written whole (a rename) in the private staging folder:
    ``{"go": true, "compose": {host: command}}`` when every check passed, ``{"go": false}``
    on a refusal or an error of the preflight itself.
    """

    def __init__(self, site: Site, **kw: Any) -> None:
        self.site, self.kw = site, kw
        self.report: PreflightReport | None = None
        self.error: BaseException | None = None
        self.decided = threading.Event()  # set once the verdict file is written
        self._thread: threading.Thread | None = None

    def start(self, verdict: Path) -> None:
        self._thread = threading.Thread(target=self._run, args=(verdict,), daemon=True,
                                        name="preflight")
        self._thread.start()

    def _run(self, verdict: Path) -> None:
        from harbor_ops.preflight.run import run_preflight

        go, compose = False, {}
        try:
            self.report = run_preflight(self.site, **self.kw)
            go, compose = not failed_checks(self.report), self.report.compose
        except BaseException as exc:  # re-raised by finish(), in the caller's thread
            self.error = exc
        finally:
            try:
                write_private_json(verdict, {"go": go, "compose": compose})
            except OSError as exc:  # the role's wait then fails: no verdict, no go
                self.error = self.error or exc
            self.decided.set()

    @property
    def passed(self) -> bool:
        """The verdict is written and says go."""
        return (self.decided.is_set() and self.error is None and self.report is not None
                and not failed_checks(self.report))

    @property
    def refused(self) -> bool:
        """The verdict is written and says no (a failed check or an error of the preflight)."""
        return self.decided.is_set() and not self.passed

    def join(self) -> None:
        """Wait for the preflight to end (bounded by its probes' own timeouts)."""
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> PreflightReport:
        """The report once the preflight ended; its error, or PreflightFailed on a refusal."""
        self.join()
        if self.error is not None:
            raise self.error
        assert self.report is not None
        failed = failed_checks(self.report)
        if failed:
            raise PreflightFailed("nothing was changed; failed check(s):\n"
                                  + "\n".join(f"  - {f}" for f in failed),
                                  hint="fix them, or skip one with --skip-check NAME")
        return self.report


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as JSON at ``path``, 0600, appearing whole (the project's atomic writer):
    the role's wait reads the file as soon as it exists."""
    atomic_write(path, json.dumps(data), mode=0o600)


def _render_and_run(site: Site, *, bundle: Path, digest: str, inventory: Path | None,
                    check: bool, forks: int | None, ssh_config: Path | None,
                    gate: PreflightGate,
                    accept_new_host_keys: bool, log_path: Path,
                    output_path: Path, progress: Callable[[str], None], timeout: float,
                    schedule_root: Path | None) -> tuple[runner.PlaybookOutcome, list[str]]:
    """Render into a private staging folder, run the playbook beside the preflight, delete
    the staging folder."""
    from harbor_ops.install.schedule import install_controller_schedule, needs_controller_schedule
    from harbor_ops.render.engine import render_site

    with private_workdir(STAGING_KIND) as work:  # 0700: harbor.yml has secrets
        staging = work.path
        try:
            gate.start(staging / VERDICT_FILE)
            try:
                progress(f"render: harbor.yml and host files for Harbor {site.release.version}")
                render_site(site, output_dir=staging / "files")
                argv, env = runner.build_command(
                    playbook=runner.playbook_path(PLAYBOOK), work_dir=staging / "run",
                    log_path=log_path, hosts=site.hosts, inventory=inventory, forks=forks,
                    check=check, ssh_config=ssh_config,
                    accept_new_host_keys=accept_new_host_keys,
                    extra_vars={**role_vars(site, bundle=bundle, bundle_sha256=digest,
                                            staging=staging / "files"),
                                # The Compose commands come with the verdict.
                                "harbor_preflight_verdict": str(staging / VERDICT_FILE),
                                # install() holds the job lock here, the lock of a local host.
                                "harbor_job_lock_held_locally": not check})
            except Exception:
                gate.finish()  # a refusal first: it names the cause (a missing certificate...)
                raise
            run = runner.run_playbook(argv, env, output_path=output_path, cwd=staging / "run",
                                      timeout=timeout, hold_fds=(work.lock_fd,))
            _relay(run, gate, progress)
            gate.finish()  # a refusal (the playbook stopped at the wait) raises here
            schedule: list[str] = []
            if (run.outcome.ok and schedule_root is not None
                    and needs_controller_schedule(site)):
                schedule = install_controller_schedule(staging / "files", schedule_root)
                progress("controller: agent schedule for the SSH hosts in "
                         f"{', '.join(schedule)}")
            return run.outcome, schedule
        finally:
            gate.join()  # its verdict goes into the staging folder: removed only after


def _relay(lines: Iterable[str], gate: PreflightGate, progress: Callable[[str], None]) -> None:
    """The playbook's progress lines, once the verdict says go: until then they are held
    (its start, the argument check), and a refusal drops them, so a refused install shows
    what it showed when the preflight ran before the playbook."""
    held: list[str] = []
    holding = True
    for line in lines:
        if not holding:
            progress(line)
            continue
        held.append(line)
        if gate.passed:
            for one in ["preflight: passed", *held]:
                progress(one)
            holding = False
    gate.join()
    if holding and gate.passed:  # the playbook ended before the verdict (it failed to start)
        for one in ["preflight: passed", *held]:
            progress(one)


def _raise_for(outcome: runner.PlaybookOutcome, log_path: Path, output_path: Path) -> None:
    if outcome.ok:
        return
    where = f"full Ansible log: {log_path}"
    if outcome.failures:
        lines = "\n".join(f"  - {f}" for f in outcome.failures)
        if any(f.task == HEALTH_TASK and f.msg.startswith(HEALTH_FAILURE)
               for f in outcome.failures):
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
