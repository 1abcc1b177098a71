"""Shared test set-up: the test-bed fixtures are a plugin of their own."""

from __future__ import annotations

import importlib.util

pytest_plugins = [
    name for name in ("tests.bed.fixtures",) if importlib.util.find_spec(name) is not None
]
