"""The controller stepped tick by tick with a fake clock and fake telemetry (no sockets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from proxy.config.plan import Rollout, read_rollout
from proxy.config.reader import Reader
from proxy.control.controller import ActionError, Controller
from proxy.control.state import Status
from proxy.routing.variant import NEW, ORIGINAL, PAIRED, SERIES, SHADOW, Series
from proxy.telemetry.outcomes import Outcomes
from proxy.telemetry.source import Totals

SEED_PLAN: dict[str, Any] = {
    "name": "checkout-v2", "tick": "250ms",
    "plan": [
        {"name": "canary", "weight": 1, "duration": "2h",
         "gates": {"max_error_rate": "1%", "max_p99": "200ms", "min_requests": 500}},
        {"name": "ramp", "weight": 10, "duration": "4h",
         "gates": {"max_error_rate": "0.5%", "max_p99": "200ms"}},
        {"name": "full", "weight": 100,
         "gates": {"max_error_rate": "0.1%", "max_p99": "200ms"}, "on_breach": "alert"},
    ],
}


def rollout(data: Mapping[str, Any]) -> Rollout:
    r = read_rollout(Reader("<test>", dict(data), "rollout"))
    assert r is not None
    return r


class FakeTelemetry:
    """Cumulative counts the test adds to; latency histograms on a 1 ms grid."""

    def __init__(self) -> None:
        self.counts: dict[Series, Totals] = {v: Totals() for v in SERIES}
        self.watched: tuple[float | None, float | None] = (None, None)
        self.marks = 0
        self.values = np.arange(1, 1001, dtype=np.float64) / 1000
        self.hist: dict[Series, npt.NDArray[np.float64]] = {v: np.zeros(1000) for v in SERIES}
        self.outcomes = Outcomes()  # per-user metrics, for metric gates

    def feed(self, variant: Series, requests: int, failures: int = 0, slow_p99: int = 0,
             slow_p999: int = 0, mismatches: int = 0) -> None:
        c = self.counts[variant]
        self.counts[variant] = Totals(c.requests + requests, c.failures + failures,
                                      c.slow_p99 + slow_p99, c.slow_p999 + slow_p999, -1,
                                      c.mismatches + mismatches)

    def totals(self, variant: Series) -> Totals:
        return self.counts[variant]

    def watch_latency(self, p99_limit: float | None, p999_limit: float | None) -> None:
        self.watched = (p99_limit, p999_limit)

    def mark(self) -> None:
        self.marks += 1
        for h in self.hist.values():
            h[:] = 0

    def latency_histograms(
        self, candidate: Series = NEW, baseline: Series = ORIGINAL,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return self.values, self.hist[candidate], self.hist[baseline]


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t


def status(c: Controller) -> Status:
    """The status, read through a call (so mypy does not narrow it across actions)."""
    return c.state.status


def make(data: Mapping[str, Any] | None = None) -> tuple[Controller, FakeTelemetry, Clock]:
    plan = rollout(data or SEED_PLAN)
    tel, clock = FakeTelemetry(), Clock()
    return Controller(plan, tel, Controller.fresh_state(plan, clock.t), clock.t), tel, clock


def run(c: Controller, tel: FakeTelemetry, clock: Clock, seconds: float, rps: float,
        error_rate: float = 0.0, slow_rate: float = 0.0, tick: float = 0.25) -> list[str]:
    """Healthy-ish traffic on new at ``rps`` with exact fractional rates; returns event kinds."""
    kinds = []
    owed_err = owed_slow = owed_req = 0.0
    for _ in range(int(seconds / tick)):
        clock.t += tick
        owed_req += rps * tick
        n = int(owed_req)
        owed_req -= n
        owed_err += n * error_rate
        owed_slow += n * slow_rate
        e, sl = int(owed_err), int(owed_slow)
        owed_err -= e
        owed_slow -= sl
        tel.feed(NEW, n, e, sl, 0)
        kinds += [ev.kind for ev in c.tick(clock.t)]
    return kinds


def test_seed_plan_walks_to_complete_with_healthy_traffic() -> None:
    c, tel, clock = make()
    assert c.weight_bp == 100 and status(c) is Status.PROGRESSING
    assert tel.watched == (0.2, None)
    assert run(c, tel, clock, 7199, rps=2, error_rate=0.001) == []  # duration not over yet
    assert run(c, tel, clock, 2, rps=2, error_rate=0.001) == ["advance"]
    assert (c.phase.name, c.weight_bp) == ("ramp", 1000)
    assert run(c, tel, clock, 4 * 3600 + 1, rps=20, error_rate=0.001) == ["advance"]
    assert (c.phase.name, c.weight_bp) == ("full", 10000)
    assert run(c, tel, clock, 60, rps=200, error_rate=0.0) == ["complete"]
    assert status(c) is Status.COMPLETE and c.weight_bp == 10000
    advance = c.state.events[0]
    assert advance.evidence["phase"] == "canary"
    assert {f["gate"]: f["verdict"] for f in advance.evidence["findings"]} == \
        {"error_rate": "pass", "p99": "pass"}


def test_error_fault_rolls_back_in_the_same_tick_with_evidence() -> None:
    c, tel, clock = make()
    run(c, tel, clock, 600, rps=100, error_rate=0.005)
    assert status(c) is Status.PROGRESSING
    clock.t += 0.25
    tel.feed(NEW, 25, 20)
    events = c.tick(clock.t)
    assert [e.kind for e in events] == ["rollback"]
    assert c.weight_bp == 0 and status(c) is Status.ROLLED_BACK
    assert "error_rate" in events[0].reason
    assert events[0].evidence["findings"][0]["verdict"] == "breach"


def test_observe_judges_like_tick_but_decides_nothing() -> None:
    c, tel, clock = make()
    run(c, tel, clock, 600, rps=100, error_rate=0.005)
    clock.t += 0.25
    tel.feed(NEW, 25, 20)
    c.observe(clock.t)  # a replica that does not lead: the same verdict, no rollback
    assert any(f.verdict == "breach" for f in c.findings)
    assert status(c) is Status.PROGRESSING and c.weight_bp == 100 and not c.dirty


def test_thin_traffic_neither_passes_nor_rolls_back() -> None:
    c, tel, clock = make()
    clock.t += 3 * 3600  # long past the phase duration
    tel.feed(NEW, 3, 2)  # 2 of 3 failed: bad luck or bad code? Not enough to know.
    assert c.tick(clock.t) == []
    assert status(c) is Status.PROGRESSING and c.weight_bp == 100
    assert {f.verdict for f in c.findings} == {"inconclusive"}


def test_no_traffic_is_not_a_pass() -> None:
    c, tel, clock = make()
    assert run(c, tel, clock, 3 * 3600, rps=0) == []
    assert c.phase.name == "canary"


def test_sustained_moderate_breach_is_caught_by_the_phase_bound() -> None:
    c, tel, clock = make()
    kinds = run(c, tel, clock, 600, rps=100, error_rate=0.02)  # 2x the limit, no jump
    assert kinds == ["rollback"]


def test_latency_breach_rolls_back() -> None:
    c, tel, clock = make()
    run(c, tel, clock, 60, rps=100, slow_rate=0.001)
    assert status(c) is Status.PROGRESSING
    kinds = run(c, tel, clock, 3, rps=100, slow_rate=0.3)
    assert kinds == ["rollback"]
    assert any(f.gate == "p99" and f.verdict == "breach" for f in c.findings)


def test_breach_at_full_alerts_and_waits_for_a_person() -> None:
    c, tel, clock = make()
    c.advance(clock.t, "alice")
    c.advance(clock.t, "alice")
    assert c.phase.name == "full"
    kinds = run(c, tel, clock, 5, rps=200, error_rate=0.3)
    assert kinds == ["breach"]
    assert status(c) is Status.NEEDS_ATTENTION and c.weight_bp == 10000
    assert run(c, tel, clock, 5, rps=200, error_rate=0.3) == []  # alerts once, keeps waiting
    c.rollback(clock.t, "alice", "confirmed bad")
    assert c.weight_bp == 0 and status(c) is Status.ROLLED_BACK


def test_approval_gate() -> None:
    plan = {"name": "r", "plan": [
        {"name": "a", "weight": 5, "duration": "10s", "approval": True,
         "gates": {"max_error_rate": "1%", "min_requests": 100}},
        {"name": "b", "weight": 100}]}
    c, tel, clock = make(plan)
    assert run(c, tel, clock, 60, rps=100) == []
    assert [e.kind for e in c.approve(clock.t, "bob")] == ["approve"]
    assert run(c, tel, clock, 1, rps=100) == ["advance"]


def test_pause_blocks_advance_but_not_rollback() -> None:
    c, tel, clock = make()
    c.pause(clock.t, "ops")
    assert run(c, tel, clock, 3 * 3600, rps=5, error_rate=0.0) == []
    assert c.phase.name == "canary"
    assert run(c, tel, clock, 2, rps=100, error_rate=0.5) == ["rollback"]
    with pytest.raises(ActionError, match="cannot resume while rolled-back"):
        c.resume(clock.t, "ops")


def test_gradual_rollback_steps_down() -> None:
    c, _tel, clock = make()
    c.advance(clock.t, "ops")  # 10%
    kinds = [e.kind for e in c.rollback(clock.t, "ops", "slowly", mode="gradual",
                                        interval=5.0)]
    assert kinds == ["rollback-gradual", "rollback-step"]
    assert c.weight_bp == 750 and status(c) is Status.ROLLING_BACK
    weights = []
    for _ in range(4):
        clock.t += 5
        c.tick(clock.t)
        weights.append(c.weight_bp)
    assert weights == [500, 250, 0, 0]
    assert status(c) is Status.ROLLED_BACK


def test_targeted_rollback_denies_users() -> None:
    c, _, clock = make()
    c.rollback(clock.t, "ops", "their carts break", mode="targeted", users=["u1", "u2"])
    assert c.state.deny_users == ["u1", "u2"] and status(c) is Status.PROGRESSING


def test_actions_and_their_refusals() -> None:
    c, _, clock = make()
    c.promote(clock.t, "ops")
    assert (status(c), c.weight_bp) == (Status.COMPLETE, 10000)
    with pytest.raises(ActionError):
        c.advance(clock.t, "ops")
    c2, _, clock2 = make()
    c2.abort(clock2.t, "ops")
    assert (status(c2), c2.weight_bp) == (Status.ABORTED, 0)
    with pytest.raises(ActionError):
        c2.pause(clock2.t, "ops")
    c3, _, clock3 = make()
    c3.set_weight(clock3.t, "ops", 2500)
    assert (status(c3), c3.weight_bp) == (Status.PAUSED, 2500)
    assert c3.state.events[-1].actor == "ops"


def test_error_rate_increase_against_original() -> None:
    plan = {"name": "r", "plan": [
        {"name": "a", "weight": 50, "duration": "10s",
         "gates": {"max_error_rate_increase": "1%", "min_requests": 200}},
        {"name": "b", "weight": 100}]}
    c, tel, clock = make(plan)
    for _ in range(200):
        clock.t += 0.25
        tel.feed(NEW, 100, 2)
        tel.feed(ORIGINAL, 100, 2)
        c.tick(clock.t)
    assert c.phase.name == "b"  # the same 2% on both sides: confidently within +1%
    c2, tel2, clock2 = make(plan)
    kinds = []
    for _ in range(40):
        clock2.t += 0.25
        tel2.feed(NEW, 50, 10)  # 20% against original's 2%
        tel2.feed(ORIGINAL, 50, 1)
        kinds += [e.kind for e in c2.tick(clock2.t)]
    assert kinds == ["rollback"]


def test_latency_increase_judged_with_mann_whitney() -> None:
    plan = {"name": "r", "plan": [
        {"name": "a", "weight": 50, "duration": "10s",
         "gates": {"max_latency_increase": "10%", "min_requests": 200}},
        {"name": "b", "weight": 100}]}
    c, tel, clock = make(plan)
    rng = np.random.default_rng(5)
    tel.hist[ORIGINAL] += np.bincount(rng.normal(100, 10, 2000).astype(int), minlength=1000)
    tel.hist[NEW] += np.bincount(rng.normal(160, 10, 2000).astype(int), minlength=1000)
    tel.feed(NEW, 2000)
    tel.feed(ORIGINAL, 2000)
    clock.t += 1
    assert [e.kind for e in c.tick(clock.t)] == ["rollback"]
    finding = next(f for f in c.findings if f.gate == "latency_increase")
    assert finding.observed == pytest.approx(0.060, abs=0.003)  # HL shift: +60 ms


def test_confirm_hook_must_say_yes_before_advancing() -> None:
    plan = {"name": "r", "confirm": ["http://127.0.0.1:1/ok"], "plan": [
        {"name": "a", "weight": 5, "duration": "10s", "gates": {"min_requests": 10}},
        {"name": "b", "weight": 100}]}
    c, tel, clock = make(plan)
    assert run(c, tel, clock, 20, rps=10) == []
    key = c.confirm_request
    assert key is not None
    c.confirmed(key, False)
    assert run(c, tel, clock, 0.25, rps=10) == ["advance-refused"]
    assert run(c, tel, clock, 11, rps=10) == []
    key2 = c.confirm_request
    assert key2 is not None and key2 != key
    c.confirmed(key2, True)
    assert run(c, tel, clock, 0.25, rps=10) == ["advance"]


SHADOW_PLAN = {"plan": [
    {"name": "shadow", "weight": 0, "mirror": 100, "duration": "10m",
     "gates": {"max_error_rate": "1%", "max_status_mismatch": "2%", "min_requests": 50}},
    {"name": "full", "weight": 100}]}


def test_a_shadow_phase_is_judged_on_the_shadow_and_ignores_new() -> None:
    c, tel, clock = make(SHADOW_PLAN)
    assert c.weight_bp == 0 and c.mirror_bp == 10000 and c.phase.shadow
    for _ in range(40):  # new's own series is broken, but no user is on it: not judged
        clock.t += 0.25
        tel.feed(NEW, 10, 10)
        tel.feed(SHADOW, 10, 0)
        tel.feed(PAIRED, 10, 0)
        assert c.tick(clock.t) == []
    assert {f.gate for f in c.findings} == {"error_rate", "status_mismatch"}
    clock.t += 601
    tel.feed(SHADOW, 10)
    assert [e.kind for e in c.tick(clock.t)] == ["advance"]
    assert c.mirror_bp == 0 and not c.phase.shadow  # full: the config's mirror (none)


def test_status_mismatches_on_the_shadow_roll_back_before_any_user_is_routed() -> None:
    c, tel, clock = make(SHADOW_PLAN)
    kinds: list[str] = []
    for _ in range(40):
        clock.t += 0.25
        tel.feed(SHADOW, 10, 0, mismatches=3)  # same error rate, other statuses: 30%
        tel.feed(PAIRED, 10)
        kinds += [e.kind for e in c.tick(clock.t)]
    assert kinds == ["rollback"] and c.weight_bp == 0 and c.mirror_bp == 0
    assert "status_mismatch" in c.state.events[-1].reason


def test_max_status_mismatch_outside_a_shadow_phase_is_a_config_error() -> None:
    from proxy.config.load import from_dict
    from proxy.config.reader import ConfigError

    plan = {"plan": [{"name": "c", "weight": 10, "gates": {"max_status_mismatch": "1%"}},
                     {"name": "f", "weight": 100}]}
    with pytest.raises(ConfigError, match="shadow phase"):
        rollout({"plan": [{**plan["plan"][0], "mirror": 100}, plan["plan"][1]]})
    upstreams = {"original": {"endpoints": ["http://127.0.0.1:1"]},
                 "new": {"endpoints": ["http://127.0.0.1:2"]}}
    with pytest.raises(ConfigError, match=r"rollout\.plan\[0\]\.gates\.max_status_mismatch"):
        from_dict({"upstreams": upstreams, "rollout": plan, "mirror": {"percent": 50}})
