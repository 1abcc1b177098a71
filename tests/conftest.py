"""Shared test set-up: the test-bed fixtures are a plugin of their own.

Each pytest process (one per xdist worker) gets its own lock file, state and cache folder, so
tests never contend for the machine's /run/harborctl.lock or write into root's ~/.local/state
or ~/.cache, and parallel workers never see each other's "busy" lock or last doctor result.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest

pytest_plugins = [
    name for name in ("tests.bed.fixtures",) if importlib.util.find_spec(name) is not None
]

_PRIVATE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    private = tempfile.mkdtemp(prefix="harborctl-test-state.")
    _PRIVATE.append(private)
    os.environ.setdefault("HARBORCTL_LOCK_FILE", os.path.join(private, "harborctl.lock"))
    os.environ.setdefault("XDG_STATE_HOME", os.path.join(private, "state"))
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(private, "cache"))


def pytest_unconfigure(config: pytest.Config) -> None:
    for private in _PRIVATE:
        shutil.rmtree(private, ignore_errors=True)
