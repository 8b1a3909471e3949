"""Experiment statistics against scipy and the textbook, and the decisions read off them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special, stats

from proxy.config.experiment import Experiment, Metric
from proxy.control import experiment_stats as es
from proxy.control.experiments import KEEP, SHIP, STOP, decide, results
from proxy.routing.variant import NEW, ORIGINAL, VARIANTS, Variant
from proxy.telemetry.outcomes import Outcomes, user_id

TOL = 1e-12
Z = float(stats.norm.ppf(0.975))


def _sample(values: Sequence[float]) -> es.Sample:
    return es.Sample.of(np.array(values, dtype=np.float64))


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def _compare(orig: Sequence[float], new: Sequence[float], proportion: bool = False
             ) -> es.Comparison:
    cmp = es.compare(_sample(orig), _sample(new), proportion)
    assert cmp is not None
    return cmp


# --- fixed horizon: Welch's t for a mean -----------------------------------------------

_RNG = np.random.default_rng(20240611)
WELCH = [
    ([2.1, 3.4, 1.9, 5.6, 4.4, 3.3, 2.8], [3.9, 4.2, 5.1, 6.3, 4.8, 5.5, 3.7, 4.9]),
    ([0.92, 0.88, 0.95, 0.91, 0.89], [0.97, 0.93, 0.99, 0.96, 0.94, 0.98]),
    ([10.0, 12.0, 9.0, 11.0, 10.5, 9.5, 10.2, 11.8, 10.1, 9.9], [4.0, 18.0, 7.0, 22.0, 15.0]),
    ([1.0, 2.0], [1.5, 3.5, 2.0]),
    ([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]),  # equal means: p = 1
    ([120.0, 80.0, 95.0, 130.0], [60.0, 70.0, 65.0, 72.0, 68.0]),  # new lower
    (_RNG.normal(5.0, 2.0, 40).tolist(), _RNG.normal(5.6, 3.0, 55).tolist()),
    (_RNG.exponential(1.0, 300).tolist(), _RNG.exponential(1.1, 250).tolist()),
]


@pytest.mark.parametrize(("orig", "new"), WELCH)
def test_mean_p_value_and_fixed_interval_are_scipys_welch(orig: list[float],
                                                          new: list[float]) -> None:
    cmp = _compare(orig, new)
    want = stats.ttest_ind(new, orig, equal_var=False)
    ci = want.confidence_interval(0.95)
    assert _close(cmp.p_value, float(want.pvalue)), (cmp.p_value, want.pvalue)
    assert _close(cmp.fixed_ci[0], float(ci.low)) and _close(cmp.fixed_ci[1], float(ci.high))
    assert _close(cmp.difference, float(np.mean(new) - np.mean(orig)))
    se = math.sqrt(np.var(orig, ddof=1) / len(orig) + np.var(new, ddof=1) / len(new))
    assert _close(cmp.se, se)


# --- fixed horizon: two proportions ----------------------------------------------------

PROPORTIONS = [(120, 1000, 150, 1000), (30, 200, 45, 210), (5, 40, 12, 38),
               (500, 5000, 560, 5100), (90, 100, 80, 100), (1, 50, 0, 60)]


def _binary(hits: int, n: int) -> list[float]:
    return [1.0] * hits + [0.0] * (n - hits)


@pytest.mark.parametrize(("x_o", "n_o", "x_n", "n_n"), PROPORTIONS)
def test_proportion_p_value_is_uncorrected_chi_square_and_interval_is_wald(
        x_o: int, n_o: int, x_n: int, n_n: int) -> None:
    cmp = _compare(_binary(x_o, n_o), _binary(x_n, n_n), proportion=True)
    chi2 = stats.chi2_contingency([[x_o, n_o - x_o], [x_n, n_n - x_n]], correction=False)
    assert _close(cmp.p_value, float(chi2.pvalue)), (cmp.p_value, chi2.pvalue)
    p_o, p_n = x_o / n_o, x_n / n_n
    half = Z * math.sqrt(p_o * (1 - p_o) / n_o + p_n * (1 - p_n) / n_n)
    assert _close(cmp.difference, p_n - p_o)
    assert _close(cmp.fixed_ci[0], p_n - p_o - half)
    assert _close(cmp.fixed_ci[1], p_n - p_o + half)


# --- sample ratio mismatch -------------------------------------------------------------

@pytest.mark.parametrize(("units_o", "units_n", "share"), [
    (5000, 5050, 0.5), (5000, 5300, 0.5), (5000, 5400, 0.5), (900, 100, 0.1),
    (880, 120, 0.1), (10, 0, 0.5), (1, 1, 0.01), (123_456, 130_000, 0.5)])
def test_srm_is_scipys_chi_square_goodness_of_fit(units_o: int, units_n: int,
                                                  share: float) -> None:
    total = units_o + units_n
    want = stats.chisquare([units_o, units_n], [total * (1 - share), total * share])
    got = es.srm(units_o, units_n, share)
    assert _close(got.chi2_p_value, float(want.pvalue))  # beside the sequential test
    assert got.expected_new == share
    # The sequential p-value: 1 / the Dirichlet-multinomial Bayes factor, computed here
    # independently with the two-category Beta function.
    a_o, a_n = es.SRM_PRIOR * (1 - share), es.SRM_PRIOR * share
    log_bf = (special.betaln(a_o + units_o, a_n + units_n) - special.betaln(a_o, a_n)
              - units_o * math.log(1 - share) - units_n * math.log(share))
    assert _close(got.p_value, min(1.0, math.exp(-log_bf)))
    assert got.mismatch == (got.p_value < es.SRM_ALPHA)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200_000), st.integers(0, 200_000),
       st.integers(1, 9999).map(lambda bp: bp / 10000))
def test_srm_is_a_mismatch_exactly_when_p_is_under_one_in_a_thousand(
        units_o: int, units_n: int, share: float) -> None:
    got = es.srm(units_o, units_n, share)
    assert 0.0 <= got.p_value <= 1.0
    assert got.mismatch == (got.p_value < 0.001)


def test_srm_flags_5600_against_5000_but_not_5050_or_5400_on_an_even_split() -> None:
    assert not es.srm(5000, 5050, 0.5).mismatch
    assert es.srm(5000, 5600, 0.5).mismatch
    # 5300 against 5000 is suspicious to a one-off chi-square (p = 0.0031) and 5400 would
    # be flagged by it (p = 8.8e-5), but a test read every second must ask for more: the
    # sequential p-values are 0.13 and 0.005.
    s = es.srm(5000, 5300, 0.5)
    assert s.chi2_p_value == pytest.approx(0.0031167, rel=1e-4)
    assert s.p_value == pytest.approx(0.1349, rel=1e-3)
    assert not s.mismatch
    assert not es.srm(5000, 5400, 0.5).mismatch


def test_srm_with_no_users_or_a_degenerate_split_is_no_mismatch() -> None:
    assert es.srm(0, 0, 0.5) == es.Srm(1.0, False, 0.5, 1.0)
    assert not es.srm(10, 0, 0.0).mismatch
    assert not es.srm(0, 10, 1.0).mismatch


# --- sample size -----------------------------------------------------------------------

def test_users_needed_is_the_textbook_z_formula() -> None:
    z = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))
    per_group = (z / 0.5) ** 2 * (1**2 + 1**2)  # n per group for sd 1, effect 0.5
    assert math.ceil(per_group) == 63
    assert es.users_needed(1.0, 1.0, 0.5, 0.5) == math.ceil(2 * per_group) == 126


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 100), st.floats(0.01, 100), st.floats(0.01, 10),
       st.integers(1, 9999).map(lambda bp: bp / 10000),
       st.sampled_from([0.01, 0.05, 0.1]), st.sampled_from([0.8, 0.9, 0.95]))
def test_users_needed_matches_the_closed_form(sd_o: float, sd_n: float, effect: float,
                                              share: float, alpha: float,
                                              power: float) -> None:
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    want = (z / effect) ** 2 * (sd_n**2 / share + sd_o**2 / (1 - share))
    got = es.users_needed(sd_o, sd_n, effect, share, alpha, power)
    assert got is not None
    assert got - 1 < want * (1 + 1e-12) and got >= want * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9999).map(lambda bp: bp / 10000))
def test_an_unequal_split_needs_more_users(share: float) -> None:
    even = es.users_needed(1.0, 1.0, 0.5, 0.5)
    got = es.users_needed(1.0, 1.0, 0.5, share)
    assert even is not None and got is not None
    assert got >= even
    if abs(share - 0.5) >= 0.1:
        assert got > even
    assert es.users_needed(1.0, 1.0, 0.5, 0.2) == 197


def test_users_needed_is_unknowable_without_an_effect_a_split_or_a_spread() -> None:
    assert es.users_needed(1.0, 1.0, 0.0, 0.5) is None
    assert es.users_needed(1.0, 1.0, 0.5, 0.0) is None
    assert es.users_needed(1.0, 1.0, 0.5, 1.0) is None
    assert es.users_needed(0.0, 0.0, 0.5, 0.5) is None


# --- the always-valid interval ---------------------------------------------------------

def _docstring_halfwidth(sd: float, n: int, alpha: float = 0.05, tuning_n: int = 5000
                         ) -> float:
    """sd * sqrt(2 (n r^2 + 1) / (n^2 r^2) * ln(sqrt(n r^2 + 1) / alpha)), with GrowthBook's
    r^2 = (-2 ln alpha + ln(-2 ln alpha + 1)) / tuning_n."""
    r2 = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / tuning_n
    inner = 2 * (n * r2 + 1) / (n**2 * r2) * math.log(math.sqrt(n * r2 + 1) / alpha)
    return sd * math.sqrt(inner)


# (sd, n, alpha, tuning_n, half-width): computed once from the formula above.
HALFWIDTHS = [
    (1.0, 1, 0.05, 5000, 61.49620294609536),
    (1.0, 2, 0.05, 5000, 30.776520349312715),
    (1.0, 10, 0.05, 5000, 6.2006324753839595),
    (1.0, 100, 0.05, 5000, 0.6694388617066039),
    (1.0, 1000, 0.05, 5000, 0.10637547006557503),
    (1.0, 5000, 0.05, 5000, 0.04292433718826846),
    (1.0, 100_000, 0.05, 5000, 0.010552070034257916),
    (2.5, 5000, 0.01, 5000, 0.1262761886145803),
    (1.0, 100, 0.05, 100, 0.3035208990376253),
]


@pytest.mark.parametrize(("sd", "n", "alpha", "tuning_n", "want"), HALFWIDTHS)
def test_mixture_halfwidth_is_the_normal_mixture_formula(sd: float, n: int, alpha: float,
                                                         tuning_n: int, want: float) -> None:
    assert _close(es.mixture_halfwidth(sd, n, alpha, tuning_n), want)
    assert _close(_docstring_halfwidth(sd, n, alpha, tuning_n), want)


def test_mixture_halfwidth_is_infinite_with_no_values_or_no_finite_spread() -> None:
    assert es.mixture_halfwidth(1.0, 0) == math.inf
    assert es.mixture_halfwidth(math.inf, 10) == math.inf
    assert es.mixture_halfwidth(math.nan, 10) == math.inf


def test_mixture_halfwidth_shrinks_with_every_value() -> None:
    widths = [es.mixture_halfwidth(1.0, n) for n in range(1, 50_001)]
    assert all(a > b for a, b in itertools.pairwise(widths))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**9), st.integers(1, 10**9))
def test_mixture_halfwidth_is_decreasing_in_n(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    if lo < hi:
        assert es.mixture_halfwidth(1.0, lo) > es.mixture_halfwidth(1.0, hi)


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-6, 1e6), st.integers(1, 10**9), st.sampled_from([0.01, 0.05, 0.1]))
def test_mixture_is_always_wider_than_the_fixed_z_interval(sd: float, n: int,
                                                           alpha: float) -> None:
    fixed = float(stats.norm.ppf(1 - alpha / 2)) * sd / math.sqrt(n)
    assert es.mixture_halfwidth(sd, n, alpha) > fixed


@pytest.mark.parametrize("tuning_n", [100, 1000, es.TUNING_N, 20_000])
def test_mixture_is_tightest_against_the_z_interval_near_the_tuning_size(
        tuning_n: int) -> None:
    ns = np.arange(1, 20 * tuning_n)
    ratio = [es.mixture_halfwidth(1.0, int(n), tuning_n=tuning_n) * math.sqrt(n) / Z
             for n in ns]
    best = int(ns[int(np.argmin(ratio))])
    assert abs(best - tuning_n) <= 0.1 * tuning_n, best
    # About 1.55 times the z interval there; never less anywhere.
    assert min(ratio) == pytest.approx(1.5486, abs=1e-3)
    at = es.mixture_halfwidth(1.0, tuning_n, tuning_n=tuning_n) * math.sqrt(tuning_n) / Z
    assert at == pytest.approx(min(ratio), rel=1e-3)


# --- properties of compare -------------------------------------------------------------

# Per-user values on a grid of 0.001: no magnitudes where float arithmetic itself fails.
VALUES = st.integers(-1_000_000, 1_000_000).map(lambda k: k / 1000)


def _side(min_size: int = 2) -> st.SearchStrategy[list[float]]:
    return st.lists(VALUES, min_size=min_size, max_size=60)


@settings(max_examples=300, deadline=None)
@given(_side(5), _side(5), st.booleans())
def test_always_valid_interval_holds_the_difference_and_the_fixed_interval(
        orig: list[float], new: list[float], proportion: bool) -> None:
    if proportion:
        orig, new = [float(x > 0) for x in orig], [float(x > 0) for x in new]
    got = es.compare(_sample(orig), _sample(new), proportion)
    assume(got is not None)  # two means that do not vary at all say nothing
    assert got is not None
    cmp = got
    lo, hi = cmp.ci
    assert lo <= cmp.difference <= hi
    # With five users a side Welch's df >= 4 and t_{.975,4} = 2.78 is below the mixture's
    # narrowest (3.03 standard errors), so the fixed interval always fits inside.
    assert lo <= cmp.fixed_ci[0] and cmp.fixed_ci[1] <= hi


@pytest.mark.xfail(strict=True, reason="the asymptotic confidence sequence is narrower than "
                   "Welch's t interval when a side has 2-4 users (min_users keeps such "
                   "intervals out of decisions)")
def test_always_valid_interval_holds_the_fixed_interval_with_two_users_on_a_side() -> None:
    # With 2 users on original carrying the variance, Welch's df is ~1 and its t interval
    # is +-6.35, but the "always valid" interval (asymptotic, normal) is only +-1.68.
    cmp = _compare([0.0, 1.0], [0.5 + 0.001 * (i % 2) for i in range(998)])
    assert cmp.ci[0] <= cmp.fixed_ci[0] and cmp.fixed_ci[1] <= cmp.ci[1], (cmp.ci,
                                                                          cmp.fixed_ci)


@settings(max_examples=300, deadline=None)
@given(_side(), _side(), st.booleans())
def test_swapping_the_variants_negates_the_difference(orig: list[float], new: list[float],
                                                      proportion: bool) -> None:
    if proportion:
        orig, new = [float(x > 0) for x in orig], [float(x > 0) for x in new]
    assume(proportion or len(set(orig)) > 1 or len(set(new)) > 1)
    ab, ba = _compare(orig, new, proportion), _compare(new, orig, proportion)
    assert ba.difference == -ab.difference
    assert ba.ci == (-ab.ci[1], -ab.ci[0])
    assert ba.fixed_ci == (-ab.fixed_ci[1], -ab.fixed_ci[0])
    assert ba.p_value == ab.p_value
    assert ba.se == ab.se
    assert ba.significant == ab.significant


@settings(max_examples=100, deadline=None)
@given(st.lists(VALUES, max_size=1), _side(0), st.booleans(), st.booleans())
def test_compare_waits_for_two_users_on_each_side(few: list[float], other: list[float],
                                                  proportion: bool, few_is_new: bool) -> None:
    a, b = _sample(few), _sample(other)
    args = (b, a) if few_is_new else (a, b)
    assert es.compare(*args, proportion=proportion) is None


@pytest.mark.parametrize(("orig", "new"), [
    ([0.0, 1e-100], [0.0, 1e-100, 0.0]),  # ZeroDivisionError: Welch's df, 0/0
    ([1e-90, 2e-90], [1.0, 2.0]),  # ZeroDivisionError: orig.mean**4 underflows to 0
    ([1e78, 2e78], [1.0, 2.0]),  # OverflowError: var**2 / orig.mean**4
])
def test_compare_does_not_raise_on_extreme_finite_values(orig: list[float],
                                                         new: list[float]) -> None:
    # BUG (kept failing on purpose): any finite header value is accepted, so one user
    # sending accuracy=1e100 makes every results() call raise (see the test below).
    es.compare(_sample(orig), _sample(new))


def test_one_extreme_header_value_does_not_break_the_results() -> None:
    # BUG (kept failing on purpose): OverflowError from compare via results().
    out = Outcomes()
    out.configure(["accuracy"], [], True)
    for i in range(20):
        for v in VARIANTS:
            out.request(v, f"{v}{i}", 1000, False)
            out.header(v, f"{v}{i}", b"accuracy=1e100" if i == 0 else b"accuracy=0.5")
    res = results(Experiment("e", 5000, (Metric("accuracy"),)), out, 10.0)
    assert res["decision"]["action"] in (SHIP, KEEP, STOP)


# --- results and decisions -------------------------------------------------------------

def _outcomes(per_user: dict[tuple[str, Variant], Sequence[float]],
              units: dict[Variant, int] | None = None) -> Outcomes:
    """Outcomes with user i of each variant holding per_user[(metric, variant)][i]."""
    out = Outcomes()
    for (metric, v), values in per_user.items():
        for i, value in enumerate(values):
            out.table(metric, v).add(user_id(f"{v}-{i}"), value)
    for v in VARIANTS:
        n = (units or {}).get(v, max((len(vals) for (_, w), vals in per_user.items()
                                      if w == v), default=0))
        out.units[v].update(user_id(f"{v}-{i}") for i in range(n))
    return out


def _normal(mean: float, sd: float, n: int, seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).normal(mean, sd, n)]


ACCURACY = Metric("accuracy", mde=0.05)
COST = Metric("cost", goal="decrease", role="guardrail", margin=0.05)
EXP = Experiment("exp", 5000, (ACCURACY, COST))


def test_a_clear_win_ships() -> None:
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.5, 0.1, 1000, 1),
                     ("accuracy", NEW): _normal(0.6, 0.1, 1000, 2),
                     ("cost", ORIGINAL): _normal(1.0, 0.1, 1000, 3),
                     ("cost", NEW): _normal(1.0, 0.1, 1000, 4)})
    res = results(EXP, out, 60.0)
    assert res["decision"]["action"] == SHIP, res["decision"]
    assert "accuracy" in res["decision"]["reason"]
    acc = res["metrics"]["accuracy"]
    assert acc["verdict"] == "better" and acc["ci"][0] > 0
    assert acc[ORIGINAL]["n"] == acc[NEW]["n"] == 1000
    assert acc["lift"] == pytest.approx(0.2, abs=0.03)
    assert res["metrics"]["cost"]["verdict"] == "inconclusive"
    assert not res["srm"]["mismatch"] and res["variants"][NEW]["units"] == 1000
    size = acc["sample_size"]
    assert size["users_now"] == 2000 and size["eta_s"] == 0.0  # already past the need


def test_a_clear_loss_stops() -> None:
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.6, 0.1, 1000, 5),
                     ("accuracy", NEW): _normal(0.5, 0.1, 1000, 6)})
    res = results(EXP, out, 60.0)
    assert res["metrics"]["accuracy"]["verdict"] == "worse"
    assert res["decision"]["action"] == STOP
    assert "accuracy" in res["decision"]["reason"]


def test_a_guardrail_worse_by_more_than_its_margin_blocks_the_ship() -> None:
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.5, 0.1, 1000, 7),
                     ("accuracy", NEW): _normal(0.6, 0.1, 1000, 8),
                     ("cost", ORIGINAL): _normal(1.0, 0.1, 1000, 9),
                     ("cost", NEW): _normal(1.3, 0.1, 1000, 10)})  # 30% dearer, margin 5%
    res = results(EXP, out, 60.0)
    assert res["metrics"]["accuracy"]["verdict"] == "better"
    assert res["metrics"]["cost"]["verdict"] == "worse"
    assert res["decision"]["action"] == STOP
    assert "cost" in res["decision"]["reason"]


def test_a_guardrail_worse_by_less_than_its_margin_does_not_block() -> None:
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.5, 0.1, 1000, 11),
                     ("accuracy", NEW): _normal(0.6, 0.1, 1000, 12),
                     ("cost", ORIGINAL): _normal(1.0, 0.01, 1000, 13),
                     ("cost", NEW): _normal(1.02, 0.01, 1000, 14)})  # 2% dearer, margin 5%
    res = results(EXP, out, 60.0)
    assert res["metrics"]["cost"]["ci"][0] > 0  # confidently dearer, but within the margin
    assert res["metrics"]["cost"]["verdict"] == "inconclusive"
    assert res["decision"]["action"] == SHIP


def test_a_sample_ratio_mismatch_stops_whatever_the_metrics_say() -> None:
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.5, 0.1, 1000, 15),
                     ("accuracy", NEW): _normal(0.6, 0.1, 1000, 16)},
                    units={ORIGINAL: 5000, NEW: 5800})
    res = results(EXP, out, 60.0)
    assert res["srm"]["mismatch"] and res["srm"]["observed_new"] == pytest.approx(5800 / 10800)
    assert res["metrics"]["accuracy"]["verdict"] == "better"
    action, reason = res["decision"]["action"], res["decision"]["reason"]
    assert action == STOP and "sample ratio" in reason
    assert decide(EXP, res["metrics"], es.srm(5000, 5800, 0.5))[0] == STOP


@pytest.mark.parametrize("n", [0, 1, 3, 10])
def test_thin_data_keeps_running(n: int) -> None:
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.5, 0.2, n, 17),
                     ("accuracy", NEW): _normal(0.6, 0.2, n, 18)})
    res = results(EXP, out, 5.0)
    assert res["decision"]["action"] == KEEP, res["decision"]
    assert res["metrics"]["accuracy"]["verdict"] == "inconclusive"


def test_an_interval_clear_of_zero_waits_for_min_users() -> None:
    # 60 users a side and a large effect: the interval excludes 0, but 60 < min_users.
    out = _outcomes({("accuracy", ORIGINAL): _normal(0.5, 0.05, 60, 19),
                     ("accuracy", NEW): _normal(0.7, 0.05, 60, 20)})
    res = results(EXP, out, 5.0)
    assert res["metrics"]["accuracy"]["ci"][0] > 0
    assert res["metrics"]["accuracy"]["verdict"] == "inconclusive"
    assert res["decision"]["action"] == KEEP
    assert str(EXP.min_users) in res["decision"]["reason"]
    lowered = Experiment("exp", 5000, (ACCURACY, COST), min_users=50)
    assert results(lowered, out, 5.0)["decision"]["action"] == SHIP


def test_two_users_a_side_with_no_spread_keep_running() -> None:
    # Two users on original who did not convert and two on new who did: the raw variance
    # is 0, and an interval built on it would be (1, 1), "confidently better" after four
    # users (the bench found this). The always-valid interval smooths it: wide, not a point.
    conv = Metric("converted", type="proportion")
    out = _outcomes({("converted", ORIGINAL): [0.0, 0.0], ("converted", NEW): [1.0, 1.0]})
    for min_users in (2, 100):
        res = results(Experiment("exp", 5000, (conv,), min_users=min_users), out, 5.0)
        lo, hi = res["metrics"]["converted"]["ci"]
        assert lo < 0 < 1 < hi
        assert res["decision"]["action"] == KEEP, (res["decision"], res["metrics"]["converted"])


def test_results_with_no_outcomes_keep_running_and_are_json_plain() -> None:
    res = results(EXP, Outcomes(), 0.0)
    assert res["decision"]["action"] == KEEP
    assert res["srm"]["observed_new"] is None and res["malformed"] == 0
    assert res["metrics"]["accuracy"]["sample_size"]["users_needed"] is None
