"""Gates on any metric (``gates: {metrics: [...]}``): pure verdicts from always-valid bounds.

A per-user metric (header, events, traffic) is judged on each variant's
per-user values; a Prometheus metric on its polls since the phase began. The
bounds are the always-valid intervals of ``experiment_stats``, which hold at
every look at once, so a gate read four times a second for hours does not
inflate its false verdicts: a **breach** needs the interval at
``BREACH_ALPHA`` to be wholly on the wrong side of the limit, a **pass** the
interval at ``PASS_ALPHA`` wholly on the right side with ``min_samples``, and
anything else (no data, a Prometheus error) is **inconclusive**.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from proxy.config.experiment import MetricGate
from proxy.control import experiment_stats as st
from proxy.control.analysis import Finding, Verdict, overall
from proxy.routing.variant import NEW, ORIGINAL, Variant
from proxy.telemetry.outcomes import Outcomes

PASS_ALPHA = 0.05
BREACH_ALPHA = 0.001  # time-uniform: over every look of the phase, not per look


class PolledMetrics(Protocol):
    """Metrics polled from elsewhere (``proxy.telemetry.prometheus``)."""

    def samples(self, metric: str, variant: Variant, since: float
                ) -> tuple[list[float], str | None]:
        """Values since ``since`` (wall seconds) and the current problem, if any."""
        ...


def samples_for(g: MetricGate, outcomes: Outcomes, polled: PolledMetrics | None,
                since: float) -> tuple[st.Sample, st.Sample, str | None]:
    """(original, new, problem) for gate ``g``."""
    if g.source == "prometheus":
        if polled is None:
            return st.Sample(0, 0, 0), st.Sample(0, 0, 0), "not polled"
        orig, p_orig = polled.samples(g.name, ORIGINAL, since)
        new, p_new = polled.samples(g.name, NEW, since)
        problem = p_new if p_new is not None else (
            p_orig if g.max_increase is not None or g.max_decrease is not None else None)
        return (st.Sample.of(np.asarray(orig, dtype=np.float64)),
                st.Sample.of(np.asarray(new, dtype=np.float64)), problem)
    proportion = g.type == "proportion"
    sides = [st.Sample.of(outcomes.tables[(g.name, v)].values(proportion))
             if (g.name, v) in outcomes.tables else st.Sample(0, 0, 0) for v in (ORIGINAL, NEW)]
    return sides[0], sides[1], None


def judge_metric_gate(g: MetricGate, orig: st.Sample, new: st.Sample,
                      problem: str | None = None) -> Finding:
    """One metric gate's verdict (every bound it sets must pass; any breach breaches)."""
    label = f"metric:{g.name}"
    if problem is not None:
        return Finding(label, Verdict.INCONCLUSIVE, new.mean, _limit(g),
                       f"{g.name}: {problem} (inconclusive, never a pass)")
    parts: list[Finding] = []
    enough = new.n >= g.min_samples
    what = "polls" if g.source == "prometheus" else "users"
    proportion = g.type == "proportion"
    pass_lo, pass_hi = st.mean_interval(new, PASS_ALPHA, proportion)
    breach_lo, breach_hi = st.mean_interval(new, BREACH_ALPHA, proportion)
    if g.max is not None:
        parts.append(_bounded(label, new.mean, g.max, breach_lo > g.max,
                              enough and pass_hi < g.max,
                              f"{g.name} mean {new.mean:.6g} over {new.n} {what}, 95% bound "
                              f"<= {pass_hi:.6g}, limit max {g.max:g}"))
    if g.min is not None:
        parts.append(_bounded(label, new.mean, g.min, breach_hi < g.min,
                              enough and pass_lo > g.min,
                              f"{g.name} mean {new.mean:.6g} over {new.n} {what}, 95% bound "
                              f">= {pass_lo:.6g}, limit min {g.min:g}"))
    if g.max_increase is not None or g.max_decrease is not None:
        passed = st.compare(orig, new, g.type == "proportion", PASS_ALPHA)
        breached = st.compare(orig, new, g.type == "proportion", BREACH_ALPHA)
        both = enough and orig.n >= g.min_samples
        if passed is None or breached is None or passed.lift_ci is None \
                or breached.lift_ci is None:
            parts.append(Finding(label, Verdict.INCONCLUSIVE, 0.0, _limit(g),
                                 f"{g.name}: {orig.n}/{new.n} {what}, no lift yet"))
        else:
            lift = passed.lift or 0.0
            detail = (f"{g.name} lift {lift:+.2%} (95% always-valid {passed.lift_ci[0]:+.2%}"
                      f"..{passed.lift_ci[1]:+.2%}) over {orig.n}/{new.n} {what}")
            if g.max_increase is not None:
                parts.append(_bounded(label, lift, g.max_increase,
                                      breached.lift_ci[0] > g.max_increase,
                                      both and passed.lift_ci[1] < g.max_increase,
                                      f"{detail}, limit +{g.max_increase:.2%}"))
            if g.max_decrease is not None:
                parts.append(_bounded(label, lift, -g.max_decrease,
                                      breached.lift_ci[1] < -g.max_decrease,
                                      both and passed.lift_ci[0] > -g.max_decrease,
                                      f"{detail}, limit -{g.max_decrease:.2%}"))
    verdict = overall(parts)
    chosen = next((p for p in parts if p.verdict is verdict), parts[0])
    return Finding(label, verdict, chosen.observed, chosen.limit,
                   "; ".join(p.detail for p in parts))


def _limit(g: MetricGate) -> float:
    for v in (g.max, g.min, g.max_increase, g.max_decrease):
        if v is not None:
            return v
    return 0.0


def _bounded(label: str, observed: float, limit: float, breach: bool, passes: bool,
             detail: str) -> Finding:
    verdict = Verdict.BREACH if breach else Verdict.PASS if passes else Verdict.INCONCLUSIVE
    return Finding(label, verdict, observed, limit, detail)
