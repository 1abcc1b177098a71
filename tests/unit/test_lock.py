"""The one lock (core.lock): the host-wide job lock and the agent's single instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from harbor_ops.agent.loop import single_instance
from harbor_ops.core.errors import LockHeld, UsageError
from harbor_ops.core.lock import job_lock


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("do not truncate me\n")
    lock = tmp_path / "harborctl.lock"
    lock.symlink_to(precious)
    with pytest.raises(UsageError, match="is a symbolic link: refused"), \
            job_lock(lock, job="backup"):
        pass
    status = tmp_path / "status.json"
    status.with_name("status.json.lock").symlink_to(precious)
    with pytest.raises(UsageError, match="symbolic link"), single_instance(status):
        pass
    assert precious.read_text() == "do not truncate me\n"


def test_job_lock_names_the_holder_and_is_freed(tmp_path: Path) -> None:
    lock = tmp_path / "harborctl.lock"
    with job_lock(lock, job="install"):
        assert "job=install" in lock.read_text()
        with pytest.raises(LockHeld, match="job=install"), job_lock(lock, job="backup"):
            pass
    with job_lock(lock, job="backup"):
        assert lock.stat().st_mode & 0o777 == 0o600
