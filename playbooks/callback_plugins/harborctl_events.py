"""Ansible callback: one JSON line per playbook event, for harborctl's progress display.

Why a callback and not Ansible's stdout: harborctl shows a person one line per step with
the elapsed time, and a machine the same as JSON; parsing Ansible's human output would
break with every release. The stream carries names and outcomes only: never task
arguments, and no message at all from a ``no_log`` task (it may hold a secret).

Destination (set by harborctl): ``HARBORCTL_EVENTS_FD`` (an inherited file descriptor) or
``HARBORCTL_EVENTS_FILE`` (a path, appended to). Without either the plugin stays silent.

Events (every one has ``event`` and ``t``, seconds since the playbook started)::

    {"event": "playbook_start", "playbook": "install.yml"}
    {"event": "task_start", "task": "Copy the bundle to the host", "role": "harbor"}
    {"event": "task_result", "host": "h1", "task": "...", "status": "changed",
     "changed": true, "elapsed": 1.23, "msg": "..."}          # msg only when failed
    {"event": "recap", "hosts": {"h1": {"ok": 9, "changed": 2, "failed": 0, ...}}}
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: harborctl_events
    type: aggregate
    short_description: JSON lines of playbook events for harborctl
    description:
      - Writes one JSON object per line for playbook start, task start, each task result per
        host (status, changed, elapsed) and the recap. Never task arguments; no messages
        from no_log tasks.
    requirements:
      - HARBORCTL_EVENTS_FD or HARBORCTL_EVENTS_FILE in the environment
"""

MAX_MSG = 2000


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "harborctl_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._out = _open_stream()
        self._t0 = time.monotonic()
        self._task_started: dict[str, float] = {}

    # ---- output ---------------------------------------------------------------------------
    def _emit(self, event: str, **fields: Any) -> None:
        if self._out is None:
            return
        record = {"event": event, "t": round(time.monotonic() - self._t0, 3), **fields}
        try:
            self._out.write(json.dumps(record, default=str) + "\n")
            self._out.flush()
        except OSError:  # the reader went away; the playbook must not fail for it
            self._out = None

    # ---- playbook and tasks -----------------------------------------------------------------
    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._t0 = time.monotonic()
        self._emit("playbook_start", playbook=os.path.basename(playbook._file_name))

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task_started[task._uuid] = time.monotonic()
        self._emit("task_start", task=_name(task), role=_role(task))

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._task_started[task._uuid] = time.monotonic()
        self._emit("task_start", task=_name(task), role=_role(task), handler=True)

    # ---- results ------------------------------------------------------------------------------
    def _result(self, result: Any, status: str) -> None:
        task = result._task
        started = self._task_started.get(task._uuid, time.monotonic())
        fields: dict[str, Any] = {
            "host": result._host.get_name(),
            "task": _name(task),
            "status": status,
            "changed": bool(result._result.get("changed", False)),
            "elapsed": round(time.monotonic() - started, 3),
        }
        if status in ("failed", "unreachable") and not _no_log(result):
            msg = failure_message(result._result)
            if msg:
                fields["msg"] = msg
        self._emit("task_result", **fields)

    def v2_runner_on_ok(self, result: Any) -> None:
        changed = bool(result._result.get("changed", False))
        self._result(result, "changed" if changed else "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = {}
        for host in sorted(stats.processed):
            s = stats.summarize(host)
            # summarize() says "failures"; the stream says "failed", like the task results.
            hosts[host] = {"ok": s.get("ok", 0), "changed": s.get("changed", 0),
                           "failed": s.get("failures", 0), "skipped": s.get("skipped", 0),
                           "unreachable": s.get("unreachable", 0),
                           "rescued": s.get("rescued", 0), "ignored": s.get("ignored", 0)}
        self._emit("recap", hosts=hosts)


def _name(task: Any) -> str:
    """The task's own name, without Ansible's "role : " prefix."""
    return str(task.name or task.get_name()).strip()


def _role(task: Any) -> str | None:
    role = getattr(task, "_role", None)
    return role.get_name() if role is not None else None


def _no_log(result: Any) -> bool:
    return bool(result._result.get("_ansible_no_log") or getattr(result._task, "no_log", False))


def failure_message(res: dict[str, Any]) -> str:
    """The reason a task failed, short: its msg, else the tail of stderr (commands)."""
    parts = []
    msg = res.get("msg")
    if msg:
        parts.append(str(msg).strip())
    stderr = str(res.get("stderr") or "").strip()
    if stderr:
        parts.append("stderr: " + " | ".join(stderr.splitlines()[-5:]))
    elif res.get("rc") not in (None, 0):
        stdout = str(res.get("stdout") or "").strip()
        if stdout:
            parts.append("stdout: " + " | ".join(stdout.splitlines()[-5:]))
    text = "; ".join(parts)
    return text if len(text) <= MAX_MSG else text[: MAX_MSG - 3] + "..."


def _open_stream() -> Any:
    fd = os.environ.get("HARBORCTL_EVENTS_FD")
    if fd and fd.isdigit():
        try:
            return os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", closefd=False)
        except OSError:
            return None
    path = os.environ.get("HARBORCTL_EVENTS_FILE")
    if path:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        return os.fdopen(os.open(path, flags, 0o600), "a", buffering=1, encoding="utf-8")
    return None
