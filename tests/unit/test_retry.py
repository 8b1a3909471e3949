"""Retry after a rollback or abort, and what a stopped rollout says about itself."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.control.controller import STOPPED, ActionError, Controller
from proxy.control.state import RolloutState, Status
from proxy.routing.variant import NEW
from tests.unit.test_controller import make, run, status


def breach_in_ramp() -> tuple[Controller, float]:
    """A rollout advanced to ramp (10%), then rolled back by the controller on errors."""
    c, tel, clock = make()
    c.advance(clock.t, "ops")
    run(c, tel, clock, 30, rps=100)
    clock.t += 0.25
    tel.feed(NEW, 25, 20)
    assert [e.kind for e in c.tick(clock.t)] == ["rollback"]
    return c, clock.t


def test_a_breach_records_what_it_stopped_and_stops_the_phase_clock() -> None:
    c, when = breach_in_ramp()
    stopped = c.state.stopped
    assert stopped["kind"] == "rollback" and stopped["actor"] == "controller"
    assert (stopped["phase"], stopped["phase_name"], stopped["weight"]) == (1, "ramp", 10.0)
    assert stopped["time"] == when
    assert stopped["elapsed_s"] == pytest.approx(30.25)
    assert "error_rate" in stopped["reason"]
    assert c.weight_bp == 0 and c.mirror_bp == 0


def test_retry_starts_the_plan_again_at_phase_zero() -> None:
    c, when = breach_in_ramp()
    c.rollback(when, "ops", "bad users", mode="targeted", users=["u1"])
    events = c.retry(when + 60, "alice", "fixed the database")
    assert [e.kind for e in events] == ["retry"]
    e = events[0]
    assert (e.from_, e.to, e.reason, e.actor) == ("rolled-back@0%", "progressing@1%",
                                                  "fixed the database", "alice")
    assert e.evidence["stopped"]["phase_name"] == "ramp"  # the history stays in the event
    st_ = c.state
    assert (status(c), st_.phase, c.weight_bp, st_.phase_started) == (
        Status.PROGRESSING, 0, 100, when + 60)
    assert st_.stopped == {} and st_.deny_users == [] and not st_.approved
    assert c.allowed() == (frozenset(), frozenset())
    assert c.dirty


def test_retry_after_abort_and_after_a_finished_gradual_rollback() -> None:
    c, _tel, clock = make()
    c.advance(clock.t, "ops")
    c.abort(clock.t + 5, "ops", "wrong build")
    assert c.state.stopped["kind"] == "abort" and c.state.stopped["weight"] == 10.0
    c.retry(clock.t + 10, "ops")
    assert status(c) is Status.PROGRESSING and c.weight_bp == 100

    c, _tel, clock = make()
    c.advance(clock.t, "ops")
    c.rollback(clock.t + 1, "ops", "slowly", mode="gradual", interval=5.0)
    for step in range(5):
        c.tick(clock.t + 1 + 5 * (step + 1))
    assert status(c) is Status.ROLLED_BACK
    # The record is of the gradual rollback's start: the phase and weight it left.
    assert (c.state.stopped["kind"], c.state.stopped["weight"]) == ("rollback-gradual", 10.0)
    assert c.state.stopped["time"] == clock.t + 1
    c.retry(clock.t + 60, "ops")
    assert c.state.rollback_weights == [] and c.weight_bp == 100


@pytest.mark.parametrize("setup", ["progressing", "paused", "complete", "needs-attention",
                                   "rolling-back"])
def test_retry_is_refused_unless_rolled_back_or_aborted(setup: str) -> None:
    c, _tel, clock = make()
    c.advance(clock.t, "ops")
    if setup == "paused":
        c.pause(clock.t, "ops")
    elif setup == "complete":
        c.promote(clock.t, "ops")
    elif setup == "needs-attention":
        c.state.status = Status.NEEDS_ATTENTION
    elif setup == "rolling-back":
        c.rollback(clock.t, "ops", "slowly", mode="gradual", interval=60.0)
    before = c.state.to_dict()
    with pytest.raises(ActionError, match=f"cannot retry while {setup}"):
        c.retry(clock.t, "ops")
    assert c.state.to_dict() == before


def test_the_stopped_record_is_saved_and_read_back_and_old_files_still_read() -> None:
    c, _ = breach_in_ramp()
    saved = c.state.to_dict()
    assert RolloutState.from_dict(saved).stopped == c.state.stopped
    del saved["stopped"]  # a file written before retry existed
    assert RolloutState.from_dict(saved).stopped == {}


ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("advance", {}), ("promote", {}), ("pause", {}), ("resume", {}), ("abort", {}),
    ("retry", {}), ("rollback", {"reason": "r"}),
    ("rollback", {"reason": "r", "mode": "gradual", "interval": 1.0}),
    ("rollback", {"reason": "r", "mode": "targeted", "users": ["u"]}),
    ("tick", {}),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(range(len(ACTIONS))), max_size=25))
def test_stopped_is_recorded_exactly_while_new_is_stopped(picks: list[int]) -> None:
    """Over any sequence of actions: a stop record exists iff the status is a stop, the
    recorded weight is one the plan had, and retry always lands on phase 0."""
    c, _tel, clock = make()
    weights = {p.weight_bp / 100 for p in c.rollout.phases}
    for i in picks:
        name, kwargs = ACTIONS[i]
        clock.t += 2
        try:
            if name == "tick":
                c.tick(clock.t)
            else:
                getattr(c, name)(clock.t, "ops", **kwargs)
        except ActionError:
            continue
        assert bool(c.state.stopped) == (c.state.status in STOPPED)
        if c.state.stopped:
            assert c.state.stopped["weight"] in weights
        if name == "retry":
            assert (c.state.phase, c.weight_bp) == (0, 100)
