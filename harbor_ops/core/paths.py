"""Where harborctl keeps its own state on the machine it runs on."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """$HARBORCTL_STATE_DIR, else the user's XDG state folder (~/.local/state/harborctl)."""
    if os.environ.get("HARBORCTL_STATE_DIR"):
        return Path(os.environ["HARBORCTL_STATE_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "harborctl"


def log_dir() -> Path:
    """Where full Ansible logs go: $HARBORCTL_LOG_DIR, else <state_dir>/logs."""
    if os.environ.get("HARBORCTL_LOG_DIR"):
        return Path(os.environ["HARBORCTL_LOG_DIR"])
    return state_dir() / "logs"
