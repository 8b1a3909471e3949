"""What each gate needs before it can pass: the floors ``veer check`` prints, checked against
the very judge the controller uses."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from proxy.config.plan import Gates, Phase, Rollout
from proxy.control.analysis import PASS_ALPHA, Verdict, judge_rate, judge_rate_increase
from proxy.control.requirements import phase_needs, plan_timing, trials_to_pass


def test_the_numbers_the_readme_quotes() -> None:
    assert trials_to_pass(0.01, 1) == 299  # a p99 gate: 1% of requests may be slower
    assert trials_to_pass(0.001, 1) == 2995  # a 0.1% error-rate gate, "about 3,000"
    assert trials_to_pass(0.01, 500) == 500  # min_requests is a floor of its own
    assert trials_to_pass(0.0, 1) is None  # no bound is ever under 0


@given(st.floats(min_value=1e-4, max_value=0.9), st.integers(min_value=1, max_value=5000))
def test_the_floor_is_exactly_where_the_controllers_judge_first_passes(
        limit: float, min_trials: int) -> None:
    n = trials_to_pass(limit, min_trials)
    assert n is not None
    assert judge_rate("g", 0, n, limit, min_trials).verdict is Verdict.PASS
    assert judge_rate("g", 0, n - 1, limit, min_trials).verdict is not Verdict.PASS
    # A failure only ever raises it: the bound alone then needs more than it did.
    bound_only = trials_to_pass(limit, 1)
    assert bound_only is not None
    assert judge_rate("g", 1, bound_only, limit, 1).verdict is not Verdict.PASS


@given(st.floats(min_value=1e-3, max_value=0.5), st.integers(min_value=1, max_value=2000))
def test_the_increase_gate_floor_matches_its_judge(allowed: float, min_trials: int) -> None:
    n = trials_to_pass(allowed, min_trials, PASS_ALPHA / 2)
    assert n is not None
    original = (0, max(n, min_trials) * 9)
    assert judge_rate_increase("g", (0, n), original, allowed, min_trials).verdict \
        is Verdict.PASS
    assert judge_rate_increase("g", (0, n - 1), original, allowed, min_trials).verdict \
        is not Verdict.PASS


def test_phase_needs_name_each_gate_and_the_timing_adds_up() -> None:
    canary = Phase("canary", 100, 600.0, Gates(max_error_rate=0.01, max_p99=0.2,
                                               min_requests=100))
    ramp = Phase("ramp", 1000, 1800.0, Gates(max_error_rate=0.001, max_p999=0.5))
    full = Phase("full", 10000)
    texts = [n.text for n in phase_needs(canary)]
    assert texts == ["max_error_rate 1% can pass after >= 299 requests on new with no error",
                     "max_p99 200ms at 99% can pass after >= 299 requests on new with none "
                     "slower"]
    assert [n.requests for n in phase_needs(ramp)] == [2995, 2995]
    timing = plan_timing(Rollout("r", (canary, ramp, full)), rate=2.0)
    assert [t.requests for t in timing] == [299, 2995, 100]
    assert [t.earliest for t in timing] == [600.0, 1800.0, 50.0]  # durations, then 100/2
    assert timing[-1].total == 2450.0
    slow = plan_timing(Rollout("r", (canary, ramp, full)), rate=1.0)
    assert slow[1].earliest == 2995.0 and math.isclose(slow[-1].total or 0, 600 + 2995 + 100)


def test_a_gate_that_can_never_pass_says_so() -> None:
    never = Phase("p", 10000, gates=Gates(max_error_rate=0.0))
    assert phase_needs(never)[0].requests is None
    assert "can never pass" in phase_needs(never)[0].text
    assert plan_timing(Rollout("r", (never,)), 10.0)[0].earliest is None
