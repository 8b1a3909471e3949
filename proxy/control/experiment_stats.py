"""Experiment statistics: pure functions over per-user values, no I/O, no clock.

The user is the randomisation unit, so every metric is first reduced to one
value per user (their mean; for a proportion, 1 if any of their values is
non-zero) and the two variants are compared on those values:

- fixed horizon: Welch's t-test and interval for a mean (as
  ``scipy.stats.ttest_ind(equal_var=False)``); for a proportion the pooled
  two-proportion z-test (= Pearson's chi-square without correction) and the
  unpooled Wald interval; valid only when read once, at a planned size;
- always valid: the two-sided normal-mixture confidence sequence of Howard et
  al. (2021), used asymptotically with the estimated variance (Waudby-Smith et
  al. 2023) as GrowthBook's sequential mode does: it holds at every look at
  once, so results can be read every second without inflating false positives;
- the sample-ratio-mismatch check: sequential (Lindon & Malek 2020), so it too can be
  read every second; the chi-square goodness of fit beside it;
- the users needed for a minimum detectable effect at a given power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special, stats

ALPHA = 0.05
SRM_ALPHA = 0.001  # GrowthBook's and Statsig's threshold
TUNING_N = 5000  # the sample size at which the confidence sequence is tightest (GrowthBook's)

Values = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Sample:
    """One variant's per-user values, summarised."""

    n: int
    mean: float
    var: float  # unbiased sample variance (0 with fewer than two users)

    @staticmethod
    def of(values: Values) -> Sample:
        """The summary of ``values`` (one per user)."""
        n = int(values.size)
        if n == 0:
            return Sample(0, 0.0, 0.0)
        with np.errstate(all="ignore"):  # extreme values give inf, which compare refuses
            mean = float(values.mean())
            var = float(values.var(ddof=1)) if n > 1 else 0.0
        return Sample(n, mean, var)


def mixture_halfwidth(sd: float, n: int, alpha: float = ALPHA,
                      tuning_n: int = TUNING_N) -> float:
    """Half-width of the two-sided always-valid interval for a mean of ``n`` values with
    standard deviation ``sd`` (normal mixture; Howard et al. 2021, eq. 14).

    ``sd * sqrt(2 (n r^2 + 1) / (n^2 r^2) * ln(sqrt(n r^2 + 1) / alpha))`` with ``r`` chosen
    so the interval is tightest at ``tuning_n`` values. For a difference of two means pass
    ``sd = sqrt(n * var(difference))`` with ``n`` the users of both variants.
    """
    if n <= 0 or not math.isfinite(sd):
        return math.inf
    la = math.log(alpha)
    r2 = (-2 * la + math.log(-2 * la + 1)) / tuning_n
    return sd * math.sqrt(2 * (n * r2 + 1) / (n * n * r2) * math.log(math.sqrt(n * r2 + 1)
                                                                     / alpha))


@dataclass(frozen=True, slots=True)
class Comparison:
    """New against original on one metric."""

    difference: float  # new - original
    ci: tuple[float, float]  # always valid (the one decisions use)
    fixed_ci: tuple[float, float]  # fixed horizon, for comparison
    p_value: float  # fixed horizon, two-sided
    lift: float | None  # difference / original's mean (None when that mean is 0)
    lift_ci: tuple[float, float] | None  # always valid, by the delta method
    se: float  # standard error of the difference

    @property
    def significant(self) -> bool:
        """The always-valid interval excludes 0."""
        return self.ci[0] > 0 or self.ci[1] < 0


def _sequential_var(s: Sample, proportion: bool) -> float:
    """The variance the always-valid intervals use. For a proportion it is smoothed
    (x + 1) / (n + 2): with no successes yet, or all, the raw variance is 0 and the
    interval would collapse to a point ("confidently 100% worse" after a few users)."""
    if not proportion:
        return s.var
    p = (s.mean * s.n + 1) / (s.n + 2)
    return p * (1 - p) * s.n / (s.n - 1)


def compare(orig: Sample, new: Sample, proportion: bool = False,
            alpha: float = ALPHA) -> Comparison | None:
    """Compare per-user values; None until each side has two users, while neither side
    varies (a mean metric: nothing to say how sure the difference is), or when the values
    are too extreme to compute with (over- or underflow)."""
    if orig.n < 2 or new.n < 2:
        return None
    if not proportion and orig.var == 0 and new.var == 0:
        return None
    try:
        return _compare(orig, new, proportion, alpha)
    except ArithmeticError:  # e.g. a metric near 1e-100 or 1e100: squares leave the floats
        return None


def _compare(orig: Sample, new: Sample, proportion: bool, alpha: float) -> Comparison | None:
    diff = new.mean - orig.mean
    v_o, v_n = orig.var / orig.n, new.var / new.n
    se = math.sqrt(v_o + v_n)
    if proportion:
        fixed_lo, fixed_hi, p = _proportion_test(orig, new, alpha)
    else:
        fixed_lo, fixed_hi, p = _welch(orig, new, alpha)
    n = orig.n + new.n
    sv_o = _sequential_var(orig, proportion) / orig.n
    sv_n = _sequential_var(new, proportion) / new.n
    half = mixture_halfwidth(math.sqrt(n * (sv_o + sv_n)), n, alpha)
    lift = lift_ci = None
    if orig.mean != 0:
        lift = diff / orig.mean
        # Var(new/orig - 1) by the delta method, as GrowthBook's relative effect.
        var_lift = sv_n / orig.mean**2 + new.mean**2 * sv_o / orig.mean**4
        lhalf = mixture_halfwidth(math.sqrt(n * var_lift), n, alpha)
        lift_ci = (lift - lhalf, lift + lhalf)
        if diff - half <= 0 <= diff + half:
            # The delta method's variance is read at the observed means, and shrinks when
            # new's rate is low by chance: the lift interval alone excluded 0 in 4.6% of
            # A/A runs (bench/experiment.py). Its sign is never surer than the difference's.
            lift_ci = (min(lift_ci[0], 0.0), max(lift_ci[1], 0.0))
    values = (diff, half, fixed_lo, fixed_hi, p, lift or 0.0, *(lift_ci or ()))
    if not all(math.isfinite(v) for v in values):
        return None
    return Comparison(diff, (diff - half, diff + half), (fixed_lo, fixed_hi), p, lift, lift_ci,
                      se)


def _welch(orig: Sample, new: Sample, alpha: float) -> tuple[float, float, float]:
    """Welch's t interval and two-sided p (what scipy's ttest_ind(equal_var=False) gives)."""
    diff = new.mean - orig.mean
    v_o, v_n = orig.var / orig.n, new.var / new.n
    se2 = v_o + v_n
    if se2 == 0:
        return diff, diff, 1.0 if diff == 0 else 0.0
    df = se2**2 / (v_o**2 / (orig.n - 1) + v_n**2 / (new.n - 1))
    t = diff / math.sqrt(se2)
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(se2)
    return diff - half, diff + half, p


def _proportion_test(orig: Sample, new: Sample, alpha: float) -> tuple[float, float, float]:
    """Pooled z-test p-value (Pearson chi-square, no correction) and the Wald interval."""
    diff = new.mean - orig.mean
    pooled = (orig.mean * orig.n + new.mean * new.n) / (orig.n + new.n)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / orig.n + 1 / new.n))
    p = float(2 * stats.norm.sf(abs(diff) / se0)) if se0 > 0 else (1.0 if diff == 0 else 0.0)
    se = math.sqrt(orig.mean * (1 - orig.mean) / orig.n + new.mean * (1 - new.mean) / new.n)
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    return diff - half, diff + half, p


def mean_interval(s: Sample, alpha: float = ALPHA, proportion: bool = False
                  ) -> tuple[float, float]:
    """The always-valid interval for one variant's mean (absolute gates: max, min). A mean
    that does not vary (a gauge polled from Prometheus) gives a point: its value is what
    it is, and ``min_samples`` says how many polls to see first."""
    if s.n < 2 or not math.isfinite(s.var):
        return (-math.inf, math.inf)
    half = mixture_halfwidth(math.sqrt(_sequential_var(s, proportion)), s.n, alpha)
    return (s.mean - half, s.mean + half)


@dataclass(frozen=True, slots=True)
class Srm:
    """Sample ratio mismatch: do the users per variant match the split?"""

    p_value: float  # always valid: min(1, 1 / Bayes factor)
    mismatch: bool
    expected_new: float  # the share of users new should have
    chi2_p_value: float  # the fixed-horizon chi-square test, beside it


SRM_PRIOR = 100.0  # concentration of the Dirichlet prior around the split


def srm(units_original: int, units_new: int, new_share: float) -> Srm:
    """Is the split what it should be? Checked every second for the whole experiment, so the
    decision uses the sequential test of Lindon & Malek (2020, as Optimizely's SRM check):
    the Bayes factor of a Dirichlet-multinomial against the configured split, a
    nonnegative martingale under the split, so by Ville's inequality it reaches
    1 / SRM_ALPHA with probability at most SRM_ALPHA however often it is read. The
    chi-square goodness-of-fit p-value (GrowthBook's, valid read once) is given beside."""
    total = units_original + units_new
    if total == 0 or not 0 < new_share < 1:
        return Srm(1.0, False, new_share, 1.0)
    expected = [total * (1 - new_share), total * new_share]
    chi2_p = float(stats.chisquare([units_original, units_new], expected).pvalue)
    a_o, a_n = SRM_PRIOR * (1 - new_share), SRM_PRIOR * new_share
    log_bf = (special.gammaln(a_o + a_n) - special.gammaln(a_o + a_n + total)
              + special.gammaln(a_o + units_original) - special.gammaln(a_o)
              + special.gammaln(a_n + units_new) - special.gammaln(a_n)
              - units_original * math.log(1 - new_share) - units_new * math.log(new_share))
    p = float(min(1.0, math.exp(-log_bf))) if log_bf > -700 else 1.0
    return Srm(p, p < SRM_ALPHA, new_share, chi2_p)


def users_needed(sd_original: float, sd_new: float, effect: float, new_share: float,
                 alpha: float = ALPHA, power: float = 0.8) -> int | None:
    """Users (both variants) a fixed-horizon two-sided test needs to detect an absolute
    ``effect`` with ``power``, with ``new_share`` of users on new; None if unknowable."""
    if effect == 0 or not 0 < new_share < 1 or not (sd_original > 0 or sd_new > 0):
        return None
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    # Var(diff) = sd_n^2 / (s N) + sd_o^2 / ((1 - s) N) must be (effect / z)^2.
    try:
        total = (z / effect) ** 2 * (sd_new**2 / new_share + sd_original**2 / (1 - new_share))
    except OverflowError:
        return None
    return math.ceil(total) if math.isfinite(total) else None
