"""Error rates of veer's experiment statistics under continuous peeking; memory per user.

veer's ``ExperimentRunner`` looks at an experiment every second: its decision reads the
always-valid intervals of ``proxy.control.experiment_stats.compare`` (normal mixture; for a
proportion with the smoothed variance ``_sequential_var``, p = (x + 1) / (n + 2)) and stops
on ``srm().mismatch`` (the sequential Dirichlet-multinomial test of Lindon & Malek 2020) at
every look. This bench proves, on the module's own formulas, what that costs and what it
protects against:

1. **A/A, peeked every second.** ``--runs`` experiments of ``--seconds`` seconds; each second
   ``--users-per-second`` new users arrive, each assigned to new with probability
   ``--split``, each with one value: Normal(1, 1) (``--metric mean``) or Bernoulli(``--p``,
   default 0.1) (``--metric proportion``). After every second the users so far are
   compared. A run is a false positive for a method if at *any* look it reads its interval
   excludes 0 (fixed horizon: p < alpha); a look where ``compare()`` is None (fewer than two
   users a side; a mean metric with no variance on either side; a non-finite result) gives
   no verdict. Methods: veer's always-valid interval (``compare().ci``), its relative
   ``lift_ci`` (which guardrail margins read), the fixed-horizon test (Welch / pooled z:
   ``compare().p_value``) peeked every second, and the same test read once at the end (its
   only valid use). Claim: the always-valid rates stay at or below alpha (5%) although read
   every second; the fixed-horizon test peeked every second does not.
2. **Sample ratio mismatch, correct split.** The false alarm rate (p < ``SRM_ALPHA`` =
   0.001) of the sequential check veer stops on (``srm().p_value``, i.e. ``mismatch``) read
   every second, beside the chi-square (``srm().chi2_p_value``) read every second and read
   once at the end. Claim: the sequential check stays at or below 0.1% read every second.
3. **Power.** The same runs (the same random numbers) with ``--effect`` added to new: the
   fraction of runs whose interval excludes 0 on the side of the effect at some look by the
   end, and the median time to that first detection, beside the fixed-horizon test read
   once at the end. The default effect is the fixed-horizon test's minimum detectable
   effect at 80% power for the planned users (from ``users_needed``), so that test has
   ~80% power and the table shows what always-valid reading costs.
4. **Memory per user.** An ``Outcomes`` fed ``--memory-users`` users through the hot-path
   calls (``request`` and ``header``; the header parser looks up the bytes name, without
   decoding it), measured with tracemalloc (the units sets and the metric's ``UserTable``
   separately) and as the RSS growth; and the ns per hot-path call.

The simulation is vectorised over runs with numpy (cumulative sums of values and squares per
variant; ``compare()``'s and ``srm()``'s formulas term for term, the sequential variance,
the None cases and the Bayes factor via ``scipy.special.gammaln`` included;
``mixture_halfwidth`` itself is called for every n). On the first ``--verify-runs`` runs of
each scenario every look is recomputed with the module's own ``Sample.of`` / ``compare`` /
``srm`` on the raw per-user values: None where the vectorised look has no verdict, and every
field of the Comparison and ``srm()``'s ``p_value``, ``chi2_p_value`` and ``mismatch`` equal
to 1e-9 (relative; absolute below 1), else the run stops with an AssertionError; so the rates
are those of the real code. Not part of the test suite.

Run from the repository root (each simulation under ~3 minutes on 2 cores):

    .venv/bin/python bench/experiment.py --memory-users 0                     # mean metric
    .venv/bin/python bench/experiment.py --metric proportion --memory-users 0
    # low traffic, where a raw proportion variance of 0 collapsed the interval to a point:
    .venv/bin/python bench/experiment.py --metric proportion --p 0.5 --users-per-second 2 \
        --seconds 120 --memory-users 0 --verify-runs 5
    .venv/bin/python bench/experiment.py --runs 0 --memory-users 1000000      # memory only
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy
from scipy import special, stats

from proxy.control import experiment_stats as st
from proxy.routing.variant import NEW, ORIGINAL, VARIANTS, Variant
from proxy.telemetry.outcomes import Outcomes, user_id

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
TOLERANCE = 1e-9  # vectorised vs the module, relative (absolute below 1)
CELLS_PER_CHUNK = 3_000_000  # runs x seconds x users drawn at once (bounds the memory)


# -- the vectorised statistics ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Side:
    """One variant's cumulative summary at every look: arrays of shape (runs, looks)."""

    n: Floats
    mean: Floats
    var: Floats  # unbiased, 0 with fewer than two users (as ``Sample.of``)

    @staticmethod
    def of(count: Floats, total: Floats, squares: Floats) -> Side:
        """From the cumulative count, sum and sum of squares of the values."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            mean = np.where(count > 0, total / count, 0.0)
            var = np.where(count > 1, (squares - total * total / count) / (count - 1), 0.0)
        return Side(count, mean, np.maximum(var, 0.0))


@dataclass(slots=True)
class Looks:
    """``compare`` and ``srm`` at every look of every run, as arrays (NaN where ``compare``
    is None: no verdict at that look)."""

    valid: Bools  # compare() is not None
    diff: Floats
    se: Floats  # compare().se: the raw (unsmoothed) standard error
    ci: tuple[Floats, Floats]  # always valid (smoothed variance for a proportion)
    lift: Floats  # NaN where original's mean is 0 (compare: None)
    lift_ci: tuple[Floats, Floats]
    p_value: Floats  # fixed horizon
    fixed_ci: tuple[Floats, Floats]
    srm_p: Floats  # srm().p_value: sequential, min(1, 1 / Bayes factor); what veer decides on
    srm_chi2_p: Floats  # srm().chi2_p_value: the fixed-horizon chi-square


class Halfwidth:
    """``st.mixture_halfwidth(sd, n, alpha) == sd * table[n]``: the module's function, called
    once per n (``sd * sqrt(...)`` with sd = 1 is that sqrt exactly, so this is bitwise)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.table = np.array([math.inf], dtype=np.float64)

    def __call__(self, sd: Floats, n: Floats) -> Floats:
        top = int(n.max()) if n.size else 0
        if top >= self.table.size:
            self.table = np.array([st.mixture_halfwidth(1.0, k, self.alpha)
                                   for k in range(top + 1)], dtype=np.float64)
        return sd * self.table[n.astype(np.int64)]


def sequential_var(s: Side, proportion: bool) -> Floats:
    """``st._sequential_var``: for a proportion p = (x + 1) / (n + 2), p (1 - p) n / (n - 1);
    for a mean the raw variance (only where n >= 2 is it used)."""
    if not proportion:
        return s.var
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (s.mean * s.n + 1) / (s.n + 2)
        return q * (1 - q) * s.n / (s.n - 1)


def srm_looks(o: Floats, nw: Floats, new_share: float) -> tuple[Floats, Floats]:
    """``st.srm(o, nw, new_share)``'s (p_value, chi2_p_value) at every look, term for term:
    the Dirichlet-multinomial Bayes factor (prior concentration ``st.SRM_PRIOR``) and the
    chi-square goodness of fit."""
    total = o + nw
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e_o, e_n = total * (1 - new_share), total * new_share
        stat = (o - e_o) ** 2 / e_o + (nw - e_n) ** 2 / e_n
        chi2_p = np.where(total > 0, stats.chi2.sf(stat, 1), 1.0)
        a_o, a_n = st.SRM_PRIOR * (1 - new_share), st.SRM_PRIOR * new_share
        gl = special.gammaln
        log_bf = (gl(a_o + a_n) - gl(a_o + a_n + total)
                  + gl(a_o + o) - gl(a_o)
                  + gl(a_n + nw) - gl(a_n)
                  - o * math.log(1 - new_share) - nw * math.log(new_share))
        p = np.where(log_bf > -700, np.minimum(1.0, np.exp(-log_bf)), 1.0)
    return np.where(total > 0, p, 1.0), chi2_p


def compare_looks(o: Side, nw: Side, proportion: bool, alpha: float, half: Halfwidth,
                  new_share: float) -> Looks:
    """What ``st.compare(orig, new, proportion, alpha)`` and ``st.srm`` give, at every look.

    ``valid`` is where compare() is not None: two users on each side; for a mean, not both
    variances 0; and every number it would return finite (the module's own check)."""
    valid = (o.n >= 2) & (nw.n >= 2)
    if not proportion:
        valid &= ~((o.var == 0) & (nw.var == 0))
    nan = np.full(o.n.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        diff = np.where(valid, nw.mean - o.mean, np.nan)
        v_o, v_n = o.var / o.n, nw.var / nw.n
        se = np.where(valid, np.sqrt(v_o + v_n), np.nan)
        n = np.where(valid, o.n + nw.n, 0.0)
        sv_o = sequential_var(o, proportion) / o.n
        sv_n = sequential_var(nw, proportion) / nw.n
        h = np.where(valid, half(np.where(valid, np.sqrt(n * (sv_o + sv_n)), 0.0), n), np.nan)
        ci = (diff - h, diff + h)
        has_lift = valid & (o.mean != 0)
        lift = np.where(has_lift, diff / o.mean, np.nan)
        var_lift = sv_n / o.mean**2 + nw.mean**2 * sv_o / o.mean**4
        lh = np.where(has_lift, half(np.sqrt(np.where(has_lift, n * var_lift, 0.0)), n),
                      np.nan)
        lift_ci = (lift - lh, lift + lh)
        # as compare(): the lift's sign is never surer than the difference's
        unsure = (ci[0] <= 0) & (ci[1] >= 0)
        lift_ci = (np.where(unsure, np.minimum(lift_ci[0], 0.0), lift_ci[0]),
                   np.where(unsure, np.maximum(lift_ci[1], 0.0), lift_ci[1]))
        p = nan.copy()
        fh = nan.copy()
        if proportion:
            pooled = (o.mean * o.n + nw.mean * nw.n) / (o.n + nw.n)
            se0 = np.sqrt(pooled * (1 - pooled) * (1 / o.n + 1 / nw.n))
            pos = valid & (se0 > 0)
            p[pos] = 2 * stats.norm.sf(np.abs(diff[pos]) / se0[pos])
            flat = valid & ~(se0 > 0)
            p[flat] = np.where(diff[flat] == 0, 1.0, 0.0)
            wse = np.sqrt(o.mean * (1 - o.mean) / o.n + nw.mean * (1 - nw.mean) / nw.n)
            fh = np.where(valid, float(stats.norm.ppf(1 - alpha / 2)) * wse, np.nan)
        else:
            se2 = v_o + v_n
            pos = valid & (se2 != 0)
            df = se2**2 / (v_o**2 / (o.n - 1) + v_n**2 / (nw.n - 1))
            t = diff / np.sqrt(se2)
            p[pos] = 2 * stats.t.sf(np.abs(t[pos]), df[pos])
            flat = valid & (se2 == 0)
            p[flat] = np.where(diff[flat] == 0, 1.0, 0.0)
            fh[pos] = stats.t.ppf(1 - alpha / 2, df[pos]) * np.sqrt(se2[pos])
            fh[flat] = 0.0
        fixed = (diff - fh, diff + fh)
        # compare() is None when any number it would return is not finite
        finite = (np.isfinite(diff) & np.isfinite(h) & np.isfinite(fixed[0])
                  & np.isfinite(fixed[1]) & np.isfinite(p)
                  & (~has_lift | (np.isfinite(lift) & np.isfinite(lift_ci[0])
                                  & np.isfinite(lift_ci[1]))))
    valid &= finite

    def keep(a: Floats) -> Floats:
        return np.where(valid, a, np.nan)

    srm_p, srm_chi2_p = srm_looks(o.n, nw.n, new_share)
    return Looks(valid, keep(diff), keep(se), (keep(ci[0]), keep(ci[1])), keep(lift),
                 (keep(lift_ci[0]), keep(lift_ci[1])), keep(p),
                 (keep(fixed[0]), keep(fixed[1])), srm_p, srm_chi2_p)


# -- the simulation ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Params:
    metric: str
    runs: int
    seconds: int
    users_per_second: int
    split: float
    alpha: float
    effect: float  # mean: absolute (sd units); proportion: relative lift
    p_base: float  # the proportion metric's rate on original
    seed: int
    verify_runs: int

    @property
    def proportion(self) -> bool:
        return self.metric == "proportion"


@dataclass
class Outcome:
    """Per run and method: the first look (0-based) at which it rejected, or -1; the sign."""

    first: dict[str, list[npt.NDArray[np.int64]]] = field(default_factory=dict)
    positive: dict[str, list[Bools]] = field(default_factory=dict)
    zero_width: dict[str, list[Bools]] = field(default_factory=dict)  # at the first rejection

    def add(self, method: str, reject: Bools, diff: Floats, width: Floats | None) -> None:
        any_ = reject.any(axis=1)
        first = np.where(any_, reject.argmax(axis=1), -1)
        at = (np.arange(len(first)), np.maximum(first, 0))
        self.first.setdefault(method, []).append(first)
        self.positive.setdefault(method, []).append((diff[at] > 0) & any_)
        zero = np.zeros_like(any_) if width is None else (width[at] == 0) & any_
        self.zero_width.setdefault(method, []).append(zero)

    def zero(self, method: str) -> int:
        return int(np.concatenate(self.zero_width[method]).sum())

    def get(self, method: str) -> tuple[npt.NDArray[np.int64], Bools]:
        return np.concatenate(self.first[method]), np.concatenate(self.positive[method])


def reject_methods(lk: Looks, alpha: float) -> dict[str, Bools]:
    """Which looks each method rejects at (its interval excludes 0 / p < alpha)."""
    with np.errstate(invalid="ignore"):
        fixed = lk.valid & (lk.p_value < alpha)
        end = np.zeros_like(fixed)
        end[:, -1] = fixed[:, -1]
        return {
            "always-valid": lk.valid & ((lk.ci[0] > 0) | (lk.ci[1] < 0)),
            "always-valid lift": lk.valid & ((lk.lift_ci[0] > 0) | (lk.lift_ci[1] < 0)),
            "fixed-peeked": fixed,
            "fixed-end": end,
            "srm-peeked": lk.srm_p < st.SRM_ALPHA,  # srm().mismatch, what veer stops on
            "srm-chi2-peeked": lk.srm_chi2_p < st.SRM_ALPHA,
            "srm-chi2-end": np.pad((lk.srm_chi2_p[:, -1:] < st.SRM_ALPHA),
                                   ((0, 0), (lk.srm_chi2_p.shape[1] - 1, 0))),
        }


def per_second(x: Floats, on: Bools) -> tuple[Floats, Floats, Floats]:
    """Cumulative (count, sum, sum of squares) per look of the values where ``on``."""
    xm = np.where(on, x, 0.0)
    return (np.cumsum(on.sum(axis=2), axis=1, dtype=np.float64),
            np.cumsum(xm.sum(axis=2), axis=1), np.cumsum((xm * xm).sum(axis=2), axis=1))


@dataclass
class Check:
    """The vectorised looks recomputed with the module, look by look."""

    comparisons: int = 0
    none: int = 0
    max_rel: float = 0.0
    worst: str = ""
    fields: set[str] = field(default_factory=set)

    def close(self, name: str, got: float, want: float | None, where: str) -> None:
        self.fields.add(name)
        if want is None:
            assert math.isnan(got), f"{name} at {where}: module None, vectorised {got}"
            return
        if math.isinf(want) or math.isinf(got):
            assert got == want, f"{name} at {where}: module {want}, vectorised {got}"
            return
        rel = abs(got - want) / max(1.0, abs(want))
        if rel > self.max_rel:
            self.max_rel, self.worst = rel, f"{name} at {where}"
        assert rel <= TOLERANCE, f"{name} at {where}: module {want!r}, vectorised {got!r}"


def verify(x: Floats, on_new: Bools, lk: Looks, p: Params, scenario: str, check: Check
           ) -> None:
    """Assert the vectorised looks of the first runs equal the module's own functions."""
    for r in range(min(p.verify_runs, x.shape[0])):
        for t in range(x.shape[1]):
            xs, ns = x[r, :t + 1].ravel(), on_new[r, :t + 1].ravel()
            orig, new = st.Sample.of(xs[~ns]), st.Sample.of(xs[ns])
            where = f"{scenario} run {r} look {t + 1}"
            cmp = st.compare(orig, new, p.proportion, p.alpha)
            s = st.srm(orig.n, new.n, p.split)
            check.close("srm.p_value", float(lk.srm_p[r, t]), s.p_value, where)
            check.close("srm.chi2_p_value", float(lk.srm_chi2_p[r, t]), s.chi2_p_value, where)
            assert bool(lk.srm_p[r, t] < st.SRM_ALPHA) == s.mismatch, f"{where}: mismatch"
            check.comparisons += 1
            if cmp is None:
                assert not lk.valid[r, t], f"{where}: module None, vectorised a comparison"
                check.none += 1
                continue
            assert lk.valid[r, t], f"{where}: module a comparison, vectorised None"
            vals: dict[str, tuple[float, float | None]] = {
                "difference": (lk.diff[r, t], cmp.difference), "se": (lk.se[r, t], cmp.se),
                "ci[0]": (lk.ci[0][r, t], cmp.ci[0]), "ci[1]": (lk.ci[1][r, t], cmp.ci[1]),
                "fixed_ci[0]": (lk.fixed_ci[0][r, t], cmp.fixed_ci[0]),
                "fixed_ci[1]": (lk.fixed_ci[1][r, t], cmp.fixed_ci[1]),
                "p_value": (lk.p_value[r, t], cmp.p_value), "lift": (lk.lift[r, t], cmp.lift),
                "lift_ci[0]": (lk.lift_ci[0][r, t], cmp.lift_ci[0] if cmp.lift_ci else None),
                "lift_ci[1]": (lk.lift_ci[1][r, t], cmp.lift_ci[1] if cmp.lift_ci else None),
            }
            for name, (got, want) in vals.items():
                check.close(name, float(got), want, where)
            sig = bool(lk.ci[0][r, t] > 0 or lk.ci[1][r, t] < 0)
            assert sig == cmp.significant, f"{where}: significant differs"


def default_effect(p: Params) -> float:
    """The fixed-horizon test's minimum detectable effect at 80% power for the planned users,
    by bisection on ``st.users_needed`` (mean: absolute; proportion: relative lift)."""
    planned = p.seconds * p.users_per_second
    base = p.p_base
    sd0 = math.sqrt(base * (1 - base)) if p.proportion else 1.0

    def needed(e: float) -> int | None:
        if p.proportion:
            p1 = base * (1 + e)
            return st.users_needed(sd0, math.sqrt(p1 * (1 - p1)), base * e, p.split, p.alpha)
        return st.users_needed(sd0, sd0, e, p.split, p.alpha)

    lo, hi = 1e-9, (1 / base - 1) if p.proportion else 100.0
    for _ in range(100):
        mid = (lo + hi) / 2
        n = needed(mid)
        if n is not None and n <= planned:
            hi = mid
        else:
            lo = mid
    return hi


def simulate(p: Params) -> dict[str, Any]:
    rng = np.random.default_rng(p.seed)
    T, U = p.seconds, p.users_per_second
    chunk = max(1, CELLS_PER_CHUNK // (T * U))
    half = Halfwidth(p.alpha)
    outs = {"aa": Outcome(), "effect": Outcome()}
    check = Check()
    t0 = time.perf_counter()
    t_verify = 0.0
    done = 0
    while done < p.runs:
        c = min(chunk, p.runs - done)
        on_new = rng.random((c, T, U)) < p.split
        if p.proportion:
            u = rng.random((c, T, U))
            x_aa = (u < p.p_base).astype(np.float64)
            x_eff = np.where(on_new, u < p.p_base * (1 + p.effect), x_aa > 0).astype(np.float64)
        else:
            x_aa = 1.0 + rng.standard_normal((c, T, U))
            x_eff = x_aa + np.where(on_new, p.effect, 0.0)
        for key, x in (("aa", x_aa), ("effect", x_eff)):
            o, nw = Side.of(*per_second(x, ~on_new)), Side.of(*per_second(x, on_new))
            first_chunk = done == 0 and p.verify_runs > 0
            lk = compare_looks(o, nw, p.proportion, p.alpha, half, p.split)
            widths = {"always-valid": lk.ci[1] - lk.ci[0],
                      "always-valid lift": lk.lift_ci[1] - lk.lift_ci[0]}
            for method, reject in reject_methods(lk, p.alpha).items():
                outs[key].add(method, reject, lk.diff, widths.get(method))
            if first_chunk:
                tv = time.perf_counter()
                verify(x, on_new, lk, p, key, check)
                t_verify += time.perf_counter() - tv
        done += c
    wall = time.perf_counter() - t0
    return summarise(p, outs, check, wall, t_verify)


def rate(k: int, n: int) -> dict[str, Any]:
    ci = stats.binomtest(k, n).proportion_ci(0.95) if n else None
    return {"k": k, "n": n, "rate": k / n if n else math.nan,
            "ci95": [ci.low, ci.high] if ci else None}


def summarise(p: Params, outs: dict[str, Outcome], check: Check, wall: float,
              t_verify: float) -> dict[str, Any]:
    rows = []
    for method, title in (("always-valid", "always-valid (veer, compare().ci)"),
                          ("always-valid lift", "always-valid lift (veer, compare().lift_ci)"),
                          ("fixed-peeked", "fixed-horizon peeked every second"),
                          ("fixed-end", "fixed-horizon read once at the end"),
                          ("srm-peeked", "SRM sequential (veer, srm().mismatch) every second"),
                          ("srm-chi2-peeked", "SRM chi-square (srm().chi2_p_value) every second"),
                          ("srm-chi2-end", "SRM chi-square read once at the end")):
        f_aa, _ = outs["aa"].get(method)
        f_ef, pos = outs["effect"].get(method)
        row: dict[str, Any] = {"method": method, "title": title,
                               "false_positive": rate(int((f_aa >= 0).sum()), p.runs)}
        if method.startswith("srm"):
            row["fp_median_s"] = float(np.median(f_aa[f_aa >= 0] + 1)) if (f_aa >= 0).any() \
                else None
        else:
            row["power"] = rate(int(pos.sum()), p.runs)
            row["wrong_sign"] = int(((f_ef >= 0) & ~pos).sum())
            row["fp_zero_width"] = outs["aa"].zero(method)
            row["effect_zero_width"] = outs["effect"].zero(method)
            row["median_detect_s"] = float(np.median(f_ef[pos] + 1)) if pos.any() else None
        rows.append(row)
    return {"rows": rows, "wall_s": wall, "verify_s": t_verify,
            "verification": {"comparisons": check.comparisons, "none": check.none,
                             "max_rel_difference": check.max_rel, "worst": check.worst,
                             "fields": sorted(check.fields), "tolerance": TOLERANCE,
                             "runs_per_scenario": min(p.verify_runs, p.runs)}}


# -- memory -----------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def variants_for(n: int, split: float) -> list[Variant]:
    cut = round(split * 1000)
    return [NEW if i % 1000 < cut else ORIGINAL for i in range(n)]


def feed(o: Outcomes, users: list[str], variants: list[Variant]) -> None:
    req, hdr = o.request, o.header
    for v, u in zip(variants, users, strict=True):
        req(v, u, 1234, False)
        hdr(v, u, b"accuracy=0.9")


def fresh(n: int) -> Outcomes:
    o = Outcomes(max_users=n + 1)
    o.configure(header=["accuracy"], traffic=[], active=True, max_users=n + 1)
    return o


def memory(n: int, split: float, timing_users: int, repeats: int) -> dict[str, Any]:
    users = [f"user-{i}" for i in range(n)]
    variants = variants_for(n, split)
    gc.collect()
    # RSS first, untraced (tracemalloc's own bookkeeping would inflate it)
    r0 = rss_bytes()
    o = fresh(n)
    t0 = time.perf_counter()
    feed(o, users, variants)
    build_s = time.perf_counter() - t0
    rss = rss_bytes() - r0
    counts = {v: len(o.units[v]) for v in VARIANTS}
    table_counts = {v: len(t) for (_, v), t in o.tables.items()}
    assert sum(counts.values()) == n and sum(table_counts.values()) == n, "users lost"
    del o
    gc.collect()

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    o = fresh(n)
    feed(o, users, variants)
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - base
    before = tracemalloc.get_traced_memory()[0]
    o.units = {v: set() for v in VARIANTS}
    gc.collect()
    after_units = tracemalloc.get_traced_memory()[0]
    o.tables = {}
    gc.collect()
    after_tables = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    units_b, table_b = before - after_units, after_units - after_tables
    del o, users, variants
    gc.collect()
    return {"users": n, "split": split, "units_per_variant": counts,
            "table_users_per_variant": table_counts,
            "traced_total_bytes": total, "units_bytes": units_b, "table_bytes": table_b,
            "rss_bytes": rss, "build_s": build_s,
            "timing": timing(timing_users, split, repeats)}


def timing(n: int, split: float, repeats: int) -> dict[str, float]:
    """ns per hot-path call (best of ``repeats``; each includes the Python loop's cost)."""
    users = [f"user-{i}" for i in range(n)]
    pairs = list(zip(variants_for(n, split), users, strict=True))
    best: dict[str, float] = {}

    def clock(name: str, fn: Callable[[Variant, str], object]) -> None:
        gc.collect()
        t = time.perf_counter_ns()
        for v, u in pairs:
            fn(v, u)
        best[name] = min(best.get(name, math.inf), (time.perf_counter_ns() - t) / n)

    for _ in range(repeats):
        o = fresh(n)
        req, hdr = o.request, o.header

        def request(v: Variant, u: str, f: Callable[..., None] = req) -> None:
            f(v, u, 1234, False)

        def header(v: Variant, u: str, f: Callable[..., None] = hdr) -> None:
            f(v, u, b"accuracy=0.9")

        clock("empty loop (a no-op call)", lambda v, u: None)
        clock("user_id (murmur3 of the user)", lambda v, u: user_id(u))
        for seen in ("new", "seen"):
            clock(f"request, {seen} user", request)
        for seen in ("new", "seen"):
            clock(f"header, {seen} user", header)
    return best


# -- output -----------------------------------------------------------------------------
def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> str:
    """Plain-text table; columns from ``right`` on are right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) if i < right else c.rjust(w)
                          for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([line(header), "-+-".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def fmt_rate(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['rate']:.2%} [{lo:.2%}, {hi:.2%}] ({r['k']}/{r['n']})"


def fmt_effect(p: Params) -> str:
    if p.proportion:
        b = p.p_base
        return (f"+{p.effect:.1%} relative ({b:g} -> {b * (1 + p.effect):.4f}, "
                f"+{b * p.effect:.4f} absolute)")
    return f"+{p.effect:.4f} sd (mean 1 -> {1 + p.effect:.4f})"


def report_sim(p: Params, res: dict[str, Any], effect_default: bool) -> None:
    planned = p.seconds * p.users_per_second
    print(f"metric: {p.metric} ("
          + (f"Bernoulli({p.p_base:g}) per user" if p.proportion else "Normal(1, 1) per user")
          + f"); {p.runs} runs x {p.seconds} s x {p.users_per_second} users/s "
          f"= {planned} users per run, split {p.split:g} to new; a look every second "
          f"({p.seconds} looks); alpha {p.alpha:g}; TUNING_N {st.TUNING_N}; seed {p.seed}")
    print(f"effect on new: {fmt_effect(p)}"
          + (" = the fixed-horizon MDE at 80% power for the planned users (users_needed)"
             if effect_default else ""))
    print()
    rows = []
    for r in res["rows"]:
        if "power" in r:
            med = r["median_detect_s"]
            rows.append([r["title"], fmt_rate(r["false_positive"]), fmt_rate(r["power"]),
                         "-" if med is None else f"{med:g} s"])
        else:
            med = r["fp_median_s"]
            rows.append([r["title"], fmt_rate(r["false_positive"]), "(not a test of effect)",
                         "-" if med is None else f"(median false alarm {med:g} s)"])
    print(table(["method", "false positives (A/A; SRM: correct split) [95% CI]",
                 "power (by the end) [95% CI]", "median time to detect"], rows))
    wrong = {r["method"]: r["wrong_sign"] for r in res["rows"] if r.get("wrong_sign")}
    print()
    print("false positive: the interval excluded 0 (fixed: p < alpha; SRM: p < "
          f"{st.SRM_ALPHA:g}) at any look the method reads\n(every second, or only the last) "
          "of an A/A run; a look where compare() is None gives no verdict;\npower: the first "
          "exclusion was on the side of the effect at some look by the end;\nmedian time to "
          "detect: over the runs detected; 95% CI: Clopper-Pearson (scipy.stats.binomtest)")
    if wrong:
        print(f"first exclusion on the wrong side (effect runs): {wrong}")
    zero = {r["method"]: (r["fp_zero_width"], r["effect_zero_width"]) for r in res["rows"]
            if r.get("fp_zero_width") or r.get("effect_zero_width")}
    if zero:
        print("SUSPICIOUS: first exclusion by a zero-width interval (the smoothing and the "
              "None for two constant means should rule it out), runs (A/A, effect): "
              + ", ".join(f"{k} {a}, {b}" for k, (a, b) in zero.items()))
    v = res["verification"]
    print(f"\nverified against the module: {v['comparisons']} looks ({v['runs_per_scenario']} "
          f"runs x {p.seconds} looks x 2 scenarios; {v['none']} where compare() is None): "
          f"compare() {', '.join(f for f in v['fields'] if not f.startswith('srm.'))}, "
          f"srm().p_value, chi2_p_value and mismatch equal the vectorised values, max "
          f"relative difference "
          f"{v['max_rel_difference']:.1e} (tolerance {v['tolerance']:g}; at {v['worst']})")
    print(f"simulation wall time {res['wall_s']:.1f} s (of which verification "
          f"{res['verify_s']:.1f} s)")


def report_memory(m: dict[str, Any]) -> None:
    n = m["users"]
    per = {k: m[k] / n for k in ("units_bytes", "table_bytes", "traced_total_bytes",
                                 "rss_bytes")}
    print(f"{n} users (f'user-{{i}}'), split {m['split']:g}: units per variant "
          f"{m['units_per_variant']}, 'accuracy' table users per variant "
          f"{m['table_users_per_variant']}; fed through Outcomes.request + Outcomes.header "
          f"in {m['build_s']:.1f} s untraced ({m['build_s'] / n * 1e9:.0f} ns per user)")
    print()
    rows = [["units sets (set[int] per variant)", f"{per['units_bytes']:.1f}",
             f"{per['units_bytes'] * 1e6 / 2**20:.1f} MiB"],
            ["one metric's UserTables (dict + 3 arrays)", f"{per['table_bytes']:.1f}",
             f"{per['table_bytes'] * 1e6 / 2**20:.1f} MiB"],
            ["all traced (tracemalloc)", f"{per['traced_total_bytes']:.1f}",
             f"{per['traced_total_bytes'] * 1e6 / 2**20:.1f} MiB"],
            ["RSS growth (untraced build)", f"{per['rss_bytes']:.1f}",
             f"{per['rss_bytes'] * 1e6 / 2**20:.1f} MiB"]]
    print(table(["structure", "bytes per user", "per 1M users"], rows))
    print("\nunits / table: the traced bytes freed when that structure is dropped (the ints "
          "it holds included);\ntracemalloc counts the bytes asked for: pymalloc rounds each "
          "small object up to 16 bytes (a 64-bit\nuid int asks 36, takes 48), so RSS is the "
          "real footprint; set and dict sizes grow in steps, so\nbytes per user depend on N.")
    tm = m["timing"]
    print()
    base = tm["empty loop (a no-op call)"]
    rows = [[k, f"{v:.0f}", "-" if k.startswith("empty loop") else f"{v - base:.0f}"]
            for k, v in tm.items()]
    print(table(["hot-path call", "ns per call (loop, wrapper incl.)", "minus the empty loop"],
                rows))


def main(argv: Sequence[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    a.add_argument("--metric", choices=("mean", "proportion"), default="mean")
    a.add_argument("--runs", type=int, default=2000, help="runs per scenario (0: no simulation)")
    a.add_argument("--seconds", type=int, default=600, help="experiment length (one look/s)")
    a.add_argument("--users-per-second", type=int, default=20)
    a.add_argument("--split", type=float, default=0.5, help="share of users on new")
    a.add_argument("--alpha", type=float, default=st.ALPHA)
    a.add_argument("--effect", type=float, default=None,
                   help="effect on new: mean, in sd units (absolute); proportion, relative "
                        "lift (0.2 = +20%%); default: the fixed-horizon MDE at 80%% power")
    a.add_argument("--p", type=float, default=0.1,
                   help="proportion metric: the rate on original (default 0.1)")
    a.add_argument("--seed", type=int, default=20240601)
    a.add_argument("--verify-runs", type=int, default=20,
                   help="runs per scenario recomputed with compare() look by look")
    a.add_argument("--memory-users", type=int, default=1_000_000,
                   help="users fed to Outcomes for the memory section (0: skip it)")
    a.add_argument("--timing-users", type=int, default=100_000)
    a.add_argument("--timing-repeats", type=int, default=3)
    a.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    args = a.parse_args(argv)
    if not 0 < args.split < 1:
        a.error("--split must be in (0, 1)")
    if not 0 < args.p < 1:
        a.error("--p must be in (0, 1)")
    if args.runs < 0 or args.seconds < 1 or args.users_per_second < 1:
        a.error("--runs, --seconds and --users-per-second must be positive")

    out: dict[str, Any] = {"command": shlex.join(sys.orig_argv)}
    print("# veer experiment statistics: error rates under continuous peeking, memory per "
          "user\n")
    print(f"command: {out['command']}")
    print(f"Python {platform.python_version()}, numpy {np.__version__}, scipy "
          f"{scipy.__version__}; {os.cpu_count()} CPUs")
    if args.runs:
        p = Params(args.metric, args.runs, args.seconds, args.users_per_second, args.split,
                   args.alpha, 0.0, args.p, args.seed, args.verify_runs)
        effect_default = args.effect is None
        eff = default_effect(p) if effect_default else args.effect
        p = Params(**{**{f: getattr(p, f) for f in p.__dataclass_fields__}, "effect": eff})
        print("\n## Part 1-2: false positives under peeking, and power\n")
        res = simulate(p)
        report_sim(p, res, effect_default)
        out["simulation"] = {"params": {f: getattr(p, f) for f in p.__dataclass_fields__},
                             "effect_is_mde": effect_default, **res}
    if args.memory_users:
        print("\n## Part 3: memory per user and hot-path cost\n")
        m = memory(args.memory_users, args.split, args.timing_users, args.timing_repeats)
        report_memory(m)
        out["memory"] = m
    if args.json:
        text = json.dumps(out, indent=2, default=float)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
