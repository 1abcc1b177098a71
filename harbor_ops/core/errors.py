"""One exception root for harborctl; every class carries its exit code.

The CLI turns any ``HarborctlError`` into a one-line message and its exit code
(a traceback only with ``--debug``). The codes are documented in the README and
never reused for another meaning.
"""

from __future__ import annotations


class HarborctlError(Exception):
    """Root of every error harborctl reports to a user."""

    exit_code = 1
    label = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(HarborctlError):
    """The site file (or a value on the command line) is invalid; nothing was written."""

    exit_code = 2
    label = "invalid configuration"

    def __init__(self, problems: list[str], *, source: str = "site file") -> None:
        self.problems = problems
        head = f"{source}: {len(problems)} problem(s)"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


class UsageError(HarborctlError):
    """A command-line value is invalid (unknown version, bad option combination)."""

    exit_code = 2
    label = "usage"


class UpgradePathError(HarborctlError):
    """The requested upgrade is not safe or not possible (downgrade, layout mismatch)."""

    exit_code = 3
    label = "refused upgrade"


class PreflightFailed(HarborctlError):
    """At least one preflight check failed; nothing was changed on any host."""

    exit_code = 4
    label = "preflight failed"


class RenderError(HarborctlError):
    """A rendered file failed its validator (nginx -t, logrotate -d, ...); nothing replaced."""

    exit_code = 5
    label = "render failed"


class RemoteError(HarborctlError):
    """A host could not be reached or a remote step failed."""

    exit_code = 6
    label = "remote failure"


class LockHeld(HarborctlError):
    """Another harborctl job (backup, install, upgrade) holds the lock."""

    exit_code = 7
    label = "busy"


class BackupError(HarborctlError):
    """A backup could not be created, verified, restored or pruned."""

    exit_code = 8
    label = "backup failed"


class NoSpace(BackupError):
    """A backup would not fit (or did not fit) in the backup folder's free space."""


class HealthError(HarborctlError):
    """Harbor did not become healthy in time; the failing component is named."""

    exit_code = 9
    label = "unhealthy"


class Aborted(HarborctlError):
    """The user declined a confirmation."""

    exit_code = 10
    label = "aborted"


class UpgradeRolledBack(HarborctlError):
    """A hop failed and the host was rolled back: healthy on the old release, every row."""

    exit_code = 11
    label = "upgrade rolled back"


class RollbackFailed(HarborctlError):
    """An upgrade rollback failed: a person is needed (the state and next command are named)."""

    exit_code = 12
    label = "rollback failed"


class HostUnreachable(HarborctlError):
    """A host stayed unreachable mid-hop: its state is unknown here, Harbor may be down."""

    # No rollback ran, so this is not 12; a re-run once the host answers over SSH finishes
    # or rolls back the hop from the host's journal (the message names it).
    exit_code = 15
    label = "host unreachable mid-upgrade"


class DoctorProblems(HarborctlError):
    """doctor found at least one error-severity problem (each finding names its fix)."""

    exit_code = 13
    label = "problems found"


class EnvironmentMissing(HarborctlError):
    """A tool or image harborctl needs is missing here (never recorded as a bad backup)."""

    exit_code = 14
    label = "environment"


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (a bug: run with --debug and report it)",
    **{
        cls.exit_code: cls.__doc__.splitlines()[0] if cls.__doc__ else cls.label
        for cls in (
            ConfigError,
            UpgradePathError,
            PreflightFailed,
            RenderError,
            RemoteError,
            LockHeld,
            BackupError,
            HealthError,
            Aborted,
            UpgradeRolledBack,
            RollbackFailed,
            DoctorProblems,
            EnvironmentMissing,
            HostUnreachable,
        )
    },
}
