"""The steps of one upgrade hop, in order, and what each one may change.

Pure data and arithmetic (no I/O): the playbook runs these steps and records each one in
the host's state file; :mod:`harbor_ops.upgrade.state` decides from that record what a
re-run must do; the report adds up the downtime from the recorded times. Why this order:
everything that takes long and changes no Harbor data (the verified backup, unpacking the
bundle beside the old release, ``docker load`` and ``prepare`` of the new release) happens
while the old release still serves; the window between ``stop`` and a passed ``gate`` holds
only what must happen with Harbor down, and runs on the host as one process (the role's
``upgrade-window`` helper), so no controller round trip lands inside it. The rows the gates
compare against are counted inside ``stop``, once every writer stopped and before the
database does: no row can come or go between that count and the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PREPARE, DOWNTIME, ROLLBACK = "prepare", "downtime", "rollback"


@dataclass(frozen=True)
class Step:
    name: str
    phase: str  # prepare | downtime | rollback
    does: str  # one line for plans and progress


HOP_STEPS: tuple[Step, ...] = (
    Step("backup", PREPARE, "verified backup (restore drill) while the old release serves"),
    Step("unpack", PREPARE, "copy the bundle, unpack the new release beside the old one"),
    Step("load_images", PREPARE, "docker load the new release's images (old one still serves)"),
    Step("configure", PREPARE, "render harbor.yml for this release, run its prepare"),
    Step("count_rows", PREPARE, "check that the schema version and row counts can be read"),
    Step("stop", DOWNTIME, "stop the old release's services, count the rows, stop its database"
                           " (the boot path is held off)"),
    Step("snapshot", DOWNTIME, "copy database, redis and secret aside, owners and modes kept"),
    Step("switch", DOWNTIME, "point the harbor link at the new release"),
    Step("start", DOWNTIME, "start the new release (harbor-db converts, core migrates)"),
    Step("gate", DOWNTIME, "health, schema version, data layout and row counts"),
    Step("finish", DOWNTIME, "release the boot path, drop the snapshot"),
)
ROLLBACK_STEPS: tuple[Step, ...] = (
    Step("rb_stop", ROLLBACK, "stop the new release"),
    Step("rb_restore", ROLLBACK, "put the snapshot of database, redis and secret back"),
    Step("rb_switch", ROLLBACK, "point the harbor link at the old release"),
    Step("rb_start", ROLLBACK, "start the old release"),
    Step("rb_gate", ROLLBACK, "health, schema version and every row, on the old release"),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in HOP_STEPS + ROLLBACK_STEPS)
_BY_NAME = {s.name: s for s in HOP_STEPS + ROLLBACK_STEPS}
# From this step on the old data may be changed: a failure must roll back (harbor-db of the
# new release may have converted it, core may have migrated it).
FIRST_CHANGING_STEP = "switch"
# The tables whose row counts must not drop across a hop (Harbor's key tables).
KEY_TABLES: tuple[str, ...] = ("project", "repository", "artifact", "harbor_user")


def count_sql(tables: tuple[str, ...] = KEY_TABLES) -> str:
    """One query for both gates: schema_migrations' version and dirty flag, and the row count
    of each key table, as one JSON object. A missing table (an EMPTY new database) makes the
    query fail, which fails the gate. The names are harborctl's constants, never input."""
    counts = ", ".join(f"'{t}', (SELECT count(*) FROM {t})" for t in tables)
    return ("SELECT json_build_object('schema_version', (SELECT max(version) FROM "
            "schema_migrations), 'schema_dirty', coalesce((SELECT bool_or(dirty) FROM "
            f"schema_migrations), false), 'counts', json_build_object({counts}))")


def step(name: str) -> Step:
    """The step called ``name``; a name not in the tables is a bug or a foreign state file."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown upgrade step {name!r}") from None


def index(name: str) -> int:
    return STEP_NAMES.index(step(name).name)


def changes_data(name: str) -> bool:
    """True once the new release may have touched the old data (switch and later)."""
    s = step(name)
    return s.phase == ROLLBACK or index(name) >= index(FIRST_CHANGING_STEP)


@dataclass(frozen=True)
class Timing:
    """One recorded step: when it began and ended (seconds since the epoch), and how."""

    hop: int
    name: str
    started: float
    ended: float | None
    ok: bool | None

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else max(0.0, self.ended - self.started)

    def to_dict(self) -> dict[str, Any]:
        secs = self.seconds
        return {"hop": self.hop, "step": self.name, "phase": step(self.name).phase,
                "seconds": None if secs is None else round(secs, 2), "ok": self.ok}


def downtime(timings: list[Timing], hop: int) -> float | None:
    """Seconds Harbor was down in ``hop``: from the start of ``stop`` to the end of the last
    step that brought a release back (``gate`` passed, or ``rb_gate`` after a rollback).

    None while the window is still open (or was never entered)."""
    mine = [t for t in timings if t.hop == hop]
    began = next((t.started for t in mine if t.name == "stop"), None)
    if began is None:
        return None
    for closing in ("rb_gate", "gate"):
        done = [t for t in mine if t.name == closing and t.ok and t.ended is not None]
        if done:
            return round(max(0.0, done[-1].ended - began), 2)  # type: ignore[operator]
    return None
