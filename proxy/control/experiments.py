"""An experiment's results and decision, from per-user outcomes; the runner that watches them.

``results`` is a pure function of the experiment config, the ``Outcomes``
(this process's, or merged across workers and replicas) and the time it has
run: users per variant, the sample-ratio check, and per metric each variant's
users and mean with the difference, the always-valid interval (the one the
decision reads, valid at every look) and the fixed-horizon interval and
p-value beside it, the relative lift, and the users needed for the metric's
minimum detectable effect with an estimate of when they will be reached.

The decision (Spotify Confidence's rule): **ship** when a primary metric is
confidently better and no primary or guardrail is confidently worse (a
guardrail by more than its margin); **stop** when one is, or when the split
does not match (SRM: the assignment or the logging is broken, so no result can
be trusted); otherwise **keep running**.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from proxy.config.experiment import Experiment, Metric
from proxy.control import experiment_stats as st
from proxy.control.state import Event
from proxy.routing.variant import NEW, ORIGINAL
from proxy.telemetry.outcomes import Outcomes

SHIP, KEEP, STOP = "ship", "keep running", "stop"
HISTORY = 600  # points kept for the dashboard's lift-over-time chart


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    return None if pair is None else [_finite(pair[0]), _finite(pair[1])]


def metric_result(exp: Experiment, m: Metric, outcomes: Outcomes, elapsed: float
                  ) -> dict[str, Any]:
    """One metric's numbers (JSON-able; infinities become null)."""
    proportion = m.type == "proportion"
    sides = {v: st.Sample.of(outcomes.table(m.name, v).values(proportion))
             if (m.name, v) in outcomes.tables else st.Sample(0, 0.0, 0.0)
             for v in (ORIGINAL, NEW)}
    orig, new = sides[ORIGINAL], sides[NEW]
    cmp = st.compare(orig, new, proportion, exp.alpha)
    out: dict[str, Any] = {
        "type": m.type, "source": m.source, "goal": m.goal, "role": m.role,
        **({"margin": m.margin} if m.role == "guardrail" else {}),
        ORIGINAL: {"n": orig.n, "mean": _finite(orig.mean), "sd": _finite(math.sqrt(orig.var))},
        NEW: {"n": new.n, "mean": _finite(new.mean), "sd": _finite(math.sqrt(new.var))},
        "difference": None, "ci": None, "p_value": None, "fixed_ci": None,
        "lift": None, "lift_ci": None, "verdict": "inconclusive",
    }
    if cmp is not None:
        out.update(difference=cmp.difference, ci=_pair(cmp.ci), p_value=cmp.p_value,
                   fixed_ci=_pair(cmp.fixed_ci), lift=_finite(cmp.lift),
                   lift_ci=_pair(cmp.lift_ci),
                   verdict=_verdict(m, cmp) if min(orig.n, new.n) >= exp.min_users
                   else "inconclusive")
    out["sample_size"] = _sample_size(exp, m, orig, new, elapsed)
    return out


def _oriented(pair: tuple[float, float], goal: str) -> tuple[float, float]:
    """An interval turned so that positive is better."""
    return pair if goal == "increase" else (-pair[1], -pair[0])


def _verdict(m: Metric, cmp: st.Comparison) -> str:
    """better / worse / inconclusive, by the always-valid interval and the goal; a guardrail
    with a margin is worse only when confidently worse than original by more than it."""
    lo, hi = _oriented(cmp.ci, m.goal)
    if m.role == "guardrail" and m.margin > 0 and cmp.lift_ci is not None:
        llo, lhi = _oriented(cmp.lift_ci, m.goal)
        if lhi < -m.margin:
            return "worse"
        return "better" if llo > 0 else "inconclusive"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "inconclusive"


def _sample_size(exp: Experiment, m: Metric, orig: st.Sample, new: st.Sample,
                 elapsed: float) -> dict[str, Any] | None:
    if m.mde is None:
        return None
    share = exp.split_bp / 10000
    effect = m.mde * abs(orig.mean)
    sd_o = math.sqrt(orig.var)
    sd_n = math.sqrt(new.var) if new.n > 1 else sd_o
    needed = st.users_needed(sd_o, sd_n, effect, share, exp.alpha, exp.power) \
        if orig.n > 1 else None
    now = orig.n + new.n
    eta = None
    if needed is not None and now >= needed:
        eta = 0.0
    elif needed is not None and now > 0 and elapsed > 0:
        eta = (needed - now) / (now / elapsed)
    return {"mde": m.mde, "power": exp.power, "users_needed": needed, "users_now": now,
            "eta_s": eta}


def decide(exp: Experiment, metrics: dict[str, dict[str, Any]], srm: st.Srm
           ) -> tuple[str, str]:
    """ship / keep running / stop, and why."""
    if srm.mismatch:
        return STOP, (f"sample ratio mismatch (always-valid p={srm.p_value:.2g} < "
                      f"{st.SRM_ALPHA}): users "
                      "per variant do not match the split, so no result can be trusted")
    worse = [name for name, r in metrics.items() if r["verdict"] == "worse"]
    if worse:
        return STOP, "confidently worse: " + ", ".join(worse)
    better = [m.name for m in exp.metrics
              if m.role == "primary" and metrics[m.name]["verdict"] == "better"]
    if better:
        return SHIP, "confidently better: " + ", ".join(better) + "; no metric worse"
    return KEEP, (f"no primary metric is confidently better or worse yet (each needs "
                  f">= {exp.min_users} users per variant)")


def results(exp: Experiment, outcomes: Outcomes, elapsed: float) -> dict[str, Any]:
    """Everything ``GET /experiments/{name}/results`` answers."""
    units = {v: len(outcomes.units[v]) for v in (ORIGINAL, NEW)}
    share = exp.split_bp / 10000
    srm = st.srm(units[ORIGINAL], units[NEW], share)
    metrics = {m.name: metric_result(exp, m, outcomes, elapsed) for m in exp.metrics}
    action, reason = decide(exp, metrics, srm)
    total = units[ORIGINAL] + units[NEW]
    return {
        "name": exp.name, "split": exp.split_bp / 100, "elapsed_s": elapsed,
        "alpha": exp.alpha,
        "variants": {v: {"units": units[v]} for v in (ORIGINAL, NEW)},
        "srm": {"p_value": srm.p_value, "mismatch": srm.mismatch,
                "chi2_p_value": srm.chi2_p_value, "expected_new": share,
                "observed_new": units[NEW] / total if total else None},
        "metrics": metrics,
        "decision": {"action": action, "reason": reason},
        "malformed": outcomes.malformed,
        "dropped": {"units": outcomes.units_dropped,
                    "values": sum(t.dropped for t in outcomes.tables.values())},
    }


@dataclass(frozen=True, slots=True)
class Point:
    """One look at the experiment, for the dashboard's chart."""

    time: float
    lifts: dict[str, tuple[float | None, list[float | None] | None]]  # metric: lift, lift_ci
    srm_p: float

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "srm_p": self.srm_p,
                "lifts": {k: {"lift": v[0], "ci": v[1]} for k, v in self.lifts.items()}}


class ExperimentRunner:
    """Looks at an experiment every second: history for the chart, an event per decision."""

    def __init__(self, exp: Experiment, started: float) -> None:
        self.exp = exp
        self.started = started
        self.history: deque[Point] = deque(maxlen=HISTORY)
        self.decision: str | None = None
        self.last: dict[str, Any] | None = None

    def look(self, outcomes: Outcomes, now: float) -> list[Event]:
        """Compute the results now; an event when the decision changed."""
        res = results(self.exp, outcomes, max(0.0, now - self.started))
        self.last = res
        self.history.append(Point(now, {k: (r["lift"], r["lift_ci"])
                                         for k, r in res["metrics"].items()},
                                  res["srm"]["p_value"]))
        action = res["decision"]["action"]
        if action == self.decision:
            return []
        before, self.decision = self.decision, action
        return [Event(now, "experiment-decision", before or "", action,
                      res["decision"]["reason"], "experiment",
                      {"experiment": self.exp.name, "units": res["variants"],
                       "metrics": {k: {"lift": r["lift"], "ci": r["ci"]}
                                   for k, r in res["metrics"].items()}})]
