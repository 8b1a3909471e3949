"""Rollout plans: phases with weights, durations, gates and approvals; presets expand to them.

Pure: the ``rollout:`` and ``state:`` sections of the config become frozen
objects here, and presets (canary, linear, blue-green, ring) expand to the
same list of phases a hand-written plan gives.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from proxy.config.experiment import MetricGate, check_gate_names, read_metric_gates
from proxy.config.hooks import Hook
from proxy.config.reader import (
    DUR,
    Reader,
    choice,
    default,
    flag,
    int_range,
    names,
    read_flat,
    reject,
    text,
)
from proxy.config.units import parse_duration, parse_percent_bp, parse_rate, positive_duration

ON_BREACH = ("rollback", "alert")
PRESETS = ("canary", "linear", "blue-green", "ring")
CANARY_WEIGHTS: tuple[float, ...] = (1, 5, 10, 25, 50, 100)
RATE_FORM = "a rate such as 1% or 0.01"
TIME_FORM = "a duration such as 200ms or 1.5s"


@dataclass(frozen=True, slots=True)
class Gates:
    """What new must show before a phase may advance; any confident breach rolls back."""

    max_error_rate: float | None = None
    max_p99: float | None = None  # seconds
    max_p999: float | None = None
    min_requests: int = 100
    max_error_rate_increase: float | None = None  # absolute, over original's rate
    max_latency_increase: float | None = None  # relative to original's median, e.g. 0.1
    # Shadow phases: the share of mirrored requests whose status differs from original's.
    max_status_mismatch: float | None = None
    metrics: tuple[MetricGate, ...] = ()  # gates on any metric (header, events, Prometheus)

    @property
    def empty(self) -> bool:
        return not self.metrics and all(
            v is None for v in (self.max_error_rate, self.max_p99, self.max_p999,
                                self.max_error_rate_increase, self.max_latency_increase,
                                self.max_status_mismatch))


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of a rollout."""

    name: str
    weight_bp: int
    duration: float = 0.0  # minimum time in the phase, seconds
    gates: Gates = Gates()
    approval: bool = False  # a person must approve before leaving the phase
    on_breach: str = "rollback"  # or "alert": keep the weight, wait for a person
    allow_users: frozenset[str] = frozenset()  # on new during this phase (testers, rings)
    allow_groups: frozenset[str] = frozenset()
    # Percent of original's requests copied to new (basis points); None: the config's
    # mirror.percent. A phase at weight 0 that mirrors is a shadow phase: its gates judge
    # the shadow's answers against original's answers to the same requests.
    mirror_bp: int | None = None

    @property
    def shadow(self) -> bool:
        """Judged on mirrored traffic: no user is on new yet."""
        return self.weight_bp == 0 and bool(self.mirror_bp)


@dataclass(frozen=True, slots=True)
class Rollout:
    """A named plan and how the controller runs it."""

    name: str
    phases: tuple[Phase, ...]
    tick: float = 0.25
    rollback_stages: tuple[float, ...] = (0.75, 0.5, 0.25, 0.0)  # of the weight, gradual mode
    rollback_interval: float = 10.0
    confirm: tuple[Hook, ...] = ()
    confirm_retry: float = 10.0  # after a confirm hook says no, ask again this much later
    notify: tuple[Hook, ...] = ()


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where the rollout state lives and what to do if it cannot be read."""

    path: str | None = None  # None: keep state in memory only
    on_corrupt: str = "safe"  # "safe": all traffic to original, needs-attention; "refuse"
    max_events: int = 500


def _rate(value: Any) -> float:
    return parse_rate(value)


def read_gates(r: Reader) -> Gates:
    """The ``gates:`` mapping of a phase (or of a preset)."""
    metrics = read_metric_gates(r, r.data["metrics"]) if r.has("metrics") else ()
    r.used.add("metrics")
    gates = read_flat(r, Gates(), {
        "max_error_rate": (_rate, RATE_FORM),
        "max_p99": (positive_duration, TIME_FORM),
        "max_p999": (positive_duration, TIME_FORM),
        "min_requests": (int_range(1, 10**9), "an integer 1..1000000000"),
        "max_error_rate_increase": (_rate, RATE_FORM),
        "max_latency_increase": (_rate, "a relative increase such as 10% or 0.1"),
        "max_status_mismatch": (_rate, RATE_FORM),
    })
    return dataclasses.replace(gates, metrics=metrics)


def _read_phase(r: Reader, index: int, default_gates: Gates) -> Phase:
    name = r.get("name", f"phase-{index + 1}", text, "a phase name")
    weight = r.require("weight", parse_percent_bp, "a percent 0..100, e.g. 1 or 12.5")
    gates = read_gates(r.section("gates")) if r.has("gates") else default_gates
    phase = Phase(
        name=name, weight_bp=weight,
        duration=r.field(Phase, "duration", parse_duration, DUR[1]),
        gates=gates,
        approval=r.field(Phase, "approval", flag, "true or false"),
        on_breach=r.field(Phase, "on_breach", choice(ON_BREACH), " or ".join(ON_BREACH)),
        allow_users=r.field(Phase, "allow_users", names, "a list of user ids"),
        allow_groups=r.field(Phase, "allow_groups", names, "a list of groups"),
        mirror_bp=r.get("mirror", default(Phase, "mirror_bp"), parse_percent_bp,
                        "a percent 0..100, e.g. 100"),
    )
    r.done()
    if phase.gates.max_status_mismatch is not None and phase.mirror_bp is not None \
            and not phase.shadow:  # (without mirror: it mirrors as the config does: see load)
        raise r.fail("gates.max_status_mismatch", phase.gates.max_status_mismatch,
                     "a shadow phase (weight 0 with mirror above 0): only mirrored "
                     "requests have two answers to compare")
    return phase


def _read_hooks(r: Reader, key: str) -> tuple[Hook, ...]:
    raw: list[Any] = r.get(key, [], lambda v: v if isinstance(v, list) else reject(),
                           "a list of hooks")
    hooks = []
    for i, item in enumerate(raw):
        entry = {"url": item} if isinstance(item, str) else item
        if not isinstance(entry, dict):
            raise r.fail(f"{key}[{i}]", item, "a URL or a mapping with url")
        h = Reader(r.file, entry, f"{r.path}.{key}[{i}]")
        url = h.require("url", lambda v: v if isinstance(v, str) and v.startswith("http://")
                        else reject(), "an http:// URL")
        timeout = h.field(Hook, "timeout", positive_duration, DUR[1])
        retries = h.field(Hook, "retries", int_range(0, 10), "an integer 0..10")
        events = h.field(Hook, "events", names, "a list of event kinds")
        h.done()
        try:
            hooks.append(Hook(url, timeout, retries, events))
        except ValueError as exc:
            raise h.fail("url", url, f"a usable http:// URL ({exc})") from None
    return tuple(hooks)


def read_rollout(r: Reader) -> Rollout | None:
    """The ``rollout:`` section: an explicit ``plan`` or a ``preset``; None when absent."""
    if not r.data:
        return None
    name = r.get("name", "rollout", text, "a rollout name")
    tick = r.field(Rollout, "tick", positive_duration, DUR[1])
    if tick > 10:
        raise r.fail("tick", r.data["tick"], "at most 10s (rollback speed depends on it)")
    gates = read_gates(r.section("gates")) if r.has("gates") else Gates()
    if r.has("plan") and r.has("preset"):
        raise r.fail("preset", r.data["preset"], "either plan or preset, not both")
    if r.has("plan"):
        raw = r.data["plan"]
        r.used.add("plan")
        if not isinstance(raw, list) or not raw:
            raise r.fail("plan", raw, "a non-empty list of phases")
        phases = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise r.fail(f"plan[{i}]", item, "a mapping with name, weight, duration, gates")
            phases.append(_read_phase(Reader(r.file, item, f"{r.path}.plan[{i}]"), i, gates))
    else:
        preset = r.require("preset", choice(PRESETS), "a plan or a preset: " + ", ".join(PRESETS))
        phases = _expand_preset(preset, r, gates)
    stages = r.field(Rollout, "rollback_stages", _stages,
                   "a list of decreasing fractions of the weight ending in 0, e.g. [75%, 50%, 0]")
    rollout = Rollout(
        name=name, phases=tuple(phases), tick=tick,
        rollback_stages=stages,
        rollback_interval=r.field(Rollout, "rollback_interval", positive_duration, DUR[1]),
        confirm=_read_hooks(r, "confirm"),
        confirm_retry=r.field(Rollout, "confirm_retry", positive_duration, DUR[1]),
        notify=_read_hooks(r, "notify"),
    )
    r.done()
    _check_plan(r, rollout.phases)
    check_gate_names(r, [(f"plan[{i}].gates.metrics[{j}].name", g)
                         for i, p in enumerate(rollout.phases)
                         for j, g in enumerate(p.gates.metrics)])
    return rollout


def _stages(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError
    stages = tuple(parse_rate(v) for v in value)
    if stages[-1] != 0 or any(b >= a for a, b in itertools.pairwise(stages)):
        raise ValueError
    return stages


def _check_plan(r: Reader, phases: tuple[Phase, ...]) -> None:
    for i, (a, b) in enumerate(itertools.pairwise(phases)):
        if b.weight_bp < a.weight_bp:
            raise r.fail(f"plan[{i + 1}].weight", b.weight_bp / 100,
                         f"at least the previous phase's {a.weight_bp / 100:g} (weights only grow)")
    if phases[-1].weight_bp != 10000:
        raise r.fail("plan", f"last weight {phases[-1].weight_bp / 100:g}",
                     "a plan that ends at weight 100")


def _expand_preset(preset: str, r: Reader, gates: Gates) -> list[Phase]:
    """canary: 1,5,10,25,50,100 %; linear: step..max; blue-green: testers then 100 %;
    ring: allow-listed groups one ring at a time, then percentages."""
    step_time = r.get("step_duration", 600.0, parse_duration, DUR[1])
    if preset == "canary":
        weights = r.get("weights", CANARY_WEIGHTS, _weights, "a list of increasing percents")
        return [Phase(f"canary-{w:g}", round(w * 100), 0.0 if w == 100 else step_time, gates)
                for w in weights] + _full_if_missing(weights, gates)
    if preset == "linear":
        step = r.require("step", parse_percent_bp, "a percent step, e.g. 10")
        top = r.get("max", 10000, parse_percent_bp, "a percent, e.g. 100")
        interval = r.get("interval", step_time, parse_duration, DUR[1])
        if step <= 0:
            raise r.fail("step", r.data["step"], "a positive percent")
        bps = list(range(step, top + 1, step))
        if not bps or bps[-1] != top:
            bps.append(top)
        phases = [Phase(f"linear-{bp / 100:g}", bp, interval, gates) for bp in bps]
        if top < 10000:
            phases.append(Phase("full", 10000, 0.0, gates))
        return phases
    if preset == "blue-green":
        testers = r.section("testers")
        users = testers.get("users", frozenset[str](), names, "a list of user ids")
        groups = testers.get("groups", frozenset[str](), names, "a list of groups")
        testers.done()
        return [Phase("preview", 0, step_time, gates, allow_users=users, allow_groups=groups),
                Phase("full", 10000, 0.0, gates)]
    # ring
    rings = r.require("rings", _rings, "a list of group lists, e.g. [[internal], [beta]]")
    ring_weights: tuple[float, ...] = (10, 50, 100)
    weights = r.get("weights", ring_weights, _weights, "a list of increasing percents")
    phases = []
    seen: frozenset[str] = frozenset()
    for i, groups in enumerate(rings):
        seen = seen | groups
        phases.append(Phase(f"ring-{i}", 0, step_time, gates, allow_groups=seen))
    phases += [Phase(f"ring-{w:g}%", round(w * 100), 0.0 if w == 100 else step_time, gates,
                     allow_groups=seen) for w in weights]
    return phases + _full_if_missing(weights, gates)


def _full_if_missing(weights: tuple[float, ...], gates: Gates) -> list[Phase]:
    return [] if weights and weights[-1] == 100 else [Phase("full", 10000, 0.0, gates)]


def _weights(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError
    weights = tuple(parse_percent_bp(v) / 100 for v in value)
    if any(b <= a for a, b in itertools.pairwise(weights)):
        raise ValueError
    return weights


def _rings(value: Any) -> tuple[frozenset[str], ...]:
    if not isinstance(value, list) or not value:
        raise ValueError
    return tuple(names(v) for v in value)


def read_state(r: Reader) -> StateConfig:
    """The ``state:`` section."""
    state = StateConfig(
        path=r.field(StateConfig, "path", text, "a file path"),
        on_corrupt=r.field(StateConfig, "on_corrupt", choice(("safe", "refuse")), "safe or refuse"),
        max_events=r.field(StateConfig, "max_events", int_range(10, 100_000),
                           "an integer 10..100000"),
    )
    r.done()
    return state
