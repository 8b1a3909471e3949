"""Metric gates (pure): pass, breach and inconclusive from always-valid bounds, and what a
Prometheus answer means (one number, or a problem that can never pass)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from proxy.config.experiment import MetricGate
from proxy.control.analysis import Verdict
from proxy.control.experiment_stats import Sample
from proxy.control.metric_gates import judge_metric_gate, judge_polled_gate
from proxy.telemetry.prometheus import QueryError, value_of


def _s(values: list[float]) -> Sample:
    return Sample.of(np.array(values, dtype=np.float64))


def _normal(mean: float, sd: float, n: int, seed: int) -> Sample:
    return _s(list(np.random.default_rng(seed).normal(mean, sd, n)))


def test_a_gauge_max_passes_breaches_or_waits_on_its_recent_polls() -> None:
    gate = MetricGate("memory_bytes", source="prometheus", max=1e9, min_samples=3)
    assert judge_polled_gate(gate, [], [8e8] * 5).verdict is Verdict.PASS
    assert judge_polled_gate(gate, [], [2e9] * 5).verdict is Verdict.BREACH
    assert judge_polled_gate(gate, [], [8e8] * 2).verdict is Verdict.INCONCLUSIVE
    # one poll over the limit among the recent ones: not a pass, not yet a breach
    assert judge_polled_gate(gate, [], [8e8, 8e8, 1.2e9, 8e8]).verdict is Verdict.INCONCLUSIVE


def test_a_gauge_is_judged_by_what_it_reads_now_not_the_phase_average() -> None:
    """The review found the first version averaging every poll of the phase: memory at
    0.5 GB for 195 polls then 3 GB for 5 passed a 1 GB gate."""
    gate = MetricGate("memory_bytes", source="prometheus", max=1e9, min_samples=30)
    assert judge_polled_gate(gate, [], [5e8] * 195 + [3e9] * 5).verdict is Verdict.BREACH
    hits = MetricGate("cache_hit_rate", source="prometheus", min=0.6, min_samples=30)
    assert judge_polled_gate(hits, [], [0.9] * 190 + [0.1] * 10).verdict is Verdict.BREACH
    assert judge_polled_gate(hits, [], [0.9] * 190 + [0.1]).verdict is Verdict.INCONCLUSIVE


def test_a_gauge_relative_bound_reads_new_against_original_round_by_round() -> None:
    gate = MetricGate("memory_bytes", source="prometheus", max_increase=0.2, min_samples=3)
    assert judge_polled_gate(gate, [1e9] * 5, [1.1e9] * 5).verdict is Verdict.PASS
    assert judge_polled_gate(gate, [1e9] * 5, [1.5e9] * 5).verdict is Verdict.BREACH
    assert judge_polled_gate(gate, [], [1.5e9] * 5).verdict is Verdict.INCONCLUSIVE


def test_a_min_on_a_noisy_per_user_metric_needs_confidence_both_ways() -> None:
    gate = MetricGate("cache_hit_rate", min=0.6, min_samples=30)
    assert judge_metric_gate(gate, _s([]), _normal(0.8, 0.1, 500, 1)).verdict is Verdict.PASS
    assert judge_metric_gate(gate, _s([]), _normal(0.3, 0.1, 500, 2)).verdict is Verdict.BREACH
    assert judge_metric_gate(gate, _s([]), _normal(0.62, 0.3, 50, 3)).verdict \
        is Verdict.INCONCLUSIVE


def test_a_relative_increase_is_judged_on_the_lift_over_original() -> None:
    gate = MetricGate("cost", max_increase=0.05, min_samples=30)
    orig = _normal(1.0, 0.1, 2000, 4)
    assert judge_metric_gate(gate, orig, _normal(1.0, 0.1, 2000, 5)).verdict is Verdict.PASS
    assert judge_metric_gate(gate, orig, _normal(1.3, 0.1, 2000, 6)).verdict is Verdict.BREACH
    assert judge_metric_gate(gate, orig, _normal(1.05, 0.1, 2000, 7)).verdict \
        is Verdict.INCONCLUSIVE


def test_a_problem_is_inconclusive_never_a_pass() -> None:
    gate = MetricGate("memory_bytes", source="prometheus", max=1e9, min_samples=3)
    found = judge_polled_gate(gate, [], [1.0] * 10, "no data (the query returned no series)")
    assert found.verdict is Verdict.INCONCLUSIVE and "never a pass" in found.detail


def test_every_bound_of_one_gate_must_pass() -> None:
    gate = MetricGate("ratio", source="prometheus", max=0.9, min=0.5, min_samples=3)
    assert judge_polled_gate(gate, [], [0.7] * 5).verdict is Verdict.PASS
    assert judge_polled_gate(gate, [], [0.95] * 5).verdict is Verdict.BREACH
    assert judge_polled_gate(gate, [], [0.4] * 5).verdict is Verdict.BREACH


def _vector(*values: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1.0, v]} for v in values]}}


def test_a_prometheus_answer_is_one_finite_number_or_a_reason() -> None:
    assert value_of(_vector("42.5")) == 42.5
    assert value_of({"status": "success", "data": {"resultType": "scalar",
                                                   "result": [1.0, "3"]}}) == 3.0
    cases = [(_vector(), "no data"), (_vector("1", "2"), "2 series"),
             (_vector("NaN"), "not a finite number"), (_vector("+Inf"), "not a finite"),
             (_vector("x"), "not a number"),
             ({"status": "error", "error": "parse error"}, "parse error"),
             ({"status": "success", "data": {"resultType": "matrix", "result": []}},
              "unusable result type"), ([1, 2], "error")]
    for body, why in cases:
        with pytest.raises(QueryError) as info:
            value_of(body)
        assert why in str(info.value), (body, info.value)
