"""The upgrade journal, the resume rule and the rollback decision table (pure)."""

from __future__ import annotations

import pytest

from harbor_ops.upgrade import state as j
from harbor_ops.upgrade import steps as st

RUN = "0123456789abcdef"


def line(step: str, event: str, t: float, hop: int = 1, msg: str = "", run: str = RUN,
         src: str = "2.14.4", tgt: str = "2.15.2") -> str:
    return j.journal_line(run=run, hop=hop, source=src, target=tgt, step=step, event=event,
                          t=t, msg=msg)


def through(last: str, event: str = "end", hop: int = 1) -> list[str]:
    """A journal of hop ``hop`` whose steps ran up to ``last`` (ending in ``event``)."""
    out, t = [], 100.0
    for s in st.HOP_STEPS:
        out.append(line(s.name, "begin", t, hop))
        t += 1
        if s.name == last:
            if event != "begin":
                out.append(line(s.name, event, t, hop, msg="boom" if event == "fail" else ""))
            return out
        out.append(line(s.name, "end", t, hop))
        t += 1
    return out


def test_foreign_or_broken_lines_are_ignored() -> None:
    lines = ["not json", "{}", '{"v": 1, "run": "../../etc", "hop": 1}',
             line("stop", "begin", 1.0).replace('"stop"', '"rm -rf /"'),
             line("stop", "begin", 1.0).replace('"2.14.4"', '"2.14.4; reboot"')]
    assert j.fold(lines).outcome == j.NONE
    assert j.decide(j.fold(lines)).action == "fresh"


def test_a_finished_hop_is_done_and_plans_afresh() -> None:
    s = j.fold(through("finish"))
    assert s.outcome == j.DONE
    assert j.decide(s).action == "fresh"


@pytest.mark.parametrize("last", ["backup", "unpack", "load_images", "configure", "count_rows",
                                  "stop", "snapshot"])
def test_interrupted_before_the_data_can_change_resumes_at_that_step(last: str) -> None:
    d = j.decide(j.fold(through(last, "begin")))
    assert d.action == "resume"
    assert d.steps[0] == last and d.steps[-1] == "finish"


def test_a_complete_snapshot_resumes_at_switch() -> None:
    d = j.decide(j.fold(through("snapshot", "end")))
    assert (d.action, d.steps[0]) == ("resume", "switch")


@pytest.mark.parametrize(("last", "event"), [("switch", "begin"), ("switch", "end"),
                                             ("start", "begin"), ("start", "end"),
                                             ("gate", "begin")])
def test_interrupted_after_the_switch_rolls_back_then_retries(last: str, event: str) -> None:
    d = j.decide(j.fold(through(last, event)))
    assert d.action == "rollback" and d.retry_after
    assert d.steps == tuple(s.name for s in st.ROLLBACK_STEPS)


def test_a_passed_gate_only_finishes() -> None:
    assert j.decide(j.fold(through("gate", "end"))).steps == ("finish",)
    assert j.decide(j.fold(through("finish", "begin"))).steps == ("finish",)


def test_a_failed_prepare_step_changed_nothing() -> None:
    s = j.fold(through("load_images", "fail"))
    assert s.outcome == j.FAILED and s.failed_step == "load_images" and s.failure == "boom"
    assert j.decide(s).action == "fresh"


def test_a_failure_whose_rollback_never_began_is_rolled_back_without_retry() -> None:
    s = j.fold(through("start", "fail"))
    d = j.decide(s)
    assert (d.action, d.retry_after) == ("rollback", False)
    assert d.steps == tuple(x.name for x in st.ROLLBACK_STEPS)


def test_rollback_outcomes() -> None:
    lines = through("gate", "fail")
    t = 200.0
    for s in st.ROLLBACK_STEPS:
        lines += [line(s.name, "begin", t), line(s.name, "end", t + 1)]
        t += 2
    s = j.fold(lines)
    assert s.outcome == j.ROLLED_BACK and s.failed_step == "gate"
    assert j.decide(s).action == "fresh"
    broken = through("gate", "fail") + [line("rb_stop", "begin", 300), line("rb_stop", "end", 301),
                                        line("rb_restore", "begin", 302),
                                        line("rb_restore", "fail", 303, msg="No space left")]
    s = j.fold(broken)
    assert s.outcome == j.ROLLBACK_FAILED
    d = j.decide(s)
    assert d.action == "rollback" and not d.retry_after
    interrupted = j.fold(broken[:-1])  # killed during rb_restore
    assert interrupted.window_open and j.decide(interrupted).action == "rollback"


@pytest.mark.parametrize(("failed", "undo"), [
    ("backup", ()), ("configure", ()), ("count_rows", ()),
    ("stop", ("rb_start", "rb_gate")), ("snapshot", ("rb_start", "rb_gate")),
    ("switch", tuple(s.name for s in st.ROLLBACK_STEPS)),
    ("start", tuple(s.name for s in st.ROLLBACK_STEPS)),
    ("gate", tuple(s.name for s in st.ROLLBACK_STEPS)),
    ("finish", ()),
])
def test_rollback_decision_table(failed: str, undo: tuple[str, ...]) -> None:
    assert j.rollback_steps(failed) == undo


def test_downtime_runs_from_stop_to_the_gate_that_closed_the_window() -> None:
    s = j.fold(through("finish"))
    stop = next(t for t in s.timings if t.name == "stop")
    gate = next(t for t in s.timings if t.name == "gate")
    assert st.downtime(s.timings, 1) == pytest.approx(gate.ended - stop.started)  # type: ignore[operator]
    assert st.downtime(j.fold(through("start", "begin")).timings, 1) is None
    assert st.downtime(s.timings, 2) is None


def test_a_new_run_replaces_the_old_one() -> None:
    old = through("gate", "fail")
    new = [line("backup", "begin", 500, run="fedcba9876543210")]
    s = j.fold(old + new)
    assert s.run == "fedcba9876543210" and s.failed_step is None and s.outcome == j.RUNNING


def test_unknown_step_names_are_bugs() -> None:
    with pytest.raises(ValueError, match="unknown upgrade step"):
        st.step("reboot")
