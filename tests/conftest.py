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


_MARK = "HARBORCTL_TEST_PRIVATE"  # the folder these settings came from
_SETTINGS = (("HARBORCTL_LOCK_FILE", "harborctl.lock"), ("XDG_STATE_HOME", "state"),
             ("XDG_CACHE_HOME", "cache"))


def pytest_configure(config: pytest.Config) -> None:
    """A user's own settings are kept; ours are not: an xdist worker inherits the
    controller's environment, and must not share its lock file (two workers upgrading
    their own bed's ``h1`` would refuse each other on the per-host lock ``...lock.h1``)."""
    private = tempfile.mkdtemp(prefix="harborctl-test-state.")
    _PRIVATE.append(private)
    inherited = os.environ.get(_MARK)
    for name, leaf in _SETTINGS:
        ours = inherited is not None and os.environ.get(name) == os.path.join(inherited, leaf)
        if ours or name not in os.environ:
            os.environ[name] = os.path.join(private, leaf)
    os.environ[_MARK] = private


def pytest_unconfigure(config: pytest.Config) -> None:
    for private in _PRIVATE:
        shutil.rmtree(private, ignore_errors=True)
