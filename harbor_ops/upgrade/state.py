"""The per-host upgrade journal and the decisions made from it (pure: no I/O).

The playbook appends one JSON line to the journal on the host (mode 0600) when a step
begins, ends or fails; a line is written before the step's effect and after it, so the
journal never claims more than happened. :func:`fold` turns the lines of the latest run
into a :class:`HostState`; :func:`decide` says what a re-run must do after ``kill -9`` of
harborctl or a reboot of the host; :func:`rollback_steps` is the rollback decision table
for a failure at a given step. The journal comes from the host, so it is untrusted: a
line that does not parse, names an unknown step or a non-version is ignored, never used
to build a path or a command.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from harbor_ops.upgrade import steps as st

JOURNAL_FORMAT = 1
# The window helper also journals ``pause``/``unpause`` lines (harbor-core held paused while
# harbor-db converts; the helper itself unpauses what they leave paused): not a step's
# event, so ignored here.
EVENTS = ("begin", "end", "fail")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_RUN = re.compile(r"^[0-9a-f]{8,32}$")

# Outcomes of one host.
DONE, RUNNING, ROLLED_BACK, ROLLBACK_FAILED, FAILED, NONE = (
    "done", "running", "rolled_back", "rollback_failed", "failed", "none")


@dataclass(frozen=True)
class Event:
    run: str
    hop: int
    source: str
    target: str
    step: str
    event: str
    t: float
    msg: str = ""


def parse_line(line: str) -> Event | None:
    """One journal line, or None when it is not one harborctl wrote."""
    try:
        d = json.loads(line)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("v") != JOURNAL_FORMAT:
        return None
    try:
        ev = Event(run=str(d["run"]), hop=int(d["hop"]), source=str(d["from"]),
                   target=str(d["to"]), step=str(d["step"]), event=str(d["event"]),
                   t=float(d["t"]), msg=str(d.get("msg") or "")[:2000])
    except (KeyError, TypeError, ValueError):
        return None
    if (not _RUN.match(ev.run) or ev.step not in st.STEP_NAMES or ev.event not in EVENTS
            or not _VERSION.match(ev.source) or not _VERSION.match(ev.target) or ev.hop < 1):
        return None
    return ev


def journal_line(*, run: str, hop: int, source: str, target: str, step: str, event: str,
                 t: float, msg: str = "") -> str:
    """The line the playbook writes (here for the tests and for the controller's own lines)."""
    return json.dumps({"v": JOURNAL_FORMAT, "run": run, "hop": hop, "from": source,
                       "to": target, "step": step, "event": event, "t": t, "msg": msg},
                      sort_keys=True)


@dataclass
class HostState:
    """Where one host's latest run stands."""

    run: str | None = None
    hop: int = 0
    source: str | None = None
    target: str | None = None
    step: str | None = None
    event: str | None = None
    outcome: str = NONE
    failed_step: str | None = None
    failure: str = ""
    timings: list[st.Timing] = field(default_factory=list)

    @property
    def window_open(self) -> bool:
        """The old release may be down: a step of the downtime window began, none closed it."""
        return self.outcome in (RUNNING, ROLLBACK_FAILED) and self.step is not None and (
            st.step(self.step).phase != st.PREPARE)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "hop": self.hop, "from": self.source, "to": self.target,
                "step": self.step, "event": self.event, "outcome": self.outcome,
                "failed_step": self.failed_step, "failure": self.failure,
                "steps": [t.to_dict() for t in self.timings]}


def fold(lines: list[str]) -> HostState:
    """The state of the latest run in the journal (the last run id that appears)."""
    events = [e for e in map(parse_line, lines) if e is not None]
    if not events:
        return HostState()
    run = events[-1].run
    mine = [e for e in events if e.run == run]
    s = HostState(run=run)
    open_: dict[tuple[int, str], float] = {}
    for e in mine:
        _apply(s, e, open_)
    for (hop, name), began in open_.items():
        s.timings.append(st.Timing(hop, name, began, None, None))
    s.timings.sort(key=lambda t: (t.hop, t.started))
    return s


def _apply(s: HostState, e: Event, open_: dict[tuple[int, str], float]) -> None:
    if e.hop != s.hop:  # a new hop starts clean
        s.failed_step, s.failure = None, ""
    s.hop, s.source, s.target, s.step, s.event = e.hop, e.source, e.target, e.step, e.event
    key = (e.hop, e.step)
    if e.event == "begin":
        open_[key] = e.t
        if e.step == "backup":
            s.failed_step, s.failure = None, ""
        s.outcome = RUNNING
        return
    began = open_.pop(key, e.t)
    s.timings.append(st.Timing(e.hop, e.step, began, e.t, e.event == "end"))
    if e.event == "fail":
        if st.step(e.step).phase == st.ROLLBACK:
            s.outcome = ROLLBACK_FAILED
        else:
            s.failed_step, s.failure = e.step, e.msg
            if not rollback_steps(e.step) and e.step != "finish":
                s.outcome = FAILED  # before the window: nothing changed, nothing to undo
        return
    if e.step == "rb_gate":
        s.outcome = ROLLED_BACK
    elif e.step == "finish":
        s.outcome = DONE


# --------------------------------------------------------------------------- decisions


def rollback_steps(failed_step: str) -> tuple[str, ...]:
    """The rollback decision table: what undoes a failure at ``failed_step``.

    * before ``stop``: nothing (the old release never stopped; the data is untouched);
    * ``stop`` / ``snapshot``: the data is untouched but the old release may be down:
      start it again and gate it (the partial snapshot is removed first);
    * ``switch`` and later: the new release may have converted or migrated the data:
      stop it, put the snapshot back, switch back, start and gate the old release;
    * ``finish``: the gate passed; finishing is retried, never rolled back.
    """
    s = st.step(failed_step)
    if s.phase == st.PREPARE or failed_step == "finish":
        return ()
    if s.phase == st.ROLLBACK:
        return tuple(x.name for x in st.ROLLBACK_STEPS)
    if not st.changes_data(failed_step):
        return ("rb_start", "rb_gate")
    return tuple(x.name for x in st.ROLLBACK_STEPS)


@dataclass(frozen=True)
class Decision:
    """What a run does first on a host, given its journal."""

    action: str  # fresh | resume | rollback
    steps: tuple[str, ...] = ()  # for resume/rollback: the steps to run, in order
    retry_after: bool = False  # after the rollback, try the hop again (it was a crash)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "steps": list(self.steps),
                "retry_after": self.retry_after, "reason": self.reason}


def decide(s: HostState) -> Decision:
    """The resume rule after a crash of harborctl or a reboot of the host.

    A run that ended (done or rolled back) is history: plan afresh from what the host runs.
    A run interrupted before the new release could touch the data continues at the step
    that did not finish (every step is idempotent; a partial snapshot is removed first). A
    run interrupted at ``switch`` or later is rolled back to the snapshot (the data may be
    half-converted) and then, since nothing failed, the hop is tried again. A rollback that
    failed or was interrupted is run again from the snapshot, which is kept until a hop
    finishes.
    """
    if s.outcome in (NONE, DONE, ROLLED_BACK, FAILED) or s.step is None:
        return Decision("fresh", reason=f"no unfinished run ({s.outcome})")
    if s.outcome == ROLLBACK_FAILED or st.step(s.step).phase == st.ROLLBACK:
        return Decision("rollback", tuple(x.name for x in st.ROLLBACK_STEPS),
                        retry_after=s.failed_step is None,
                        reason=f"hop {s.hop} was rolling back at {s.step}")
    if s.failed_step not in (None, "finish"):  # failed; the rollback never started (a crash)
        return Decision("rollback", rollback_steps(str(s.failed_step)),
                        reason=f"hop {s.hop} failed at {s.failed_step}")
    if s.event == "end" and s.step == "gate":
        return Decision("resume", ("finish",), reason=f"hop {s.hop} passed its gate")
    if s.step == "finish" or not st.changes_data(s.step):
        at = s.step if s.event == "begin" else _next(s.step)
        names = [x.name for x in st.HOP_STEPS]
        return Decision("resume", tuple(names[names.index(at or "finish"):]),
                        reason=f"hop {s.hop} stopped at {at} before the data could change")
    return Decision("rollback", tuple(x.name for x in st.ROLLBACK_STEPS), retry_after=True,
                    reason=f"hop {s.hop} was interrupted at {s.step} after the new release "
                           "could touch the data")


def _next(name: str) -> str | None:
    names = [x.name for x in st.HOP_STEPS]
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None
