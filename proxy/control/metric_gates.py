"""Gates on any metric (``gates: {metrics: [...]}``): pure verdicts from always-valid bounds.

A per-user metric (header, traffic) is judged on each variant's per-user
values by the always-valid intervals of ``experiment_stats``, which hold at
every look at once, so a gate read four times a second for hours does not
inflate its false verdicts: a **breach** needs the interval at
``BREACH_ALPHA`` to be wholly on the wrong side of the limit, a **pass** the
interval at ``PASS_ALPHA`` wholly on the right side with ``min_samples`` users.
A Prometheus metric is a gauge, judged on its recent polls
(``judge_polled_gate``). Anything else (no data, a Prometheus error) is
**inconclusive**.
"""

from __future__ import annotations

from typing import Protocol

from proxy.config.experiment import MetricGate
from proxy.control import experiment_stats as st
from proxy.control.analysis import Finding, Verdict, overall
from proxy.routing.variant import NEW, ORIGINAL, Variant
from proxy.telemetry.outcomes import Outcomes

PASS_ALPHA = 0.05
BREACH_ALPHA = 0.001  # time-uniform: over every look of the phase, not per look
BREACH_POLLS = 3  # polls in a row beyond a gauge's limit that breach (Flagger's threshold)


class PolledMetrics(Protocol):
    """Metrics polled from elsewhere (``proxy.telemetry.prometheus``)."""

    def samples(self, metric: str, variant: Variant, since: float
                ) -> tuple[list[float], str | None]:
        """Values since ``since`` (wall seconds) and the current problem, if any."""
        ...


def judge_gate(g: MetricGate, outcomes: Outcomes, polled: PolledMetrics | None,
               since: float) -> Finding:
    """Gate ``g`` now: a per-user metric on every user's values, a polled one on its polls
    since ``since`` (the phase's start, wall seconds)."""
    if g.source == "prometheus":
        if polled is None:
            return judge_polled_gate(g, [], [], "not polled")
        orig, p_orig = polled.samples(g.name, ORIGINAL, since)
        new, p_new = polled.samples(g.name, NEW, since)
        relative = g.max_increase is not None or g.max_decrease is not None
        return judge_polled_gate(g, orig, new, p_new or (p_orig if relative else None))
    proportion = g.type == "proportion"
    orig_s, new_s = (st.Sample.of(outcomes.tables[(g.name, v)].values(proportion))
                     if (g.name, v) in outcomes.tables else st.Sample(0, 0, 0)
                     for v in (ORIGINAL, NEW))
    return judge_metric_gate(g, orig_s, new_s)


def judge_polled_gate(g: MetricGate, orig: list[float], new: list[float],
                      problem: str | None = None) -> Finding:
    """A gauge read from Prometheus (memory, cache hit rate) is what the release reports
    *now*, not a sample of a mean: an average over the phase would pass a release whose
    memory just tripled. So: **breach** when the last ``BREACH_POLLS`` polls are all
    beyond the limit; **pass** when none of the last ``min_samples`` polls is (and there
    are that many); otherwise, or on any problem, **inconclusive**. A relative bound reads
    new's poll against original's poll of the same round."""
    label = f"metric:{g.name}"
    if problem is not None:
        return Finding(label, Verdict.INCONCLUSIVE, new[-1] if new else 0.0, _limit(g),
                       f"{g.name}: {problem} (inconclusive, never a pass)")
    checks: list[tuple[str, list[float], float, bool]] = []  # what, readings, limit, above
    if g.max is not None:
        checks.append(("value", new, g.max, True))
    if g.min is not None:
        checks.append(("value", new, g.min, False))
    if g.max_increase is not None or g.max_decrease is not None:
        k = min(len(orig), len(new))  # the rounds both answered, newest last
        lifts = [n / o - 1 for o, n in zip(orig[len(orig) - k:], new[len(new) - k:],
                                           strict=True) if o != 0]
        if g.max_increase is not None:
            checks.append(("lift", lifts, g.max_increase, True))
        if g.max_decrease is not None:
            checks.append(("lift", lifts, -g.max_decrease, False))
    parts = []
    for what, readings, limit, above in checks:
        def beyond(x: float, limit: float = limit, above: bool = above) -> bool:
            return x > limit if above else x < limit
        recent, window = readings[-BREACH_POLLS:], readings[-g.min_samples:]
        shown = ", ".join(f"{x:.6g}" for x in recent)
        side = "max" if above else "min"
        detail = (f"{g.name} {what}: last polls {shown or 'none'} ({len(readings)} this "
                  f"phase), limit {side} {limit:g}")
        if len(recent) == BREACH_POLLS and all(beyond(x) for x in recent):
            verdict = Verdict.BREACH
        elif len(window) >= g.min_samples and not any(beyond(x) for x in window):
            verdict = Verdict.PASS
        else:
            verdict = Verdict.INCONCLUSIVE
        parts.append(Finding(label, verdict, readings[-1] if readings else 0.0, limit, detail))
    verdict = overall(parts)
    chosen = next((p for p in parts if p.verdict is verdict), parts[0])
    return Finding(label, verdict, chosen.observed, chosen.limit,
                   "; ".join(p.detail for p in parts))


def judge_metric_gate(g: MetricGate, orig: st.Sample, new: st.Sample,
                      problem: str | None = None) -> Finding:
    """A per-user metric gate's verdict (every bound it sets must pass; any breach
    breaches)."""
    label = f"metric:{g.name}"
    if problem is not None:
        return Finding(label, Verdict.INCONCLUSIVE, new.mean, _limit(g),
                       f"{g.name}: {problem} (inconclusive, never a pass)")
    parts: list[Finding] = []
    enough = new.n >= g.min_samples
    what = "users"
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
