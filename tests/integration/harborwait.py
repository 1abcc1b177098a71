"""Waiting for a Harbor (the bed's Harbor-shaped double) to say it is healthy.

One wait for every test: poll ``/api/v2.0/health`` until it answers ``healthy``, bounded in
time and tries. The bound is headroom for a loaded machine, not a speed check: the wait ends
as soon as Harbor is healthy, and only a Harbor that never gets there costs the whole bound.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.bed._run import BedError, wait_for
from tests.bed.hosts import Host

HEALTH_TIMEOUT = 300.0


def health_url(host: Host, port: int = 8080) -> str:
    """Harbor's health endpoint on a bed host, reached at the host's address."""
    return f"http://{host.address}:{port}/api/v2.0/health"


def wait_healthy(url: str, *, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    """Poll ``url`` until Harbor answers ``healthy``; returns that answer.

    Raises AssertionError naming the last answer (or error) when it never does."""
    last: list[Any] = [None]

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - bed/loopback
                last[0] = json.load(resp)
        except (OSError, ValueError) as exc:
            last[0] = repr(exc)
            return False
        return isinstance(last[0], dict) and last[0].get("status") == "healthy"

    try:
        wait_for(healthy, what=f"{url} to say healthy", timeout=timeout, interval=0.5)
    except BedError as exc:
        raise AssertionError(f"{exc}; last answer: {last[0]}") from None
    return dict(last[0])
