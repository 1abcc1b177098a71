"""A host that drops out in the middle of a hop: reach it again, bounded in tries and time.

Why harborctl does this itself: when the SSH connection drops (a session killed, a link
down for a moment), Ansible ends the play for that host without the block's rescue, so no
rollback runs; on the host the window helper finishes its step in flight and begins no
other. Harbor may then be down with the window open. A re-run of ``apply`` would wait for
the window lock, read the journal and continue or roll back; the same run does exactly
that once the host answers again (:class:`harbor_ops.upgrade.apply.HostRun`). This module
holds only the bounded wait, so it is tested without a host.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from harbor_ops.core.errors import RemoteError, UsageError

_T = TypeVar("_T")
# Drops of one host in one run before harborctl stops trying: a link that keeps failing
# is a person's problem, not a retry loop's.
MAX_DROPS = 3
# "pause,window" in seconds, e.g. "1,20": the pause between tries and the time after the
# drop when no new try begins (tests; a site whose links are known to be down longer).
BOUNDS_ENV = "HARBORCTL_RECONNECT_SECONDS"


@dataclass(frozen=True)
class Bounds:
    """How long a dropped host is tried: ``tries`` reads, ``pause`` s apart, and no new try
    once ``seconds`` have passed since the drop."""

    tries: int = 30
    seconds: float = 300.0
    pause: float = 5.0


def bounds_from_env(environ: Mapping[str, str] = os.environ) -> Bounds:
    """The bounds, with ``$HARBORCTL_RECONNECT_SECONDS`` (``pause,window``) when set; the
    number of tries stays bounded by :attr:`Bounds.tries` whatever the window."""
    raw = environ.get(BOUNDS_ENV, "").strip()
    if not raw:
        return Bounds()
    try:
        pause, seconds = (float(x) for x in raw.split(","))
    except ValueError:
        pause = seconds = math.nan
    if not (0 <= pause <= 3600 and 0 < seconds <= 86400):  # also false for nan
        raise UsageError(f"{BOUNDS_ENV}={raw!r}: must be 'pause,window' in seconds, the pause "
                         "0 to 3600 and the window above 0 up to 86400 (default "
                         f"'{Bounds.pause:g},{Bounds.seconds:g}')")
    return Bounds(seconds=seconds, pause=pause)


class HostDropped(Exception):
    """Internal: the play of hop ``number`` of run ``run`` ended because the host became
    unreachable."""

    def __init__(self, run: str, number: int, source: str, target: str, why: str) -> None:
        super().__init__(why)
        self.run, self.number, self.source, self.target = run, number, source, target
        self.why = why


class StillUnreachable(Exception):
    """Internal: the host did not answer within the bounds; ``last`` is the last reason."""

    def __init__(self, last: str, tries: int, seconds: float) -> None:
        super().__init__(last)
        self.last, self.tries, self.seconds = last, tries, seconds


def until_back(read: Callable[[], _T], *, name: str, bounds: Bounds,
               say: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> _T:
    """``read()`` again until it returns instead of raising :class:`RemoteError`.

    One line of progress per failed try; :class:`StillUnreachable` after ``bounds.tries``
    tries or once ``bounds.seconds`` have passed (a try already under way finishes: the
    read itself is bounded by its connect timeout and the window lock's wait)."""
    began, tries, last = clock(), 0, "no try made"
    while tries < bounds.tries:
        tries += 1
        try:
            got = read()
        except RemoteError as exc:
            last = exc.message
        else:
            say(f"{name}: reachable again (try {tries}, {clock() - began:.0f} s after the drop)")
            return got
        spent = clock() - began
        if tries >= bounds.tries or spent >= bounds.seconds:
            break
        say(f"{name}: not reachable yet (try {tries} of at most {bounds.tries}, {spent:.0f} s "
            f"of at most {bounds.seconds:.0f} s): {last}")
        sleep(max(0.0, min(bounds.pause, bounds.seconds - spent)))
    raise StillUnreachable(last, tries, clock() - began)
