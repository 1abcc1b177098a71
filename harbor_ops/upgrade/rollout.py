"""Several hosts, N at a time; each host's run holds its job lock on both sides.

The lock (the controller's per-host lock and the Harbor host's ``/run/harborctl.lock``) is
:func:`harbor_ops.hosts.joblock.hold_host`, shared with install and backup.

Why the rollout stops as a whole: a failure on one host says something about the release or
the bundle that the others share, so after it no new host and no new hop starts; the hosts
already in a hop finish it (each hop ends gated: on the new release or rolled back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")


def run_all(items: Sequence[_T], parallel: int,
            run: Callable[[_T, Callable[[], bool]], bool]) -> list[_T]:
    """Run ``run(item, stopped)`` for the items, ``parallel`` at a time, in order.

    ``run`` returns False when its item failed: then no further item starts, and ``stopped()``
    turns True for the ones still running (they end their current hop, start no new one).
    An exception stops the rollout the same way and is raised once every worker ended.
    Returns the items that never started."""
    stop, lock = threading.Event(), threading.Lock()
    queue = list(items)
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if stop.is_set() or not queue:
                    return
                item = queue.pop(0)
            try:
                if not run(item, stop.is_set):
                    stop.set()
            except BaseException as exc:  # re-raised below, after the others ended
                stop.set()
                errors.append(exc)
                return

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(items) or 1))) as pool:
        for _ in range(max(1, min(parallel, len(items) or 1))):
            pool.submit(worker)
    if errors:
        raise errors[0]
    return queue
