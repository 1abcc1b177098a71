"""SIGTERM, SIGINT and SIGHUP as an exception, so cleanup code runs on a killed run.

The default action of SIGTERM and SIGHUP ends the process at once: ``finally`` blocks
never run, and a scratch PostgreSQL holding a full copy of Harbor's database, or a
staging folder with its secret key, would outlive the run. Inside
:func:`signals_raise` the three signals raise :class:`Interrupted` instead, which
unwinds through every cleanup like Ctrl-C does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; the exit code is 128 + its number."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _raise(signum: int, _frame: FrameType | None) -> None:
    # Once is enough: a second signal during cleanup must not cut the cleanup short.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn the three signals into :class:`Interrupted` for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[signal.Signals, Any] = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
