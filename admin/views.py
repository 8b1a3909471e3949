"""What the admin API shows: status, analysis and events as plain JSON-ready data.

Read-only: nothing here changes the runtime.
"""

from __future__ import annotations

import time
from typing import Any

import proxy
from proxy.control import analysis
from proxy.control.experiments import ExperimentRunner, results
from proxy.control.state import Event
from proxy.routing.variant import NEW, ORIGINAL, PAIRED, SHADOW, VARIANTS
from proxy.runtime.runtime import Runtime
from proxy.telemetry.latency import WindowStats

WINDOW = 10  # seconds behind "current" rates and percentiles


def weights(rt: Runtime) -> dict[str, float]:
    """Percent of users on each variant."""
    return {ORIGINAL: (10000 - rt.live.new_weight_bp) / 100, NEW: rt.live.new_weight_bp / 100}


def _stats(s: WindowStats) -> dict[str, float | int]:
    return s.to_dict()


def status(rt: Runtime, started: float) -> dict[str, Any]:
    """Rollout, weights and per-variant numbers (current window and since the phase began)."""
    view = rt.view
    variants = {}
    for v in VARIANTS:
        w = view.window(v, WINDOW)
        variants[v] = {"rate": w.requests / WINDOW, "in_flight": view.in_flight(v),
                       "requests_total": view.requests_total(v), "window": _stats(w),
                       "since_phase": _stats(view.since_marked(v))}
    out = {"time": time.time(), "uptime_s": time.time() - started, "weights": weights(rt),
           "rollout": rollout(rt), "variants": variants, "window_s": WINDOW,
           "build": proxy.build()}
    out["endpoints"] = endpoints(rt)
    mirrored = shadow(rt)
    if mirrored is not None:
        out["shadow"] = mirrored
    if rt.workers is not None:
        out["workers"] = {"count": rt.config.workers, "alive": rt.workers.alive,
                          "restarts": rt.workers.restarts}
    if rt.cluster is not None:
        out["cluster"] = rt.cluster.describe()
    if rt.experiment is not None:
        last = rt.experiment.last
        out["experiment"] = {"name": rt.experiment.exp.name,
                             "split": rt.experiment.exp.split_bp / 100,
                             "decision": last["decision"] if last else None,
                             "srm_mismatch": last["srm"]["mismatch"] if last else None,
                             "results": f"/experiments/{rt.experiment.exp.name}/results"}
    return out


def shadow(rt: Runtime) -> dict[str, Any] | None:
    """Mirrored traffic: the shadow's answers (from new) beside original's answers to the
    same requests, since the phase began; None when nothing is or was mirrored."""
    view = rt.view
    counts = view.counters(SHADOW)
    mirror_bp = rt.live.mirror_bp
    if not mirror_bp and not counts.requests and not counts.dropped:
        return None
    sh, pa = view.since_marked(SHADOW), view.since_marked(PAIRED)
    mismatches = counts.mismatches
    return {
        "mirror": mirror_bp / 100,
        "requests_total": counts.requests, "mismatches_total": mismatches,
        "agreement": 1 - mismatches / counts.requests if counts.requests else None,
        "dropped_total": counts.dropped, "in_flight": len(rt.mirror.in_flight),
        "since_phase": {"shadow": _stats(sh), "paired": _stats(pa),
                        "p50_difference_s": sh.p50 - pa.p50 if sh.requests else None,
                        "p99_difference_s": sh.p99 - pa.p99 if sh.requests else None,
                        "error_rate_difference": sh.error_rate - pa.error_rate
                        if sh.requests else None},
    }


def endpoints(rt: Runtime) -> list[dict[str, Any]]:
    """This host's endpoints: in rotation or not, and why (passive ejection, or the active
    health checks and what their last probe saw)."""
    now = rt.loop.time()
    active = rt.config.health.active is not None
    out = []
    for variant, ep in rt.endpoints():
        row: dict[str, Any] = {"variant": variant, "endpoint": ep.label,
                               "healthy": ep.healthy(now), "outstanding": ep.outstanding,
                               "ejections": ep.ejections}
        if active:
            row["active"] = {"down": ep.probe_down, "last": ep.probe or None,
                             "streak": ep.probe_streak}
        out.append(row)
    return out


def rollout(rt: Runtime) -> dict[str, Any] | None:
    """The rollout's phase, gates with live verdicts, and plan; None without a rollout."""
    if rt.rollout is None:
        return None
    c = rt.rollout.controller
    st = c.state
    phase = c.phase
    # Stopped by a rollback or abort: the phase's clock stopped then, and what stopped it
    # is shown, not a phase that looks as if it were still running.
    stopped = dict(st.stopped) if st.stopped else None
    elapsed = (float(stopped["elapsed_s"]) if stopped is not None
               else max(0.0, time.time() - st.phase_started))
    return {
        "name": c.rollout.name, "status": str(st.status),
        "phase": {"index": st.phase, "name": phase.name, "weight": phase.weight_bp / 100,
                  "duration_s": phase.duration, "elapsed_s": elapsed,
                  "clock": "stopped" if stopped is not None else "running",
                  "approval_required": phase.approval, "approved": st.approved,
                  "on_breach": phase.on_breach},
        "stopped": stopped,
        "weight": st.weight_bp / 100,
        "gates": [f.to_dict() for f in c.findings],
        "verdict": str(analysis.overall(c.findings)) if c.findings else "inconclusive",
        "phases": [{"name": p.name, "weight": p.weight_bp / 100, "duration_s": p.duration}
                   for p in c.rollout.phases],
        "deny_users": list(st.deny_users),
    }


def analysis_view(rt: Runtime) -> dict[str, Any]:
    """Both variants side by side since the phase began, with confidence intervals and the
    Mann-Whitney comparison of latency."""
    side = {}
    for v in VARIANTS:
        s = rt.view.since_marked(v)
        side[v] = {**_stats(s), "error_rate_ci95": [
            analysis.lower_bound(s.errors, s.requests, 0.025),
            analysis.upper_bound(s.errors, s.requests, 0.025)]}
    shadow_phase = rt.rollout is not None and rt.rollout.controller.phase.shadow
    test = analysis.mann_whitney_binned(*(rt.view.latency_histograms(SHADOW, PAIRED)
                                          if shadow_phase else rt.view.latency_histograms()))
    ro = rollout(rt)
    return {
        "variants": side,
        **({"shadow": mirrored} if (mirrored := shadow(rt)) is not None else {}),
        "mann_whitney": {"u": test.u, "p_value": test.p_value, "shift_s": test.shift,
                         "n_new": test.n_new, "n_original": test.n_original},
        "gates": ro["gates"] if ro else [],
        "verdict": ro["verdict"] if ro else "inconclusive",
        "phase": ro["phase"]["name"] if ro else None,
    }


def events(all_events: list[Event], kind: str | None, actor: str | None, since: float | None,
           limit: int, offset: int) -> dict[str, Any]:
    """Newest first, filtered, one page."""
    picked = [e for e in reversed(all_events)
              if (kind is None or e.kind == kind) and (actor is None or e.actor == actor)
              and (since is None or e.time >= since)]
    page = picked[offset: offset + limit]
    more = offset + limit < len(picked)
    return {"events": [e.to_dict() for e in page], "total": len(picked),
            "next_offset": offset + limit if more else None}


def experiment_results(rt: Runtime, runner: ExperimentRunner) -> dict[str, Any]:
    """``GET /experiments/{name}/results``: computed now from the merged outcomes."""
    return results(runner.exp, rt.view.outcomes, max(0.0, rt.clock.wall() - runner.started))


def experiments(rt: Runtime) -> list[dict[str, Any]]:
    """``GET /experiments``: each configured experiment, its split, metrics and decision."""
    runner = rt.experiment
    if runner is None:
        return []
    exp = runner.exp
    outcomes = rt.view.outcomes
    return [{"name": exp.name, "split": exp.split_bp / 100,
             "metrics": [{"name": m.name, "type": m.type, "source": m.source, "goal": m.goal,
                          "role": m.role} for m in exp.metrics],
             "units": {v: len(outcomes.units[v]) for v in VARIANTS},
             "started": runner.started,
             "decision": runner.decision or "keep running",
             "results": f"/experiments/{exp.name}/results"}]
