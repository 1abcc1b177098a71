"""`harborctl upgrade apply` and `upgrade status`: every host to the site's target, hop by hop.

Order per host: read the host (installed release, data layout, schema, free space, the
upgrade journal), plan with the existing planner, refuse before anything changes; then,
per hop, a verified backup taken from the controller and one run of ``upgrade.yml`` whose
steps (:mod:`harbor_ops.upgrade.steps`) are recorded in the host's journal. The playbook
rolls a failed hop back by itself (block/rescue), so a hop ends on the new release or on
the old one with the old data, gated either way; this module reads the journal again to
say which, and maps it to the exit code (11 rolled back, 12 rollback failed). When the
host drops out mid-hop (Ansible then ends the play without its rescue), the run reconnects,
bounded (:mod:`harbor_ops.upgrade.reconnect`), and does what a re-run does. Hosts go
``parallel`` at a time (default one), each under its job lock on the controller and on the
host (:func:`harbor_ops.hosts.joblock.hold_host`); a failure stops the rollout, so every other host
stays on a healthy release.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from harbor_ops.core.errors import (
    HarborctlError,
    HostUnreachable,
    RemoteError,
    RollbackFailed,
    UpgradePathError,
    UpgradeRolledBack,
    UsageError,
)
from harbor_ops.core.workdir import private_workdir, sweep_stale
from harbor_ops.hosts import facts as host_facts
from harbor_ops.hosts import joblock
from harbor_ops.hosts import playbook as runner
from harbor_ops.releases import bundle as bundle_mod
from harbor_ops.releases import planner
from harbor_ops.releases import versions as hv
from harbor_ops.site.model import HostEntry, Site
from harbor_ops.upgrade import reconnect, rollout
from harbor_ops.upgrade import state as journal
from harbor_ops.upgrade import steps as st
from harbor_ops.upgrade.plan import HostPlan, check_target, plan_host

PLAYBOOK = "upgrade.yml"
JOURNAL_PATH = "/var/lib/harborctl/upgrade.journal"
# Held (flock) by the role's upgrade-window helper for its whole life; the role's
# harbor_upgrade_window_lock. Under /run: a reboot, which ends every helper, clears it.
WINDOW_LOCK = "/run/harborctl-upgrade-window.lock"
# How long a re-run waits for a helper that outlived its harborctl: the step in flight
# finishes first (a snapshot's copy of a large database takes minutes), then it stops.
WINDOW_WAIT_SECONDS = 900.0
Progress = Callable[[str], None]


@dataclass
class HostOutcome:
    """What happened on one host: its plan, each hop's recorded steps, where it ended."""

    plan: HostPlan
    # planned|refused|up_to_date|done|rolled_back|rollback_failed|unreachable (the host
    # stayed away mid-hop: no rollback ran, its release is unknown), and in a rollout that
    # stopped: failed (an error, nothing of its hop changed), stopped (ended its hop on a
    # healthy release, started no new one), not_started
    outcome: str = "planned"
    on_release: str | None = None
    hops: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    error: HarborctlError | None = field(default=None, repr=False)
    reconnects: list[dict[str, Any]] = field(default_factory=list)  # drops mid-hop

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.plan.host, "outcome": self.outcome, "on_release": self.on_release,
                "message": self.message, "plan": self.plan.to_dict(), "hops_run": self.hops,
                "reconnects": self.reconnects}


@dataclass
class ApplyResult:
    target: str
    dry_run: bool
    hosts: list[HostOutcome] = field(default_factory=list)
    error: HarborctlError | None = None
    learned: list[dict[str, Any]] = field(default_factory=list)  # releases read from bundles

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "dry_run": self.dry_run,
                "exit_code": self.error.exit_code if self.error else 0,
                "learned": self.learned, "hosts": [h.to_dict() for h in self.hosts]}


@dataclass(frozen=True)
class Options:
    bundle_dir: Path | None
    ssh_config: Path | None
    log_dir: Path
    backup_dir: Path
    journal: str = JOURNAL_PATH
    window_lock: str = WINDOW_LOCK
    window_wait: float = WINDOW_WAIT_SECONDS
    timeout: float = 3600
    accept_new_host_keys: bool = False
    health_retries: int = 60
    reconnect: reconnect.Bounds = reconnect.Bounds()


# --------------------------------------------------------------------------- reading hosts


def select_hosts(site: Site, name: str | None) -> list[HostEntry]:
    if name is None:
        return list(site.hosts)
    chosen = [h for h in site.hosts if h.name == name]
    if not chosen:
        raise UsageError(f"--host {name}: not in the site file's hosts "
                         f"({', '.join(h.name for h in site.hosts)})")
    return chosen


def read_host(site: Site, entry: HostEntry, opts: Options,
              progress: Progress = lambda _: None) -> dict[str, Any]:
    """The host's facts and upgrade journal, read once no window helper runs there.

    The probe first waits for the window lock: a helper that outlived a killed harborctl
    finishes its step in flight, and only then is its journal the truth to decide from.
    A wait of a second or more is reported, so a slow start has a visible reason."""
    got = host_facts.gather(entry, data_volume=_data_volume(site), hostname=site.hostname,
                            install_dir=str(site.install.dir), ssh_config=opts.ssh_config,
                            journal=opts.journal, window_lock=opts.window_lock,
                            window_wait=opts.window_wait,
                            accept_new_host_keys=opts.accept_new_host_keys)
    if not got.ok:
        raise RemoteError(got.error or f"{entry.name}: unreachable", hint=got.fix)
    window = got.data.get("window") or {}
    if window.get("held"):
        raise RemoteError(
            f"{entry.name}: the upgrade window helper of an earlier run still holds "
            f"{opts.window_lock} after {opts.window_wait:.0f} s "
            f"({_printable(window.get('holder')) or 'holder unknown'}); its journal is not read "
            "while it may still act", hint="it ends after the step in flight; see what that "
            "step's command waits for on the host (`ps -ef | grep upgrade-window`), then run "
            "the same harborctl command again: it continues or rolls back from the journal")
    waited = float(window.get("waited") or 0)
    if waited >= 1:
        progress(f"{entry.name}: waited {waited:.0f} s for the upgrade window helper of an "
                 "earlier run to end; reading its journal now")
    return got.data


def _printable(text: object) -> str:
    """Text from the host, shown in a message: printable characters only, bounded."""
    return "".join(c for c in str(text or "") if c.isprintable())[:200]


def _data_volume(site: Site) -> str:
    return str(site.harbor.get("data_volume", "/data"))


def inspect_bundles(bundle_dir: Path | None,
                    versions: set[Version]) -> dict[Version, bundle_mod.BundleInfo]:
    """Read through the bundle of every needed stop once (a truncated file is caught)."""
    if bundle_dir is None or not versions:
        return {}
    if not bundle_dir.is_dir():
        raise UsageError(f"--bundle-dir: {bundle_dir} is not a folder")
    named = planner.bundle_versions(sorted(p.name for p in bundle_dir.iterdir() if p.is_file()))
    return {v: bundle_mod.inspect_bundle(bundle_dir / named[v]) for v in versions if v in named}


def plan_hosts(site: Site, entries: list[HostEntry], opts: Options,
               progress: Progress = lambda _: None) -> list[HostPlan]:
    """Read every host (in parallel) and plan it; bundles are inspected once per stop."""
    from harbor_ops.site.load import resolve_secrets

    values = resolve_secrets(site)
    with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
        facts = list(pool.map(lambda e: read_host(site, e, opts, progress), entries))
    first = [plan_host(site, e.name, f, bundles={}, harbor_values=values)
             for e, f in zip(entries, facts, strict=True)]
    stops = {h.target.version for p in first for h in p.hops}
    bundles = inspect_bundles(opts.bundle_dir, stops)
    return [plan_host(site, e.name, f, bundles=bundles, harbor_values=values)
            for e, f in zip(entries, facts, strict=True)]


# --------------------------------------------------------------------------- apply


def apply(site: Site, *, to: str | None, host: str | None, opts: Options, dry_run: bool = False,
          parallel: int = 1, learned: list[dict[str, Any]] | None = None,
          progress: Progress = lambda _: None) -> ApplyResult:
    """Bring the chosen hosts to the site's harbor.version, ``parallel`` hosts at a time;
    refuse before any change. ``learned``: releases read from bundles, to report."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: must be 1 or more")
    check_target(site, to)
    entries = select_hosts(site, host)
    result = ApplyResult(target=str(site.release.version), dry_run=dry_run,
                         learned=list(learned or []))
    plans = plan_hosts(site, entries, opts, progress)
    result.hosts = [HostOutcome(p, on_release=p.installed) for p in plans]
    refused = [(o.plan.host, r) for o in result.hosts for r in o.plan.refusals]
    for o in result.hosts:
        if o.plan.refusals:
            o.outcome = "refused"
        elif not o.plan.hops and o.plan.decision.action == "fresh":
            o.outcome = "up_to_date"
    if refused:
        result.error = UpgradePathError(
            "nothing was changed; refused:\n" + "\n".join(f"  - {h}: {r}" for h, r in refused),
            hint="fix each item, then run upgrade apply again")
        return result
    if dry_run:
        return result
    # A killed run's staging folder (its rendered harbor.yml) goes even when no hop is left
    # to run here (a kill in ``finish``): private_workdir sweeps only when it makes one.
    sweep_stale()
    todo = [(e, o) for e, o in zip(entries, result.hosts, strict=True)
            if o.outcome != "up_to_date"]

    def one(item: tuple[HostEntry, HostOutcome], stopped: Callable[[], bool]) -> bool:
        entry, outcome = item
        try:
            with joblock.hold_host(entry, job=f"upgrade {entry.name}",
                                   ssh_config=opts.ssh_config,
                                   accept_new_host_keys=opts.accept_new_host_keys) as held:
                HostRun(site, entry, outcome, opts, progress, stopped, held).run()
        except HarborctlError as exc:
            outcome.outcome, outcome.message, outcome.error = "failed", exc.message, exc
            progress(f"{entry.name}: {exc.message}")
        return outcome.outcome in ("done", "stopped")

    for _, o in rollout.run_all(todo, parallel, one):
        o.outcome = "not_started"
        o.message = "the rollout stopped before this host: another host failed"
    result.error = rollout_error(result.hosts)
    return result


def rollout_error(hosts: list[HostOutcome]) -> HarborctlError | None:
    """The rollout's error, the gravest first: a failed rollback (12), a host that stayed
    unreachable mid-hop (15: Harbor may be down there), a rolled-back hop (11), then a
    host's own error (its code); None when every host ended well."""
    for kind in ("rollback_failed", "unreachable", "rolled_back"):
        bad = [o for o in hosts if o.outcome == kind]
        if bad:
            return _error_for(bad[0], also=[o.plan.host for o in bad[1:]])
    failed = [o for o in hosts if o.outcome == "failed" and o.error is not None]
    if failed:
        return failed[0].error
    refused = [o for o in hosts if o.outcome == "refused"]
    if refused:
        return UpgradePathError(f"{refused[0].plan.host}: {refused[0].message}",
                                hint="fix it, then run upgrade apply again")
    return None


def _error_for(o: HostOutcome, also: list[str] | None = None) -> HarborctlError:
    if also:
        o = dataclasses.replace(o, message=f"{o.message} (also on: {', '.join(also)})")
    if o.outcome == "rolled_back":
        return UpgradeRolledBack(o.message, hint="the host is healthy on "
                                 f"{o.on_release} with every row; fix the cause, then run "
                                 "upgrade apply again")
    if o.outcome == "unreachable":
        return HostUnreachable(o.message, hint="no rollback ran; once the host answers over "
                               "SSH, run `harborctl upgrade apply` again")
    return RollbackFailed(o.message, hint="a person is needed: see `harborctl upgrade status`")


class HostRun:
    """One host's hops, one playbook run each, judged from the journal afterwards."""

    def __init__(self, site: Site, entry: HostEntry, outcome: HostOutcome, opts: Options,
                 progress: Progress, stopped: Callable[[], bool] = lambda: False,
                 held: joblock.RemoteLock | None = None) -> None:
        self.site, self.entry, self.o, self.opts, self.say = site, entry, outcome, opts, progress
        self.stopped, self.held = stopped, held

    def run(self) -> None:
        """The host's hops; after a drop of the host mid-hop, what a re-run does, bounded."""
        plan: HostPlan | None = self.o.plan
        drops = 0
        while plan is not None:
            try:
                self._run(plan)
                return
            except reconnect.HostDropped as drop:
                drops += 1
                plan = self._recover(drop, drops)

    def _run(self, first: HostPlan) -> None:
        decision, state = first.decision, first.state
        if decision.action != "fresh":
            self.say(f"{self.entry.name}: {decision.reason}: {decision.action} "
                     f"({', '.join(decision.steps)})")
            src, tgt = hv.release(str(state.source)), hv.release(str(state.target))
            got = self._hop(state.hop, src, tgt, list(decision.steps), str(state.run))
            if decision.action == "rollback" and got == journal.ROLLED_BACK:
                if not decision.retry_after:  # it failed before: report the rollback
                    self._finish_rollback(state)
                    return
                self.say(f"{self.entry.name}: rolled back after the interruption; "
                         f"trying hop {tgt} again")
            elif got != journal.DONE:
                return
        run_id, number = f"{int(time.time() * 1000):x}", 0
        while True:
            plan = self._replan()
            if plan is None:
                return
            if not plan.hops:
                self.o.outcome, self.o.on_release, self.o.message = "done", plan.installed, ""
                return
            if self.stopped():  # another host failed: end here, on a gated release
                self.o.outcome = "stopped"
                self.o.message = (f"the rollout stopped (another host failed); "
                                  f"{self.entry.name} stays on Harbor {plan.installed}, healthy")
                return
            hop, number = plan.hops[0], number + 1
            backup = self._backup(hop)
            steps = [s.name for s in st.HOP_STEPS if s.name != "backup"]
            if self._hop(number, hop.source, hop.target, steps, run_id,
                         backup=backup) != journal.DONE:
                return

    def _replan(self) -> HostPlan | None:
        plans = plan_hosts(self.site, [self.entry], self.opts)
        plan = plans[0]
        if plan.refusals:
            self.o.outcome = "rolled_back" if self.o.hops else "refused"
            self.o.message = "; ".join(str(r) for r in plan.refusals)
            return None
        self.o.on_release = plan.installed
        return plan

    def _backup(self, hop: planner.Hop) -> dict[str, Any]:
        from harbor_ops.upgrade.backup_step import hop_backup

        t0, started = time.monotonic(), time.time()
        self.say(f"{self.entry.name}: hop {hop.source} -> {hop.target}: backup ...")
        path = hop_backup(self.site, self.entry, backup_dir=self.opts.backup_dir / self.entry.name,
                          installed=str(hop.source), ssh_config=self.opts.ssh_config,
                          accept_new_host_keys=self.opts.accept_new_host_keys,
                          progress=self.say)
        self.say(f"{self.entry.name}: hop {hop.source} -> {hop.target}: backup done "
                 f"({time.monotonic() - t0:.1f} s, {path.name})")
        return {"path": str(path), "started": started, "ended": time.time()}

    def _hop(self, number: int, src: hv.Release, tgt: hv.Release, steps: list[str],
             run_id: str, backup: dict[str, Any] | None = None) -> str:
        """Run the playbook for one hop; the journal's outcome (DONE: on ``tgt``, healthy)."""
        self.say(f"{self.entry.name}: hop {number}: {src} -> {tgt}: {', '.join(steps)}")
        outcome = run_hop_playbook(self.site, self.entry, self.opts, number=number, src=src,
                                   tgt=tgt, steps=steps, run_id=run_id, backup=backup,
                                   progress=self.say)
        lost = [f for f in outcome.failures if f.status == "unreachable"]
        if lost:  # the play ended there, without its rescue
            raise reconnect.HostDropped(run_id, number, str(src), str(tgt), str(lost[0]))
        state = journal.fold((read_host(self.site, self.entry, self.opts)
                              .get("upgrade_journal") or "").splitlines())
        if state.run != run_id:  # the playbook never reached its first step
            tail = "; ".join(str(f) for f in outcome.failures) or (
                f"ansible-playbook exited with {outcome.returncode}")
            raise RemoteError(f"{self.entry.name}: hop {number} ({src} -> {tgt}) did not start: "
                              f"{tail}; nothing was changed", hint=f"see {self.opts.log_dir}")
        return self._judge(number, src, tgt, state,
                           "; ".join(str(f) for f in outcome.failures))

    def _judge(self, number: int, src: hv.Release, tgt: hv.Release, state: journal.HostState,
               failures: str) -> str:
        """Record hop ``number`` from the journal's ``state``; set the outcome when it did
        not reach ``tgt``; return the journal's outcome."""
        hop_steps = [t.to_dict() for t in state.timings if t.hop == number]
        down = st.downtime(state.timings, number)
        self.o.hops.append({"hop": number, "from": str(src), "to": str(tgt),
                            "steps": hop_steps, "downtime_seconds": down,
                            "outcome": state.outcome})
        for s in hop_steps:  # one line per step with its duration, then the hop's downtime
            self.say(f"{self.entry.name}: hop {number}: {s['step']} {s['seconds']} s"
                     f"{'' if s['ok'] else ' FAILED' if s['ok'] is False else ' (unfinished)'}")
        self.say(f"{self.entry.name}: hop {number}: downtime {down} s")
        if state.outcome == journal.DONE:
            self.o.on_release = str(tgt)
            return journal.DONE
        where = f"hop {number} ({src} -> {tgt}) failed at {state.failed_step or state.step}"
        why = state.failure or failures or "see the log"
        if state.outcome == journal.ROLLED_BACK:
            self.o.outcome, self.o.on_release = "rolled_back", str(src)
            self.o.message = (f"{where}: {why}; rolled back: {self.entry.name} is on Harbor "
                              f"{src} with its data from before the hop, healthy, every row")
        elif state.outcome == journal.FAILED:  # before the window: the old release served on
            self.o.outcome, self.o.on_release = "rolled_back", str(src)
            self.o.message = (f"{where}: {why}; this was before the downtime: nothing of "
                              f"Harbor's data changed and {self.entry.name} still serves "
                              f"Harbor {src}")
        else:
            self.o.outcome = "rollback_failed"
            self.o.message = (f"{where}: {why}; the rollback stopped at {state.step} "
                              f"({state.outcome}); the snapshot of the data from before the hop"
                              f" is kept on {self.entry.name}; next: fix the cause and run "
                              "`harborctl upgrade apply` again (it retries the rollback)")
        return state.outcome

    def _finish_rollback(self, state: journal.HostState) -> None:
        self.o.outcome, self.o.on_release = "rolled_back", state.source
        self.o.message = (f"hop {state.hop} ({state.source} -> {state.target}) failed at "
                          f"{state.failed_step or '?'} ({state.failure or '?'}); its rollback is "
                          f"now complete: {self.entry.name} is on Harbor {state.source} with "
                          "its data from before the hop, healthy, every row")

    def _recover(self, drop: reconnect.HostDropped, drops: int) -> HostPlan | None:
        """After a drop: reach the host again (bounded), then what a re-run does: wait for
        the window helper, read the journal, plan from it. The plan to go on with, or None
        when the outcome is decided here (the hop had ended, or the host stays away)."""
        name, bounds = self.entry.name, self.opts.reconnect
        began = time.monotonic()
        self.say(f"{name}: hop {drop.number} ({drop.source} -> {drop.target}): the connection "
                 f"dropped ({drop.why}); the play ended without its rescue; reconnecting (at "
                 f"most {bounds.tries} tries in {bounds.seconds:.0f} s), then continuing or "
                 "rolling back from the host's journal")
        record: dict[str, Any] = {"hop": drop.number, "lost": drop.why}
        self.o.reconnects.append(record)
        if drops > reconnect.MAX_DROPS:
            self._unreachable(drop, f"the connection dropped {drops} times in this run")
            return None
        try:
            plan = reconnect.until_back(
                lambda: plan_hosts(self.site, [self.entry], self.opts, self.say)[0],
                name=name, bounds=bounds, say=self.say)
        except reconnect.StillUnreachable as gone:
            record["seconds"] = round(time.monotonic() - began, 1)
            self._unreachable(drop, f"no answer in {gone.tries} tries over {gone.seconds:.0f} "
                                    f"s ({gone.last})")
            return None
        record["seconds"] = round(time.monotonic() - began, 1)
        self._hold_again()
        state = plan.state
        if plan.decision.action != "fresh" or state.run != drop.run:
            return plan  # an unfinished hop (resumed or rolled back), or one never begun
        got = self._judge(state.hop, hv.release(str(state.source)),
                          hv.release(str(state.target)), state, drop.why)
        return plan if got == journal.DONE else None  # its hop had ended before the drop

    def _hold_again(self) -> None:
        """The host's job lock after a drop: its ssh session may have ended with the link,
        freeing it; then it is taken again. When that fails (our own orphaned holder the
        host has not noticed yet, or another job took it), the run still finishes the hop:
        the window lock guards the window's steps, and Harbor must not stay down."""
        if self.held is None:
            return
        try:
            if self.held.renew():
                self.say(f"{self.entry.name}: the host's job lock was lost with the "
                         "connection; taken again")
        except HarborctlError as exc:
            self.say(f"{self.entry.name}: the host's job lock could not be taken again "
                     f"({exc.message}); finishing the hop under the window lock")

    def _unreachable(self, drop: reconnect.HostDropped, why: str) -> None:
        """The host stays away: the exact state known, and the command that finishes it.
        Its release is not known (the window may have switched it): ``on_release`` None."""
        self.o.outcome, self.o.on_release = "unreachable", None
        self.o.message = (
            f"hop {drop.number} ({drop.source} -> {drop.target}): the connection to "
            f"{self.entry.name} dropped ({drop.why}) and {why}; the hop is unfinished: on the "
            "host the window helper ends its step in flight and begins no other, so Harbor "
            f"may be down on {drop.source} or {drop.target}; the host's journal "
            f"({self.opts.journal}) names the last step and the snapshot of the data from "
            "before the hop is kept there; next: once the host answers over SSH, run "
            "`harborctl upgrade apply` again (it waits for the window helper, then "
            "continues or rolls back)")


# --------------------------------------------------------------------------- the playbook


def hop_vars(site: Site, *, number: int, src: hv.Release, tgt: hv.Release, steps: list[str],
             run_id: str, backup: dict[str, Any] | None, bundle: Path, bundle_sha256: str,
             staging: Path, opts: Options) -> dict[str, Any]:
    """The role's variables for one hop (see roles/harbor/meta/argument_specs.yml)."""
    from harbor_ops.install.run import role_vars

    stop_site = dataclasses.replace(site, release=tgt)
    base = role_vars(stop_site, bundle=bundle, bundle_sha256=bundle_sha256, staging=staging)
    # --health-retries counts attempts 5 s apart (the install's gate polls every second).
    return {**base, "harbor_health_retries": opts.health_retries, "harbor_health_delay": 5,
            "harbor_upgrade_run": run_id, "harbor_upgrade_hop": number,
            "harbor_upgrade_from": str(src), "harbor_upgrade_steps": steps,
            "harbor_upgrade_rollback_table": {s.name: list(journal.rollback_steps(s.name))
                                              for s in st.HOP_STEPS},
            "harbor_upgrade_backup": backup or {"path": "", "started": 0, "ended": 0},
            "harbor_upgrade_journal": opts.journal,
            "harbor_upgrade_window_lock": opts.window_lock,
            "harbor_data_volume": _data_volume(site),
            "harbor_log_location": str(((site.harbor.get("log") or {}).get("local") or {})
                                       .get("location", "/var/log/harbor")),
            "harbor_upgrade_count_sql": st.count_sql(),
            "harbor_upgrade_schema_from": src.schema_version,
            "harbor_upgrade_schema_to": tgt.schema_version,
            "harbor_upgrade_layout_from": src.data_layout,
            "harbor_upgrade_layout_to": tgt.data_layout,
            "harbor_upgrade_key_tables": list(st.KEY_TABLES)}


def run_hop_playbook(site: Site, entry: HostEntry, opts: Options, *, number: int,
                     src: hv.Release, tgt: hv.Release, steps: list[str], run_id: str,
                     backup: dict[str, Any] | None,
                     progress: Progress) -> runner.PlaybookOutcome:
    from harbor_ops.core.hashing import sha256_file
    from harbor_ops.render.engine import render_site

    bundle = _bundle_for(opts.bundle_dir, tgt) if "unpack" in steps else None
    opts.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = opts.log_dir / f"upgrade-{entry.name}-{stamp}.log"
    out_path = opts.log_dir / f"upgrade-{entry.name}-{stamp}.out"
    for path in (log_path, out_path):
        path.touch(mode=0o600, exist_ok=True)
    with private_workdir("upgrade") as work:  # 0700: harbor.yml
        staging = work.path
        render_site(dataclasses.replace(site, release=tgt), output_dir=staging / "files",
                    validate=False)
        extra = hop_vars(site, number=number, src=src, tgt=tgt, steps=steps, run_id=run_id,
                         backup=backup, bundle=bundle or Path("/nonexistent"),
                         bundle_sha256=sha256_file(bundle) if bundle else "0" * 64,
                         staging=staging / "files", opts=opts)
        argv, env = runner.build_command(
            playbook=runner.playbook_path(PLAYBOOK), work_dir=staging / "run",
            log_path=log_path, hosts=[entry], extra_vars=extra, ssh_config=opts.ssh_config,
            accept_new_host_keys=opts.accept_new_host_keys)
        run = runner.run_playbook(argv, env, output_path=out_path, cwd=staging / "run",
                                  timeout=opts.timeout, hold_fds=(work.lock_fd,))
        for line in run:
            progress(line)
        return run.outcome


def _bundle_for(bundle_dir: Path | None, rel: hv.Release) -> Path:
    found = inspect_bundles(bundle_dir, {rel.version}).get(rel.version)
    if found is None or found.problems:
        raise UsageError(f"--bundle-dir: no usable bundle for Harbor {rel}")
    return found.path


# --------------------------------------------------------------------------- status


def status(site: Site, *, host: str | None, opts: Options,
           learned: list[dict[str, Any]] | None = None) -> ApplyResult:
    """Where each host stands: installed release, plan, and the journal's last run."""
    entries = select_hosts(site, host)
    result = ApplyResult(target=str(site.release.version), dry_run=True,
                         learned=list(learned or []))
    for p in plan_hosts(site, entries, opts):
        o = HostOutcome(p, on_release=p.installed)
        if p.state.run:
            o.outcome = p.state.outcome
        else:
            o.outcome = "refused" if p.refusals else "planned" if p.hops else "up_to_date"
        result.hosts.append(o)
    return result
