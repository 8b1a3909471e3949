"""Gate statistics: pure functions and small pure state, no I/O, no clock.

Every gate is turned into a question about a binomial proportion or a shift:

- error rate < L: errors are Bernoulli trials;
- p99 < L (p999 < L): a request slower than L is a trial with probability q, and
  p99 < L exactly when q < 1% (distribution-free: the order-statistic bound);
- new vs original: the difference of two proportions, and for latency a
  Mann-Whitney U test with a Hodges-Lehmann shift (Kayenta's judge).

Verdicts need confidence both ways: *pass* when the upper confidence bound
is under the limit with enough requests, *breach* when the evidence that the
limit is exceeded survives repeated looks, else *inconclusive*. Repeated
looks (4 a second, for hours) are handled two ways at once:

- a one-sided Bernoulli CUSUM (Page's test) tuned to a large shift, with its
  threshold ``h`` set so that at the limit itself the average run length to a
  false alarm is at least e**h trials (Lorden); it catches a sudden fault in
  about a second at 100 requests/s;
- the phase's whole sample with an exact (Clopper-Pearson) bound at a tiny
  alpha, which Bonferroni over every look of a day still keeps small; it
  catches moderate, persistent breaches the CUSUM is not tuned for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy import special, stats

PASS_ALPHA = 0.05  # a pass is claimed at 95% confidence
BREACH_ALPHA = 1e-7  # per look; 4 looks/s for 24 h is < 0.04 false breaches by Bonferroni
CUSUM_SHIFT = 10.0  # the CUSUM watches for the rate jumping to 10x the limit
CUSUM_H = 12.0  # ARL at the limit >= e**12 ~ 160k trials (27 min at 100 req/s)


class Verdict(StrEnum):
    """A gate's verdict for one look."""

    PASS = "pass"
    BREACH = "breach"
    INCONCLUSIVE = "inconclusive"


def upper_bound(x: int, n: int, alpha: float) -> float:
    """Exact one-sided upper confidence bound of a binomial proportion (Clopper-Pearson)."""
    if n <= 0 or x >= n:
        return 1.0
    # The Beta(x+1, n-x) quantile; scipy.special is ~20x cheaper than stats.beta.ppf.
    return float(special.betaincinv(x + 1, n - x, 1 - alpha))


def lower_bound(x: int, n: int, alpha: float) -> float:
    """Exact one-sided lower confidence bound of a binomial proportion (Clopper-Pearson)."""
    if n <= 0 or x <= 0:
        return 0.0
    return float(special.betaincinv(x, n - x + 1, alpha))


@dataclass(frozen=True, slots=True)
class Cusum:
    """Page's one-sided CUSUM for a Bernoulli rate rising from ``p0`` to ``p1``.

    Immutable: ``update`` returns the next state, so a controller can keep it in
    its state and tests can replay it.
    """

    p0: float
    p1: float
    h: float = CUSUM_H
    s: float = 0.0

    @staticmethod
    def for_limit(limit: float, h: float = CUSUM_H) -> Cusum:
        """Watching for a jump to ``CUSUM_SHIFT`` times ``limit`` (capped at 0.5)."""
        p0 = min(max(limit, 1e-9), 0.5)
        return Cusum(p0, min(max(p0 * CUSUM_SHIFT, p0 * 1.5), 0.75), h)

    def update(self, trials: int, hits: int) -> Cusum:
        """Add a batch of ``trials`` with ``hits`` successes of the watched event."""
        if trials <= 0:
            return self
        up = math.log(self.p1 / self.p0)
        down = math.log((1 - self.p1) / (1 - self.p0))
        # Misses first, then hits: within a batch the order is unknown, and this
        # order gives the largest s of any order, so a burst is never hidden by batching.
        s = max(0.0, self.s + (trials - hits) * down)
        s += hits * up
        return Cusum(self.p0, self.p1, self.h, s)

    @property
    def alarm(self) -> bool:
        return self.s >= self.h

    def reset(self) -> Cusum:
        return Cusum(self.p0, self.p1, self.h, 0.0)


@dataclass(frozen=True, slots=True)
class Finding:
    """One gate's verdict with the numbers that decided it (the event's evidence)."""

    gate: str
    verdict: Verdict
    observed: float
    limit: float
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"gate": self.gate, "verdict": str(self.verdict), "observed": self.observed,
                "limit": self.limit, "detail": self.detail}


def judge_rate(gate: str, hits: int, trials: int, limit: float, min_trials: int,
               cusum: Cusum | None = None) -> Finding:
    """Is the rate of ``hits`` in ``trials`` under ``limit``?

    Breach when the CUSUM alarms or the exact lower bound at ``BREACH_ALPHA`` is
    over the limit; pass when the upper bound at ``PASS_ALPHA`` is under it with
    at least ``min_trials``; otherwise inconclusive.
    """
    observed = hits / trials if trials else 0.0
    if cusum is not None and cusum.alarm:
        return Finding(gate, Verdict.BREACH, observed, limit,
                       f"sudden rise: CUSUM {cusum.s:.1f} >= {cusum.h:.0f} "
                       f"({hits}/{trials} in the phase)")
    # The lower bound never exceeds the observed rate: only compute it when it could matter.
    low = lower_bound(hits, trials, BREACH_ALPHA) if observed > limit else 0.0
    if low > limit:
        return Finding(gate, Verdict.BREACH, observed, limit,
                       f"{hits}/{trials}: lower bound {low:.4%} > {limit:.4%}")
    high = upper_bound(hits, trials, PASS_ALPHA) if observed < limit else 1.0
    if trials >= min_trials and high < limit:
        return Finding(gate, Verdict.PASS, observed, limit,
                       f"{hits}/{trials}: 95% upper bound {high:.4%} < {limit:.4%}")
    why = f"only {trials} of {min_trials} requests" if trials < min_trials else \
        f"95% upper bound {high:.4%} not yet under {limit:.4%}"
    return Finding(gate, Verdict.INCONCLUSIVE, observed, limit, f"{hits}/{trials}: {why}")


def judge_rate_increase(gate: str, new: tuple[int, int], original: tuple[int, int],
                        allowed: float, min_trials: int) -> Finding:
    """Is new's rate at most ``allowed`` above original's? (hits, trials) for each side.

    Simultaneous exact bounds: breach when new's lower bound exceeds original's
    upper bound by more than ``allowed`` (each at BREACH_ALPHA/2); pass when new's
    upper bound exceeds original's lower bound by less (each at PASS_ALPHA/2).
    """
    (xn, nn), (xo, no) = new, original
    observed = (xn / nn if nn else 0.0) - (xo / no if no else 0.0)
    gap_low = lower_bound(xn, nn, BREACH_ALPHA / 2) - upper_bound(xo, no, BREACH_ALPHA / 2)
    if nn and no and gap_low > allowed:
        return Finding(gate, Verdict.BREACH, observed, allowed,
                       f"new {xn}/{nn} vs original {xo}/{no}: increase >= {gap_low:.4%}")
    gap_high = upper_bound(xn, nn, PASS_ALPHA / 2) - lower_bound(xo, no, PASS_ALPHA / 2)
    if min(nn, no) >= min_trials and gap_high < allowed:
        return Finding(gate, Verdict.PASS, observed, allowed,
                       f"new {xn}/{nn} vs original {xo}/{no}: increase < {gap_high:.4%}")
    return Finding(gate, Verdict.INCONCLUSIVE, observed, allowed,
                   f"new {xn}/{nn} vs original {xo}/{no}")


@dataclass(frozen=True, slots=True)
class ShiftTest:
    """Mann-Whitney U of new against original, with the Hodges-Lehmann shift."""

    u: float
    p_value: float  # one-sided: new tends to be slower
    shift: float  # Hodges-Lehmann estimate of new - original (same unit as the values)
    n_new: int
    n_original: int


def mann_whitney_binned(values: npt.NDArray[np.float64], new: npt.NDArray[np.float64],
                        original: npt.NDArray[np.float64], samples: int = 400) -> ShiftTest:
    """MWU on two histograms over the same ``values`` (counts per value), with ties.

    U counts pairs where new is slower (ties count a half); the p-value uses the
    normal approximation with the tie correction, as scipy's ``mannwhitneyu``
    does for large samples. The HL shift is the median of pairwise differences
    of ``samples`` evenly spaced quantiles of each side.
    """
    n1, n2 = float(new.sum()), float(original.sum())
    if n1 == 0 or n2 == 0:
        return ShiftTest(0.0, 1.0, 0.0, int(n1), int(n2))
    below = np.cumsum(original) - original  # original values strictly below each bin
    u = float(np.dot(new, below + 0.5 * original))
    t = new + original
    n = n1 + n2
    tie = float(np.sum(t**3 - t))
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    mean = n1 * n2 / 2.0
    z = (u - mean - 0.5) / math.sqrt(var) if var > 0 else 0.0  # continuity correction
    p = float(stats.norm.sf(z))
    qs = (np.arange(samples) + 0.5) / samples
    a = _quantile_values(values, new, qs)
    b = _quantile_values(values, original, qs)
    shift = float(np.median(a[:, None] - b[None, :]))
    return ShiftTest(u, p, shift, int(n1), int(n2))


def _quantile_values(values: npt.NDArray[np.float64], counts: npt.NDArray[np.float64],
                     qs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    cum = np.cumsum(counts)
    idx = np.searchsorted(cum, qs * cum[-1], side="left")
    picked: npt.NDArray[np.float64] = values[np.minimum(idx, len(values) - 1)]
    return picked


def judge_latency_increase(gate: str, test: ShiftTest, baseline: float, allowed: float,
                           min_trials: int) -> Finding:
    """Kayenta-style: breach when new is significantly slower (p < BREACH_ALPHA) *and*
    the HL shift exceeds ``allowed`` x ``baseline`` (original's median); pass with
    enough samples when it is not a significant, material increase."""
    limit = allowed * baseline
    detail = (f"MWU p={test.p_value:.2e}, HL shift {test.shift * 1e3:.2f} ms vs allowed "
              f"{limit * 1e3:.2f} ms (n={test.n_new}/{test.n_original})")
    if test.p_value < BREACH_ALPHA and test.shift > limit:
        return Finding(gate, Verdict.BREACH, test.shift, limit, detail)
    if min(test.n_new, test.n_original) >= min_trials and (
            test.p_value >= PASS_ALPHA or test.shift <= limit):
        return Finding(gate, Verdict.PASS, test.shift, limit, detail)
    return Finding(gate, Verdict.INCONCLUSIVE, test.shift, limit, detail)


def overall(findings: list[Finding]) -> Verdict:
    """Any breach breaches; all pass passes; otherwise inconclusive (none is not a pass)."""
    if any(f.verdict is Verdict.BREACH for f in findings):
        return Verdict.BREACH
    if findings and all(f.verdict is Verdict.PASS for f in findings):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE
