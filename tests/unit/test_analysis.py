"""Gate statistics: exact binomial bounds, rate verdicts, the CUSUM and the shift test."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from proxy.control.analysis import (
    BREACH_ALPHA,
    CUSUM_H,
    CUSUM_SHIFT,
    PASS_ALPHA,
    Cusum,
    Finding,
    ShiftTest,
    Verdict,
    judge_latency_increase,
    judge_rate,
    judge_rate_increase,
    lower_bound,
    mann_whitney_binned,
    overall,
    upper_bound,
)

RANK = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.BREACH: 2}
ALPHAS = st.sampled_from([PASS_ALPHA, PASS_ALPHA / 2, BREACH_ALPHA, BREACH_ALPHA / 2, 0.2])
LIMITS = st.floats(min_value=1e-4, max_value=0.5, allow_nan=False)


@st.composite
def counts(draw: st.DrawFn, max_trials: int = 20_000) -> tuple[int, int]:
    """(hits, trials) with 0 <= hits <= trials."""
    trials = draw(st.integers(min_value=0, max_value=max_trials))
    hits = draw(st.integers(min_value=0, max_value=trials))
    return hits, trials


# --- exact bounds ---------------------------------------------------------------------

TABLE = [(0, 0), (0, 1), (1, 1), (0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (0, 100),
         (3, 100), (50, 100), (100, 100), (7, 1000), (0, 5000), (25, 5000), (4999, 5000)]


def _scipy_upper(x: int, n: int, alpha: float) -> float:
    return 1.0 if n == 0 or x == n else float(stats.beta.ppf(1 - alpha, x + 1, n - x))


def _scipy_lower(x: int, n: int, alpha: float) -> float:
    return 0.0 if n == 0 or x == 0 else float(stats.beta.ppf(alpha, x, n - x + 1))


@pytest.mark.parametrize("alpha", [PASS_ALPHA, PASS_ALPHA / 2, BREACH_ALPHA])
@pytest.mark.parametrize(("x", "n"), TABLE)
def test_bounds_equal_scipy_clopper_pearson(x: int, n: int, alpha: float) -> None:
    assert upper_bound(x, n, alpha) == pytest.approx(_scipy_upper(x, n, alpha), rel=1e-9)
    assert lower_bound(x, n, alpha) == pytest.approx(_scipy_lower(x, n, alpha), rel=1e-9,
                                                     abs=1e-300)


@pytest.mark.parametrize("n", [1, 2, 10, 100, 5000])
def test_bounds_closed_forms_at_the_edges(n: int) -> None:
    # No hits: the upper bound solves (1-p)^n = alpha; all hits: the lower bound p^n = alpha.
    assert upper_bound(0, n, 0.05) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert lower_bound(n, n, 0.05) == pytest.approx(0.05 ** (1 / n), rel=1e-9)
    assert lower_bound(0, n, 0.05) == 0.0
    assert upper_bound(n, n, 0.05) == 1.0


def test_bounds_with_no_trials_are_vacuous() -> None:
    assert upper_bound(0, 0, 0.05) == 1.0
    assert lower_bound(0, 0, 0.05) == 0.0


def test_bounds_fixed_vectors() -> None:
    # The rule of three: 0 of n at 95% is about 3/n.
    assert upper_bound(0, 300, 0.05) == pytest.approx(3 / 300, rel=0.01)
    assert upper_bound(0, 300, 0.05) == pytest.approx(0.009936, abs=1e-6)
    assert lower_bound(50, 100, 0.025) == pytest.approx(0.398321, abs=1e-6)
    assert upper_bound(50, 100, 0.025) == pytest.approx(0.601679, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(counts(max_trials=100_000), ALPHAS)
def test_bounds_bracket_the_observed_rate(xn: tuple[int, int], alpha: float) -> None:
    x, n = xn
    assume(n > 0)
    low, high = lower_bound(x, n, alpha), upper_bound(x, n, alpha)
    assert 0.0 <= low <= x / n <= high <= 1.0


@settings(max_examples=200, deadline=None)
@given(counts(max_trials=100_000), ALPHAS)
def test_bounds_monotone_in_hits(xn: tuple[int, int], alpha: float) -> None:
    x, n = xn
    assume(x < n)
    assert lower_bound(x, n, alpha) <= lower_bound(x + 1, n, alpha)
    assert upper_bound(x, n, alpha) <= upper_bound(x + 1, n, alpha)


# --- judge_rate -----------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.data(), LIMITS, st.integers(min_value=1, max_value=2000))
def test_more_errors_never_turn_a_breach_into_a_pass(
        data: st.DataObject, limit: float, min_trials: int) -> None:
    trials = data.draw(st.integers(min_value=0, max_value=20_000), label="trials")
    hits = data.draw(st.integers(min_value=0, max_value=trials), label="hits")
    hits2 = data.draw(st.integers(min_value=hits, max_value=trials), label="hits2")
    a = judge_rate("error_rate", hits, trials, limit, min_trials)
    b = judge_rate("error_rate", hits2, trials, limit, min_trials)
    assert RANK[a.verdict] <= RANK[b.verdict], (a, b)


@settings(max_examples=300, deadline=None)
@given(counts(), LIMITS, st.integers(min_value=1, max_value=2000))
def test_judge_rate_verdicts_are_justified(xn: tuple[int, int], limit: float,
                                          min_trials: int) -> None:
    hits, trials = xn
    f = judge_rate("error_rate", hits, trials, limit, min_trials)
    assert f.limit == limit
    assert f.observed == (hits / trials if trials else 0.0)
    if f.verdict is Verdict.PASS:
        assert trials >= min_trials
        assert upper_bound(hits, trials, PASS_ALPHA) < limit
    elif f.verdict is Verdict.BREACH:
        assert lower_bound(hits, trials, BREACH_ALPHA) > limit
    else:
        assert lower_bound(hits, trials, BREACH_ALPHA) <= limit
        assert trials < min_trials or upper_bound(hits, trials, PASS_ALPHA) >= limit


def test_pass_needs_min_trials() -> None:
    # 0 of 99: the 95% upper bound (~3%) is under 5%, but 99 < 100 requests.
    assert upper_bound(0, 99, PASS_ALPHA) < 0.05
    f = judge_rate("error_rate", 0, 99, 0.05, 100)
    assert f.verdict is Verdict.INCONCLUSIVE
    assert "only 99 of 100" in f.detail
    assert judge_rate("error_rate", 0, 100, 0.05, 100).verdict is Verdict.PASS


def test_thin_traffic_is_inconclusive_not_breach() -> None:
    cusum = Cusum.for_limit(0.01).update(3, 2)
    assert not cusum.alarm
    for c in (None, cusum):
        f = judge_rate("error_rate", 2, 3, 0.01, 100, c)
        assert f.verdict is Verdict.INCONCLUSIVE, f
        assert f.observed == pytest.approx(2 / 3)


def test_judge_rate_fixed_vectors() -> None:
    assert judge_rate("e", 0, 0, 0.01, 1).verdict is Verdict.INCONCLUSIVE
    assert judge_rate("e", 10, 10_000, 0.01, 500).verdict is Verdict.PASS
    assert judge_rate("e", 100, 10_000, 0.01, 500).verdict is Verdict.INCONCLUSIVE
    breach = judge_rate("e", 300, 10_000, 0.01, 500)
    assert breach.verdict is Verdict.BREACH
    assert "lower bound" in breach.detail


def test_cusum_alarm_breaches_whatever_the_counts() -> None:
    alarmed = Cusum(0.01, 0.1, CUSUM_H, CUSUM_H)
    f = judge_rate("error_rate", 0, 10_000, 0.01, 100, alarmed)
    assert f.verdict is Verdict.BREACH
    assert "CUSUM" in f.detail
    quiet = Cusum(0.01, 0.1, CUSUM_H, CUSUM_H - 1e-9)
    assert judge_rate("error_rate", 0, 10_000, 0.01, 100, quiet).verdict is Verdict.PASS


def test_finding_to_dict() -> None:
    d = judge_rate("error_rate", 1, 10, 0.5, 100).to_dict()
    assert d["gate"] == "error_rate"
    assert d["verdict"] == "inconclusive"
    assert d["observed"] == 0.1
    assert d["limit"] == 0.5


# --- CUSUM ----------------------------------------------------------------------------

def _cusum_at(limit: float, s: float) -> Cusum:
    base = Cusum.for_limit(limit)
    return Cusum(base.p0, base.p1, CUSUM_H, s)


def _cusums() -> st.SearchStrategy[Cusum]:
    return st.builds(_cusum_at, st.floats(min_value=0.0, max_value=0.6, allow_nan=False),
                     st.floats(min_value=0.0, max_value=30.0, allow_nan=False))


@given(_cusums(), st.integers(min_value=-5, max_value=10))
def test_cusum_zero_trials_is_identity(c: Cusum, hits: int) -> None:
    assert c.update(0, hits) == c
    assert c.update(-1, 0) == c


@given(_cusums(), st.lists(counts(max_trials=200), max_size=30))
def test_cusum_never_negative(c: Cusum, batches: list[tuple[int, int]]) -> None:
    for hits, trials in batches:
        c = c.update(trials, hits)
        assert c.s >= 0.0
        assert c.alarm == (c.s >= c.h)


@given(st.floats(min_value=0.0, max_value=40.0, allow_nan=False),
       st.floats(min_value=0.5, max_value=20.0, allow_nan=False))
def test_cusum_alarm_iff_s_reaches_h(s: float, h: float) -> None:
    c = Cusum(0.01, 0.1, h, s)
    assert c.alarm == (s >= h)
    assert Cusum(0.01, 0.1, h, h).alarm
    assert not c.reset().alarm
    assert c.reset().s == 0.0


@given(_cusums(), st.data())
def test_cusum_monotone_in_hits(c: Cusum, data: st.DataObject) -> None:
    trials = data.draw(st.integers(min_value=1, max_value=500), label="trials")
    hits = data.draw(st.integers(min_value=0, max_value=trials), label="hits")
    hits2 = data.draw(st.integers(min_value=hits, max_value=trials), label="hits2")
    assert c.update(trials, hits2).s >= c.update(trials, hits).s


@given(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
def test_cusum_for_limit_caps(limit: float) -> None:
    c = Cusum.for_limit(limit)
    assert 0 < c.p0 <= 0.5
    assert c.p0 < c.p1 <= 0.75
    assert c.h == CUSUM_H and c.s == 0.0
    if 1e-9 <= limit <= 0.075:
        assert c.p0 == limit
        assert c.p1 == pytest.approx(limit * CUSUM_SHIFT)
    # At the limit itself the drift is negative: the CUSUM does not creep up on its own.
    up, down = math.log(c.p1 / c.p0), math.log((1 - c.p1) / (1 - c.p0))
    assert c.p0 * up + (1 - c.p0) * down < 0


def test_cusum_for_limit_fixed_vectors() -> None:
    c = Cusum.for_limit(0.01)
    assert (c.p0, c.h, c.s) == (0.01, CUSUM_H, 0.0)
    assert c.p1 == pytest.approx(0.1)
    assert Cusum.for_limit(0.0).p0 == 1e-9
    assert Cusum.for_limit(0.2).p1 == 0.75
    assert Cusum.for_limit(0.9) == Cusum(0.5, 0.75, CUSUM_H, 0.0)


@settings(max_examples=300, deadline=None)
@given(_cusums(), st.lists(st.booleans(), max_size=300))
def test_cusum_batch_is_at_least_any_per_request_replay(c: Cusum,
                                                        outcomes: list[bool]) -> None:
    batch = c.update(len(outcomes), sum(outcomes))
    seq = c
    for hit in outcomes:
        seq = seq.update(1, int(hit))
    assert batch.s >= seq.s - 1e-9
    # The batch is exactly the worst order: misses first, then the hits.
    worst = c
    for hit in sorted(outcomes):
        worst = worst.update(1, int(hit))
    assert batch.s == pytest.approx(worst.s, rel=1e-9, abs=1e-9)


def test_cusum_batching_does_not_hide_a_burst_at_the_end() -> None:
    c = Cusum.for_limit(0.01)
    seq = c
    for _ in range(100):
        seq = seq.update(1, 0)
    seq = seq.update(1, 1)
    assert seq.s == pytest.approx(math.log(10))
    assert c.update(101, 1).s >= seq.s


def test_cusum_catches_a_sudden_fault_within_a_second() -> None:
    # 100 requests/s in 250 ms ticks; the error rate jumps from 0 to 20%.
    c = Cusum.for_limit(0.01)
    for _ in range(40):
        c = c.update(25, 0)
    ticks = 0
    while not c.alarm:
        c = c.update(25, 5)
        ticks += 1
    assert ticks <= 4
    assert judge_rate("error_rate", 5 * ticks, 1000 + 25 * ticks, 0.01, 100,
                      c).verdict is Verdict.BREACH


def test_no_false_breach_at_half_the_limit() -> None:
    rng = np.random.default_rng(20240607)
    c = Cusum.for_limit(0.01)
    hits_total = trials_total = 0
    peak = 0.0
    for hits in rng.binomial(25, 0.005, size=2000):
        c = c.update(25, int(hits))
        hits_total += int(hits)
        trials_total += 25
        peak = max(peak, c.s)
        f = judge_rate("error_rate", hits_total, trials_total, 0.01, 500, c)
        assert f.verdict is not Verdict.BREACH, (f, trials_total)
    assert hits_total > 0 and peak > 0  # the test actually exercised the CUSUM
    assert peak < CUSUM_H
    # 50k requests at 0.5% is confidently under a 1% limit.
    assert judge_rate("error_rate", hits_total, trials_total, 0.01, 500,
                      c).verdict is Verdict.PASS


# --- Mann-Whitney with ties, Hodges-Lehmann -------------------------------------------

def _binned(new: list[int], original: list[int], bins: int) -> tuple[
        npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    values = np.arange(bins, dtype=np.float64)
    a = np.bincount(np.asarray(new, dtype=np.int64), minlength=bins).astype(np.float64)
    b = np.bincount(np.asarray(original, dtype=np.int64), minlength=bins).astype(np.float64)
    return values, a, b


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=80),
       st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=80))
def test_mann_whitney_binned_equals_scipy(new: list[int], original: list[int]) -> None:
    assume(len(set(new) | set(original)) > 1)  # all tied: no variance, scipy gives nan
    values, a, b = _binned(new, original, 13)
    got = mann_whitney_binned(values, a, b)
    want = stats.mannwhitneyu(new, original, alternative="greater", method="asymptotic")
    assert got.u == pytest.approx(float(want.statistic), abs=1e-9)
    assert got.p_value == pytest.approx(float(want.pvalue), rel=1e-9, abs=1e-15)
    assert (got.n_new, got.n_original) == (len(new), len(original))


def test_mann_whitney_binned_fixed_vector() -> None:
    new = [3, 3, 4, 5, 5, 5, 6, 7, 7, 9]
    original = [1, 2, 3, 3, 3, 4, 4, 5, 6, 6]
    values, a, b = _binned(new, original, 10)
    got = mann_whitney_binned(values, a, b)
    want = stats.mannwhitneyu(new, original, alternative="greater", method="asymptotic")
    assert got.u == float(want.statistic) == 74.5  # by hand: 7 + 6 + 22.5 + 9 + 20 + 10
    assert got.p_value == pytest.approx(float(want.pvalue), rel=1e-12)
    assert got.p_value == pytest.approx(0.0327794, abs=1e-7)


def _normal_histograms(d: float, seed: int) -> tuple[
        npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    original = rng.normal(0.100, 0.02, 4000)
    new = rng.normal(0.100 + d, 0.02, 4000)
    edges = np.arange(0.0, 0.3 + 1e-9, 0.0005)
    values = (edges[:-1] + edges[1:]) / 2
    a, _ = np.histogram(new, edges)
    b, _ = np.histogram(original, edges)
    return values, a.astype(np.float64), b.astype(np.float64)


@pytest.mark.parametrize("d", [-0.01, 0.0, 0.005, 0.02])
def test_hodges_lehmann_shift_of_offset_normals(d: float) -> None:
    test = mann_whitney_binned(*_normal_histograms(d, seed=7))
    assert test.shift == pytest.approx(d, abs=0.002)
    if d >= 0.005:
        assert test.p_value < BREACH_ALPHA
    if d < 0:
        assert test.p_value > 0.5


def test_mann_whitney_empty_side() -> None:
    values = np.arange(5, dtype=np.float64)
    some = np.array([1, 2, 3, 0, 1], dtype=np.float64)
    none = np.zeros(5, dtype=np.float64)
    for a, b in ((some, none), (none, some), (none, none)):
        t = mann_whitney_binned(values, a, b)
        assert t.p_value == 1.0
        assert t.u == 0.0 and t.shift == 0.0
        assert (t.n_new, t.n_original) == (int(a.sum()), int(b.sum()))


# --- comparisons against original -----------------------------------------------------

def test_judge_rate_increase_breach() -> None:
    f = judge_rate_increase("error_rate_increase", (200, 1000), (10, 1000), 0.01, 100)
    assert f.verdict is Verdict.BREACH
    assert f.observed == pytest.approx(0.19)
    assert f.limit == 0.01


def test_judge_rate_increase_pass() -> None:
    f = judge_rate_increase("error_rate_increase", (10, 10_000), (10, 10_000), 0.01, 100)
    assert f.verdict is Verdict.PASS
    assert f.observed == 0.0


@pytest.mark.parametrize(("new", "original", "min_trials"), [
    ((2, 20), (0, 20), 10),  # too few to tell
    ((10, 10_000), (10, 10_000), 20_000),  # would pass, but under min_trials
    ((5, 10), (0, 0), 1),  # no original traffic: no comparison
    ((0, 0), (5, 10), 1),
    ((0, 0), (0, 0), 1),
])
def test_judge_rate_increase_inconclusive(new: tuple[int, int], original: tuple[int, int],
                                          min_trials: int) -> None:
    f = judge_rate_increase("error_rate_increase", new, original, 0.01, min_trials)
    assert f.verdict is Verdict.INCONCLUSIVE


def _shift(p: float, shift: float, n: int = 1000) -> ShiftTest:
    return ShiftTest(u=0.0, p_value=p, shift=shift, n_new=n, n_original=n)


@pytest.mark.parametrize(("test", "verdict"), [
    (_shift(1e-9, 0.05), Verdict.BREACH),  # significant and material
    (_shift(1e-9, 0.005), Verdict.PASS),  # significant but under 10% of 100 ms
    (_shift(0.5, 0.05), Verdict.PASS),  # not significant
    (_shift(0.01, 0.05), Verdict.INCONCLUSIVE),  # suggestive, not yet a breach
    (_shift(0.5, 0.0, n=10), Verdict.INCONCLUSIVE),  # too few samples
    (_shift(1e-9, 0.05, n=10), Verdict.BREACH),  # a breach needs no minimum
])
def test_judge_latency_increase(test: ShiftTest, verdict: Verdict) -> None:
    f = judge_latency_increase("latency_increase", test, baseline=0.1, allowed=0.1,
                               min_trials=100)
    assert f.verdict is verdict
    assert f.limit == pytest.approx(0.01)
    assert f.observed == test.shift


def test_judge_latency_increase_end_to_end() -> None:
    slow = mann_whitney_binned(*_normal_histograms(0.02, seed=3))
    same = mann_whitney_binned(*_normal_histograms(0.0, seed=3))
    assert judge_latency_increase("lat", slow, 0.1, 0.1, 100).verdict is Verdict.BREACH
    assert judge_latency_increase("lat", same, 0.1, 0.1, 100).verdict is Verdict.PASS


def _finding(v: Verdict) -> Finding:
    return Finding("g", v, 0.0, 0.0, "")


@pytest.mark.parametrize(("verdicts", "want"), [
    ([], Verdict.INCONCLUSIVE),
    ([Verdict.PASS], Verdict.PASS),
    ([Verdict.PASS, Verdict.PASS], Verdict.PASS),
    ([Verdict.PASS, Verdict.INCONCLUSIVE], Verdict.INCONCLUSIVE),
    ([Verdict.INCONCLUSIVE], Verdict.INCONCLUSIVE),
    ([Verdict.PASS, Verdict.BREACH], Verdict.BREACH),
    ([Verdict.INCONCLUSIVE, Verdict.BREACH, Verdict.PASS], Verdict.BREACH),
])
def test_overall(verdicts: list[Verdict], want: Verdict) -> None:
    assert overall([_finding(v) for v in verdicts]) is want
