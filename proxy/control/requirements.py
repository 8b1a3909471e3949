"""How much traffic each gate needs before it can pass, and so how soon a plan can finish.

Pure arithmetic on the same bounds the controller judges with (``analysis``): a
rate gate passes once the exact 95% upper bound of the rate is under its limit,
so with no failure at all it needs the smallest n with 1 - 0.05**(1/n) < limit,
n > ln(0.05) / ln(1 - limit): 299 requests for 1% (a p99 gate), 2,995 for 0.1%.
Every failure raises that number, so these are floors: a gate can never pass sooner.
A gate against original is the exception: its number assumes original error-free too,
and errors of original's own let it pass sooner (never before ``min_requests``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.config.plan import Phase, Rollout
from proxy.control.analysis import PASS_ALPHA, upper_bound


def trials_to_pass(limit: float, min_trials: int, alpha: float = PASS_ALPHA) -> int | None:
    """The fewest trials, none of them a hit, for which the upper bound at ``alpha`` is
    under ``limit`` (and at least ``min_trials``); None when no number suffices."""
    if limit <= 0:
        return None  # the bound is above 0 for every n
    if limit >= 1:
        return max(1, min_trials)
    n = max(1, math.ceil(math.log(alpha) / math.log1p(-limit)))
    while upper_bound(0, n, alpha) >= limit:  # the closed form's float rounding, both ways
        n += 1
    while n > 1 and upper_bound(0, n - 1, alpha) < limit:
        n -= 1
    return max(n, min_trials)


@dataclass(frozen=True, slots=True)
class GateNeed:
    """One gate's floor: ``requests`` on new (None: it can never pass) and ``seconds`` of
    polling (a Prometheus gate)."""

    gate: str
    requests: int | None
    text: str
    seconds: float = 0.0


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.10g}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:g}ms"


def phase_needs(phase: Phase) -> list[GateNeed]:
    """Each of the phase's gates with the requests on new it needs before it can pass."""
    g = phase.gates
    on = "mirrored requests" if phase.shadow else "requests on new"
    out: list[GateNeed] = []
    # At weight 100 (and not mirroring) original serves no one: a gate against it never
    # sees the requests it needs there, so the phase can never pass.
    no_baseline = phase.weight_bp == 10000 and not phase.shadow

    def rate_gate(gate: str, limit: float, what: str, none: str) -> None:
        n = trials_to_pass(limit, g.min_requests)
        text = (f"{gate} {what} can pass after >= {n:,} {on} with {none}" if n is not None
                else f"{gate} {what} can never pass (no bound is under a limit of 0)")
        out.append(GateNeed(gate, n, text))

    if g.max_error_rate is not None:
        rate_gate("max_error_rate", g.max_error_rate, _pct(g.max_error_rate), "no error")
    if g.max_p99 is not None:
        rate_gate("max_p99", 0.01, f"{_ms(g.max_p99)} at 99%", "none slower")
    if g.max_p999 is not None:
        rate_gate("max_p999", 0.001, f"{_ms(g.max_p999)} at 99.9%", "none slower")
    if g.max_status_mismatch is not None:
        rate_gate("max_status_mismatch", g.max_status_mismatch, _pct(g.max_status_mismatch),
                  "no status mismatch")
    never_here = "can never pass at weight 100: original serves no one to compare with"
    if g.max_error_rate_increase is not None:
        # Both bounds at PASS_ALPHA / 2. With no error on either side the gap is new's own
        # bound; errors on original lower the gap, down to min_requests at the least.
        n = trials_to_pass(g.max_error_rate_increase, g.min_requests, PASS_ALPHA / 2)
        what = f"max_error_rate_increase {_pct(g.max_error_rate_increase)}"
        if no_baseline:
            out.append(GateNeed("max_error_rate_increase", None, f"{what} {never_here}"))
        elif n is None:
            out.append(GateNeed("max_error_rate_increase", None,
                                f"{what} can never pass (no bound is under a limit of 0)"))
        else:
            out.append(GateNeed("max_error_rate_increase", n,
                                f"{what} can pass after >= {n:,} {on} if neither side has "
                                f"an error (as few as {g.min_requests:,} when original "
                                f"has errors of its own), and >= {g.min_requests:,} on "
                                "original"))
    if g.max_latency_increase is not None:
        what = f"max_latency_increase {_pct(g.max_latency_increase)}"
        out.append(GateNeed("max_latency_increase", None, f"{what} {never_here}")
                   if no_baseline else
                   GateNeed("max_latency_increase", g.min_requests,
                            f"{what} can pass after >= {g.min_requests:,} {on} and as many "
                            "on original (then when no significant, material shift is seen)"))
    for m in g.metrics:
        if m.prometheus is not None:
            polled = m.min_samples * m.prometheus.interval
            out.append(GateNeed(f"metric {m.name}", 0, f"metric {m.name} can pass after >= "
                                f"{m.min_samples:,} polls of Prometheus ({polled:g}s)",
                                polled))
        else:  # a user brings at least one request
            out.append(GateNeed(f"metric {m.name}", m.min_samples,
                                f"metric {m.name} can pass after >= {m.min_samples:,} "
                                "users on new with a value"))
    if not out:
        out.append(GateNeed("min_requests", g.min_requests,
                            f"no gates: can pass after >= {g.min_requests:,} {on}"))
    return out


@dataclass(frozen=True, slots=True)
class PhaseTiming:
    """When a phase can advance at a given rate on new: its floor in requests and seconds."""

    phase: Phase
    requests: int | None  # the most any gate needs (None: some gate cannot pass)
    earliest: float | None  # seconds after the phase starts: max(duration, requests / rate)
    total: float | None  # seconds after the rollout starts


def plan_timing(rollout: Rollout, rate: float) -> list[PhaseTiming]:
    """The earliest each phase can advance at ``rate`` requests/s on new (mirrored ones in a
    shadow phase), assuming no failures and no waiting on approvals or hooks."""
    out: list[PhaseTiming] = []
    total: float | None = 0.0
    for phase in rollout.phases:
        needs = phase_needs(phase)
        counts = [n.requests for n in needs]
        requests = None if any(c is None for c in counts) else max(c or 0 for c in counts)
        earliest = None if requests is None or rate <= 0 else max(
            phase.duration, requests / rate, *(n.seconds for n in needs))
        total = None if total is None or earliest is None else total + earliest
        out.append(PhaseTiming(phase, requests, earliest, total))
    return out
