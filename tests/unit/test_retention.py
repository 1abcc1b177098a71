"""Retention is a pure function: a table of cases, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from harbor_ops.backup.retention import BackupRef, keep_reasons, select_to_prune
from harbor_ops.site.model import Keep

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def daily(n: int, *, verified: set[int] = frozenset(), hour: int = 2) -> list[BackupRef]:  # type: ignore[assignment]
    """One backup per day for n days back (index 0 = today)."""
    return [BackupRef(f"b{i:03d}", (NOW - timedelta(days=i)).replace(hour=hour),
                      verified=i in verified) for i in range(n)]


def names(refs: list[BackupRef]) -> set[str]:
    return {r.name for r in refs}


CASES = [
    # (id, backups, keep, expected kept names)
    ("empty", [], Keep(7, 4, 6), set()),
    ("one backup is always kept", daily(1), Keep(0, 0, 0), {"b000"}),
    ("keep nothing still keeps newest", daily(5), Keep(0, 0, 0), {"b000"}),
    ("keep nothing keeps newest verified", daily(5, verified={3}), Keep(0, 0, 0),
     {"b000", "b003"}),
    ("3 daily of 10", daily(10), Keep(3, 0, 0), {"b000", "b001", "b002"}),
    ("daily larger than history keeps all", daily(4), Keep(7, 0, 0),
     {"b000", "b001", "b002", "b003"}),
    ("old verified survives a small daily", daily(10, verified={8}), Keep(2, 0, 0),
     {"b000", "b001", "b008"}),
    # 2026-11-29 is a Sunday: ISO weeks end on b000, b007, b014 ...
    ("weekly after daily", daily(21), Keep(2, 2, 0), {"b000", "b001", "b007", "b014"}),
    ("monthly keeps last of each month", daily(70), Keep(0, 0, 3),
     {"b000", "b029", "b060"}),
]


@pytest.mark.parametrize("backups,keep,expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_kept(backups: list[BackupRef], keep: Keep, expected: set[str]) -> None:
    kept = set(keep_reasons(backups, keep, NOW))
    assert kept == expected
    assert names(select_to_prune(backups, keep, NOW)) == names(backups) - expected


def test_two_backups_same_day_keep_the_newest_of_the_day() -> None:
    morning = BackupRef("m", NOW.replace(hour=1))
    evening = BackupRef("e", NOW.replace(hour=11))
    yesterday = BackupRef("y", NOW - timedelta(days=1))
    assert names(select_to_prune([morning, evening, yesterday], Keep(2, 0, 0), NOW)) == {"m"}


def test_future_dated_backups_are_kept() -> None:
    future = BackupRef("f", NOW + timedelta(days=3))
    old = daily(5)
    kept = keep_reasons([*old, future], Keep(1, 0, 0), NOW)
    assert "f" in kept and kept["f"] in ("newest", "daily #1")


def test_reasons_say_why() -> None:
    reasons = keep_reasons(daily(3, verified={2}), Keep(1, 0, 0), NOW)
    assert reasons == {"b000": "daily #1", "b002": "newest verified"}


def test_prune_order_is_newest_first_and_never_the_newest_verified() -> None:
    backups = daily(40, verified={30, 35})
    doomed = select_to_prune(backups, Keep(1, 1, 0), NOW)
    assert doomed == sorted(doomed, key=lambda b: b.created, reverse=True)
    assert "b030" not in names(doomed) and "b035" in names(doomed)
