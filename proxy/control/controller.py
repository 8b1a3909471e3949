"""The rollout controller: ``tick(now)`` decides; a loop elsewhere only schedules it.

Per tick: read what new (and original) did since the last tick, update each
gate's sequential detector, judge the gates on the phase's whole sample, then

1. breach (any tick, any status with traffic on new) -> roll back in this tick
   (or, where the phase says ``on_breach: alert``, keep the weight and ask for
   a person);
2. every gate passes, the minimum duration is over, approval and confirm hooks
   say yes -> advance to the next phase (or complete at the last);
3. otherwise keep collecting: inconclusive is not a failure, no traffic is not
   a pass.

No I/O and no clock: ``now`` (unix seconds) is passed in, telemetry comes
through a small protocol, and the caller persists ``state`` when ``dirty``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from proxy.config.plan import Phase, Rollout
from proxy.control import analysis
from proxy.control.analysis import Cusum, Finding, Verdict
from proxy.control.metric_gates import PolledMetrics, judge_gate
from proxy.control.state import Event, RolloutState, Status
from proxy.routing.variant import NEW, ORIGINAL, PAIRED, SHADOW, Series
from proxy.telemetry.source import TelemetrySource, Totals

ACTIVE = (Status.PROGRESSING, Status.PAUSED)
STOPPED = (Status.ROLLED_BACK, Status.ABORTED, Status.ROLLING_BACK)  # new on its way to 0
RETRYABLE = (Status.ROLLED_BACK, Status.ABORTED)
SHIFT_EVERY = 1.0  # seconds between Mann-Whitney evaluations (they merge histograms)


class ActionError(Exception):
    """An action the current state forbids (the admin API answers 409)."""


class Controller:
    """Walks a rollout plan; every change is an event and marks the state dirty."""

    @staticmethod
    def fresh_state(rollout: Rollout, now: float) -> RolloutState:
        """The state of a rollout that starts now, at its first phase."""
        return RolloutState(rollout=rollout.name, weight_bp=rollout.phases[0].weight_bp,
                            phase_started=now)

    def __init__(self, rollout: Rollout, telemetry: TelemetrySource, state: RolloutState,
                 now: float, polled: PolledMetrics | None = None) -> None:
        self.rollout = rollout
        self.telemetry = telemetry
        self.polled = polled  # metrics read from Prometheus, for metric gates
        self.state = state
        self.dirty = False
        self.findings: list[Finding] = []
        self.confirm_request: str | None = None  # a confirm key the runner should ask about
        self._confirmed: dict[str, bool] = {}
        self._pending: list[Event] = []
        self._last_shift = -1e18
        self._shift_finding: Finding | None = None
        self._base_new = self._last_new = self._base_orig = Totals()
        self._cusum_err = self._cusum_p99 = self._cusum_p999 = Cusum.for_limit(0.01)
        self._cusum_mismatch = Cusum.for_limit(0.01)
        self._start_phase(now, fresh=False)
        self._recover_stop()

    # -- reading ---------------------------------------------------------------
    @property
    def phase(self) -> Phase:
        return self.rollout.phases[min(self.state.phase, len(self.rollout.phases) - 1)]

    @property
    def weight_bp(self) -> int:
        return self.state.weight_bp

    @property
    def mirror_bp(self) -> int:
        """The share of original's requests copied to new now: the phase's while the plan
        runs, none once it is rolled back or aborted."""
        if self.state.status in STOPPED:
            return 0
        return self.phase.mirror_bp or 0

    @property
    def _candidate(self) -> Series:
        """What the gates judge: new, or in a shadow phase the shadow's answers."""
        return SHADOW if self.phase.shadow else NEW

    @property
    def _baseline(self) -> Series:
        """What the candidate is compared with: original, or its answers to the very
        requests that were mirrored."""
        return PAIRED if self.phase.shadow else ORIGINAL

    def allowed(self) -> tuple[frozenset[str], frozenset[str]]:
        """Users and groups the current phase puts on new (testers, rings), if active."""
        if self.state.status in STOPPED:
            return frozenset(), frozenset()
        return self.phase.allow_users, self.phase.allow_groups

    # -- the step --------------------------------------------------------------
    def tick(self, now: float) -> list[Event]:
        """One decision step; never sleeps, never does I/O."""
        return self._step(now, decide=True)

    def observe(self, now: float) -> None:
        """Judge the gates as ``tick`` would, deciding nothing (a replica that does not
        lead shows the same verdicts as the one that does)."""
        self._step(now, decide=False)

    def _step(self, now: float, decide: bool) -> list[Event]:
        st = self.state
        if decide and st.status is Status.ROLLING_BACK:
            self._gradual_step(now)
        new_totals = self.telemetry.totals(self._candidate)
        delta = new_totals - self._last_new
        self._last_new = new_totals
        self._cusum_err = self._cusum_err.update(delta.requests, delta.failures)
        self._cusum_mismatch = self._cusum_mismatch.update(delta.requests, delta.mismatches)
        self._cusum_p99 = self._cusum_p99.update(delta.latency_sample, delta.slow_p99)
        self._cusum_p999 = self._cusum_p999.update(delta.latency_sample, delta.slow_p999)
        if st.status in ACTIVE or st.status is Status.COMPLETE:
            self.findings = self._judge(now, new_totals)
            verdict = analysis.overall(self.findings) if decide else None
            if verdict is Verdict.BREACH:
                self._on_breach(now)
            elif (verdict is Verdict.PASS and st.status is Status.PROGRESSING
                  and now - st.phase_started >= self.phase.duration):
                self._try_advance(now)
        return self._drain()

    def _judge(self, now: float, new_totals: Totals) -> list[Finding]:
        g = self.phase.gates
        since = new_totals - self._base_new
        out: list[Finding] = []
        if g.max_error_rate is not None:
            out.append(analysis.judge_rate("error_rate", since.failures, since.requests,
                                           g.max_error_rate, g.min_requests, self._cusum_err))
        if g.max_p99 is not None:
            out.append(analysis.judge_rate("p99", since.slow_p99, since.latency_sample, 0.01,
                                           g.min_requests, self._cusum_p99))
        if g.max_p999 is not None:
            out.append(analysis.judge_rate("p999", since.slow_p999, since.latency_sample, 0.001,
                                           g.min_requests, self._cusum_p999))
        if g.max_status_mismatch is not None:
            out.append(analysis.judge_rate("status_mismatch", since.mismatches, since.requests,
                                           g.max_status_mismatch, g.min_requests,
                                           self._cusum_mismatch))
        if g.max_error_rate_increase is not None:
            base = self.telemetry.totals(self._baseline) - self._base_orig
            out.append(analysis.judge_rate_increase(
                "error_rate_increase", (since.failures, since.requests),
                (base.failures, base.requests), g.max_error_rate_increase, g.min_requests))
        if g.max_latency_increase is not None:
            if now - self._last_shift >= SHIFT_EVERY or self._shift_finding is None:
                self._last_shift = now
                values, new_counts, orig_counts = self.telemetry.latency_histograms(
                    self._candidate, self._baseline)
                test = analysis.mann_whitney_binned(values, new_counts, orig_counts)
                total = float(orig_counts.sum())
                median = float(values[np.searchsorted(np.cumsum(orig_counts), total / 2)]) \
                    if total else 0.0
                self._shift_finding = analysis.judge_latency_increase(
                    "latency_increase", test, median, g.max_latency_increase, g.min_requests)
            out.append(self._shift_finding)
        out.extend(judge_gate(mg, self.telemetry.outcomes, self.polled, self.state.phase_started)
                   for mg in g.metrics)
        if not out:  # a phase without gates still needs traffic before it passes
            verdict = Verdict.PASS if since.requests >= g.min_requests else Verdict.INCONCLUSIVE
            on = "mirrored to new" if self.phase.shadow else "on new"
            out.append(Finding("min_requests", verdict, since.requests, g.min_requests,
                               f"{since.requests} requests {on} this phase"))
        return out

    def _evidence(self) -> dict[str, Any]:
        return {"phase": self.phase.name, "findings": [f.to_dict() for f in self.findings]}

    def _on_breach(self, now: float) -> None:
        st = self.state
        failed = "; ".join(f"{f.gate}: {f.detail}" for f in self.findings
                           if f.verdict is Verdict.BREACH)
        if self.phase.on_breach == "alert":
            if st.status is not Status.NEEDS_ATTENTION:
                self._transition(now, Status.NEEDS_ATTENTION, "breach", f"breach: {failed}",
                                 "controller", weight=st.weight_bp)
            return
        self._transition(now, Status.ROLLED_BACK, "rollback", f"gate breach: {failed}",
                         "controller", weight=0)

    def _try_advance(self, now: float) -> None:
        st = self.state
        if self.phase.approval and not st.approved:
            return
        last = st.phase + 1 >= len(self.rollout.phases)
        if self.rollout.confirm and not last:
            key = f"{self.rollout.name}:{st.phase + 1}:{st.phase_started:.0f}"
            result = self._confirmed.get(key)
            if result is None:
                self.confirm_request = key
                return
            if not result:  # refused: ask again later with a fresh key
                self._confirmed.pop(key)
                self._emit(now, "advance-refused", self.phase.name, self.phase.name,
                           "a confirm hook did not answer 2xx", "controller")
                # Ask again after confirm_retry: the phase's clock is set back that far.
                st.phase_started = now - self.phase.duration + self.rollout.confirm_retry
                self.dirty = True
                return
        if last:
            self._transition(now, Status.COMPLETE, "complete", "every phase passed its gates",
                             "controller", weight=st.weight_bp)
        else:
            self._move_to(now, st.phase + 1, "advance", "gates passed and duration done",
                          "controller")

    def confirmed(self, key: str, ok: bool) -> None:
        """The runner's answer from the confirm hooks for ``key``."""
        self._confirmed[key] = ok
        if self.confirm_request == key:
            self.confirm_request = None

    # -- actions (the admin API calls these) -------------------------------------
    def advance(self, now: float, actor: str) -> list[Event]:
        """Move to the next phase now, skipping duration and gates."""
        self._require(ACTIVE, "advance")
        if self.state.phase + 1 >= len(self.rollout.phases):
            raise ActionError("already in the last phase; use promote")
        self._move_to(now, self.state.phase + 1, "advance", "advanced by hand", actor)
        return self._drain()

    def promote(self, now: float, actor: str) -> list[Event]:
        """Straight to 100% and complete."""
        self._require((*ACTIVE, Status.NEEDS_ATTENTION), "promote")
        self.state.phase = len(self.rollout.phases) - 1
        self._transition(now, Status.COMPLETE, "promote", "promoted by hand", actor,
                         weight=10000)
        return self._drain()

    def approve(self, now: float, actor: str) -> list[Event]:
        """Approve leaving the current phase (when it requires approval)."""
        self._require(ACTIVE, "approve")
        self.state.approved = True
        self._emit(now, "approve", self.phase.name, self.phase.name, "approved", actor)
        return self._drain()

    def pause(self, now: float, actor: str, reason: str = "paused by hand") -> list[Event]:
        """Stop advancing (breaches still roll back)."""
        self._require((Status.PROGRESSING,), "pause")
        self.state.paused_status = str(Status.PROGRESSING)
        self._transition(now, Status.PAUSED, "pause", reason, actor, weight=self.weight_bp)
        return self._drain()

    def resume(self, now: float, actor: str) -> list[Event]:
        """Continue after a pause or an alert at full."""
        self._require((Status.PAUSED, Status.NEEDS_ATTENTION), "resume")
        self._cusums_reset()
        self._transition(now, Status.PROGRESSING, "resume", "resumed by hand", actor,
                         weight=self.weight_bp)
        return self._drain()

    def abort(self, now: float, actor: str, reason: str = "aborted by hand") -> list[Event]:
        """Give the rollout up: everyone back to original."""
        self._require((*ACTIVE, Status.NEEDS_ATTENTION, Status.ROLLING_BACK), "abort")
        self._transition(now, Status.ABORTED, "abort", reason, actor, weight=0)
        return self._drain()

    def rollback(self, now: float, actor: str, reason: str, mode: str = "immediate",
                 users: list[str] | None = None, stages: tuple[float, ...] | None = None,
                 interval: float | None = None) -> list[Event]:
        """Immediate (weight 0 now), gradual (down the stages) or targeted (deny users)."""
        st = self.state
        if mode == "targeted":
            if not users:
                raise ActionError("a targeted rollback needs users")
            st.deny_users = sorted(set(st.deny_users) | set(users))
            self._emit(now, "rollback-targeted", self.phase.name, self.phase.name, reason, actor,
                       {"users": sorted(users)})
            return self._drain()
        self._require((*ACTIVE, Status.NEEDS_ATTENTION, Status.COMPLETE, Status.ROLLING_BACK),
                      "rollback")
        if mode == "gradual":
            weights = [int(st.weight_bp * f) for f in (stages or self.rollout.rollback_stages)]
            st.rollback_weights = [w for w in weights if w < st.weight_bp] or [0]
            st.rollback_next = now
            self._transition(now, Status.ROLLING_BACK, "rollback-gradual", reason, actor,
                             weight=st.weight_bp,
                             evidence={"weights": st.rollback_weights,
                                       "interval": interval or self.rollout.rollback_interval})
            st.rollback_interval = interval or self.rollout.rollback_interval
            self._gradual_step(now)
            return self._drain()
        if mode != "immediate":
            raise ActionError(f"unknown rollback mode {mode!r}")
        self._transition(now, Status.ROLLED_BACK, "rollback", reason, actor, weight=0)
        return self._drain()

    def retry(self, now: float, actor: str, reason: str = "retried by hand") -> list[Event]:
        """After a rollback or an abort, start the plan again at its first phase (Argo
        Rollouts' retry): its weight, a fresh phase clock, no approval, no denied users."""
        self._require(RETRYABLE, "retry")
        st = self.state
        before = f"{st.status}@{st.weight_bp / 100:g}%"
        evidence = {"stopped": dict(st.stopped)} if st.stopped else {}
        st.status = Status.PROGRESSING
        st.phase = 0
        st.weight_bp = self.phase.weight_bp
        st.approved = False
        st.deny_users = []
        st.rollback_weights = []
        st.paused_status = ""
        st.stopped = {}
        self._start_phase(now, fresh=True)
        self._emit(now, "retry", before, f"{st.status}@{st.weight_bp / 100:g}%", reason, actor,
                   evidence)
        return self._drain()

    def set_weight(self, now: float, actor: str, weight_bp: int) -> list[Event]:
        """A manual weight; it pauses the plan so the controller does not undo it."""
        if not 0 <= weight_bp <= 10000:
            raise ActionError("weight must be 0..100 percent")
        st = self.state
        before = st.weight_bp
        if st.status is Status.PROGRESSING:
            st.paused_status = str(Status.PROGRESSING)
            st.status = Status.PAUSED
        st.weight_bp = weight_bp
        self._emit(now, "weight", f"{before / 100:g}%", f"{weight_bp / 100:g}%",
                   "manual weight (plan paused)", actor)
        return self._drain()

    # -- mechanics -------------------------------------------------------------
    def _gradual_step(self, now: float) -> None:
        st = self.state
        if now < st.rollback_next or not st.rollback_weights:
            return
        weight = st.rollback_weights.pop(0)
        st.rollback_next = now + (st.rollback_interval or self.rollout.rollback_interval)
        if st.rollback_weights:
            self._emit(now, "rollback-step", f"{st.weight_bp / 100:g}%", f"{weight / 100:g}%",
                       "gradual rollback", "controller")
            st.weight_bp = weight
            self.dirty = True
        else:
            self._transition(now, Status.ROLLED_BACK, "rollback", "gradual rollback finished",
                             "controller", weight=weight)

    def _move_to(self, now: float, index: int, kind: str, reason: str, actor: str) -> None:
        st = self.state
        before = self.phase.name
        evidence = self._evidence()
        st.phase = index
        st.weight_bp = self.phase.weight_bp
        st.approved = False
        self._emit(now, kind, before, self.phase.name, reason, actor, evidence)
        self._start_phase(now, fresh=True)

    def _transition(self, now: float, status: Status, kind: str, reason: str, actor: str,
                    weight: int, evidence: dict[str, Any] | None = None) -> None:
        st = self.state
        before = f"{st.status}@{st.weight_bp / 100:g}%"
        if status in STOPPED and st.status not in STOPPED:  # a gradual end keeps its start
            st.stopped = {"kind": kind, "phase": st.phase, "phase_name": self.phase.name,
                          "weight": st.weight_bp / 100, "time": now,
                          "elapsed_s": max(0.0, now - st.phase_started), "reason": reason,
                          "actor": actor}
        st.status = status
        st.weight_bp = weight
        self._emit(now, kind, before, f"{status}@{weight / 100:g}%", reason, actor,
                   evidence if evidence is not None else self._evidence())

    def resume_phase(self, now: float) -> None:
        """Judge the current phase afresh from now, keeping when it began (the state came
        from elsewhere: another replica, or a leader that went away)."""
        self._start_phase(now, fresh=False)
        self._recover_stop()

    def _recover_stop(self) -> None:
        """A stopped state without its record (written by a veer before the record
        existed, or a damaged one): rebuild it from the newest rollback or abort event,
        so the phase clock is stopped there and status says what stopped."""
        st = self.state
        if st.status not in STOPPED or st.stopped:
            return
        event = next((e for e in reversed(st.events)
                      if e.kind in ("rollback", "rollback-gradual", "abort")), None)
        if event is None:
            return
        weight = event.from_.rpartition("@")[2].removesuffix("%")
        try:
            before = float(weight)
        except ValueError:
            before = 0.0
        st.stopped = {"kind": event.kind, "phase": st.phase, "phase_name": self.phase.name,
                      "weight": before, "time": event.time,
                      "elapsed_s": max(0.0, event.time - st.phase_started),
                      "reason": event.reason, "actor": event.actor}

    def _start_phase(self, now: float, fresh: bool) -> None:
        """Re-arm the telemetry for the current phase's gates."""
        g = self.phase.gates
        self.telemetry.watch_latency(g.max_p99, g.max_p999)
        self.telemetry.mark()
        if fresh:
            self.state.phase_started = now
        self._base_new = self._last_new = self.telemetry.totals(self._candidate)
        self._base_orig = self.telemetry.totals(self._baseline)
        self._cusum_err = Cusum.for_limit(g.max_error_rate if g.max_error_rate else 0.5)
        self._cusum_mismatch = Cusum.for_limit(g.max_status_mismatch or 0.5)
        self._cusum_p99 = Cusum.for_limit(0.01)
        self._cusum_p999 = Cusum.for_limit(0.001)
        self._shift_finding = None
        self.findings = []

    def _cusums_reset(self) -> None:
        self._cusum_err = self._cusum_err.reset()
        self._cusum_mismatch = self._cusum_mismatch.reset()
        self._cusum_p99 = self._cusum_p99.reset()
        self._cusum_p999 = self._cusum_p999.reset()

    def _require(self, statuses: tuple[Status, ...], action: str) -> None:
        if self.state.status not in statuses:
            raise ActionError(f"cannot {action} while {self.state.status}")

    def _emit(self, now: float, kind: str, from_: str, to: str, reason: str, actor: str,
              evidence: dict[str, Any] | None = None) -> None:
        event = Event(now, kind, from_, to, reason, actor, evidence or {})
        self.state.events.append(event)
        self._pending.append(event)
        self.dirty = True

    def _drain(self) -> list[Event]:
        events, self._pending = self._pending, []
        return events
