"""Which backups to delete: a pure function over data (borg-style GFS prune).

Rules, applied in order daily -> weekly -> monthly as in ``borg prune``: walking from
newest to oldest, each rule keeps the newest backup of each of its N most recent
periods that no earlier rule kept already; if a rule runs out of backups before N
periods, it keeps the oldest one too. Two backups are never deleted whatever the
numbers say: the newest backup and the newest *verified* backup (a backup is only
proven by a restore drill). Backups dated in the future (clock skew) are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class KeepPolicy(Protocol):
    @property
    def daily(self) -> int: ...
    @property
    def weekly(self) -> int: ...
    @property
    def monthly(self) -> int: ...


@dataclass(frozen=True)
class BackupRef:
    """What retention needs to know about one backup."""

    name: str
    created: datetime  # timezone-aware (UTC)
    verified: bool = False


_PERIODS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
)


def keep_reasons(backups: Sequence[BackupRef], keep: KeepPolicy,
                 now: datetime) -> dict[str, str]:
    """Name -> why it is kept, for every backup that survives."""
    ordered = sorted(backups, key=lambda b: (b.created, b.name), reverse=True)
    reasons: dict[str, str] = {}
    if not ordered:
        return reasons
    for rule, period_of in _PERIODS:
        wanted = int(getattr(keep, rule))
        if wanted <= 0:
            continue
        kept = 0
        last: tuple[int, ...] | None = None
        for b in ordered:
            period = period_of(b.created)
            if period == last:
                continue
            last = period
            if b.name not in reasons:
                kept += 1
                reasons[b.name] = f"{rule} #{kept}"
                if kept == wanted:
                    break
        else:
            oldest = ordered[-1]
            if kept < wanted and oldest.name not in reasons:
                reasons[oldest.name] = f"{rule} (oldest)"
    # Safety nets, whatever the numbers say.
    reasons.setdefault(ordered[0].name, "newest")
    newest_verified = next((b for b in ordered if b.verified), None)
    if newest_verified is not None:
        reasons.setdefault(newest_verified.name, "newest verified")
    for b in ordered:
        if b.created > now:
            reasons.setdefault(b.name, "dated in the future")
    return reasons


def select_to_prune(backups: Sequence[BackupRef], keep: KeepPolicy,
                    now: datetime) -> list[BackupRef]:
    """The backups to delete, newest first."""
    kept = keep_reasons(backups, keep, now)
    doomed = [b for b in backups if b.name not in kept]
    return sorted(doomed, key=lambda b: (b.created, b.name), reverse=True)
