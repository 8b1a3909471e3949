"""Rollout plans: hand-written plans, preset expansion, errors by key path, state config."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from proxy.config import emit
from proxy.config.plan import (
    Gates,
    Phase,
    Rollout,
    StateConfig,
    read_gates,
    read_rollout,
    read_state,
)
from proxy.config.reader import ConfigError, Reader

SEED = """
rollout: {name: checkout-v2, tick: 250ms, plan: [
  {name: canary, weight: 1, duration: 2h,
   gates: {max_error_rate: 1%, max_p99: 200ms, min_requests: 500}},
  {name: ramp, weight: 10, duration: 4h, gates: {max_error_rate: 0.5%, max_p99: 200ms}},
  {name: full, weight: 100, gates: {max_error_rate: 0.1%, max_p99: 200ms}, on_breach: alert}]}
"""


def _load(data: dict[str, Any]) -> Rollout:
    rollout = read_rollout(Reader("<test>", data, "rollout"))
    assert rollout is not None
    return rollout


def _error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read_rollout(Reader("<test>", data, "rollout"))
    assert info.value.file == "<test>"
    assert info.value.path in str(info.value)
    return info.value


def _plan(*weights: object) -> list[dict[str, Any]]:
    return [{"weight": w} for w in weights]


# --- the seed plan --------------------------------------------------------------------

def test_seed_plan() -> None:
    data = yaml.safe_load(SEED)["rollout"]
    r = _load(data)
    assert r.name == "checkout-v2"
    assert r.tick == 0.25
    assert [p.name for p in r.phases] == ["canary", "ramp", "full"]
    assert [p.weight_bp for p in r.phases] == [100, 1000, 10000]
    assert [p.duration for p in r.phases] == [7200.0, 14400.0, 0.0]
    canary, ramp, full = r.phases
    assert canary.gates == Gates(max_error_rate=0.01, max_p99=0.2, min_requests=500)
    assert ramp.gates == Gates(max_error_rate=0.005, max_p99=0.2)
    assert ramp.gates.min_requests == Gates().min_requests == 100
    assert full.gates == Gates(max_error_rate=0.001, max_p99=0.2)
    assert [p.on_breach for p in r.phases] == ["rollback", "rollback", "alert"]
    assert not any(p.approval for p in r.phases)
    assert r.rollback_stages == (0.75, 0.5, 0.25, 0.0)
    assert r.rollback_interval == 10.0
    assert r.confirm == () and r.notify == ()


def test_seed_plan_is_written_out_in_config_keys() -> None:
    r = _load(yaml.safe_load(SEED)["rollout"])
    out = emit.plan(r)
    assert json.loads(json.dumps(out)) == out
    assert out[0] == {
        "name": "canary", "weight": 1, "duration": "2h", "approval": False,
        "on_breach": "rollback", "allow_users": [], "allow_groups": [],
        "gates": {"max_error_rate": "1%", "max_p99": "200ms", "min_requests": 500},
    }
    assert out[2]["on_breach"] == "alert"


def test_empty_section_is_no_rollout() -> None:
    assert read_rollout(Reader("<test>", {}, "rollout")) is None


@pytest.mark.parametrize("rate", ["1%", 0.01, "0.01", " 1% "])
def test_rates_as_percent_or_fraction(rate: object) -> None:
    gates = read_gates(Reader("<test>", {"max_error_rate": rate}, "gates"))
    assert gates.max_error_rate == pytest.approx(0.01)


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("30s", 30.0), ("2h", 7200.0)])
def test_durations(text: str, seconds: float) -> None:
    r = _load({"tick": "250ms", "rollback_interval": text,
               "plan": [{"weight": 100, "duration": text}]})
    assert r.phases[0].duration == seconds
    assert r.rollback_interval == seconds


def test_rollout_gates_are_the_phase_default() -> None:
    r = _load({"gates": {"max_p99": "150ms", "min_requests": 50},
               "plan": [{"weight": 5}, {"weight": 100, "gates": {"max_error_rate": "2%"}}]})
    assert r.phases[0].gates == Gates(max_p99=0.15, min_requests=50)
    assert r.phases[1].gates == Gates(max_error_rate=0.02)


def test_phase_options() -> None:
    r = _load({"plan": [
        {"weight": "12.34", "approval": True, "allow_users": ["bob", 7],
         "allow_groups": ["qa"]},
        {"weight": 100}]})
    p = r.phases[0]
    assert p == Phase("phase-1", 1234, 0.0, Gates(), True, "rollback",
                      frozenset({"bob", "7"}), frozenset({"qa"}))
    assert r.phases[1].name == "phase-2"


def test_hooks() -> None:
    r = _load({"plan": _plan(100), "notify": ["http://hooks.local:8080/veer"],
               "confirm": [{"url": "http://gate.local/ok", "timeout": "2s", "retries": 0,
                            "events": ["advance"]}]})
    assert r.notify[0].url == "http://hooks.local:8080/veer"
    c = r.confirm[0]
    assert (c.url, c.timeout, c.retries, c.events) == (
        "http://gate.local/ok", 2.0, 0, frozenset({"advance"}))


def test_rollback_stages() -> None:
    r = _load({"plan": _plan(100), "rollback_stages": ["75%", 0.5, 0]})
    assert r.rollback_stages == (0.75, 0.5, 0.0)
    assert _load({"plan": _plan(100), "rollback_stages": [0]}).rollback_stages == (0.0,)


# --- presets --------------------------------------------------------------------------

def test_preset_canary() -> None:
    r = _load({"preset": "canary", "step_duration": "5m", "gates": {"max_error_rate": "1%"}})
    assert [p.weight_bp for p in r.phases] == [100, 500, 1000, 2500, 5000, 10000]
    assert [p.duration for p in r.phases] == [300.0] * 5 + [0.0]
    assert all(p.gates == Gates(max_error_rate=0.01) for p in r.phases)
    assert r.phases[0].name == "canary-1"


def test_preset_canary_custom_weights_are_exact() -> None:
    r = _load({"preset": "canary", "weights": [0.29, "2.01%", 12.34, 57.57]})
    assert [p.weight_bp for p in r.phases] == [29, 201, 1234, 5757, 10000]
    assert r.phases[-1].name == "full"


def test_preset_linear() -> None:
    r = _load({"preset": "linear", "step": 20})
    assert [p.weight_bp for p in r.phases] == [2000, 4000, 6000, 8000, 10000]
    assert all(p.duration == 600.0 for p in r.phases)


def test_preset_linear_with_max() -> None:
    r = _load({"preset": "linear", "step": 30, "max": 90, "interval": "1m"})
    assert [p.weight_bp for p in r.phases] == [3000, 6000, 9000, 10000]
    assert [p.name for p in r.phases] == ["linear-30", "linear-60", "linear-90", "full"]
    assert [p.duration for p in r.phases] == [60.0, 60.0, 60.0, 0.0]


def test_preset_linear_uneven_step_ends_at_max() -> None:
    r = _load({"preset": "linear", "step": 30})
    assert [p.weight_bp for p in r.phases] == [3000, 6000, 9000, 10000]


def test_preset_blue_green() -> None:
    r = _load({"preset": "blue-green",
               "testers": {"users": ["alice", 42], "groups": ["qa"]}})
    preview, full = r.phases
    assert (preview.name, preview.weight_bp) == ("preview", 0)
    assert preview.allow_users == frozenset({"alice", "42"})
    assert preview.allow_groups == frozenset({"qa"})
    assert (full.name, full.weight_bp) == ("full", 10000)
    assert full.allow_users == frozenset() and full.allow_groups == frozenset()


def test_preset_ring() -> None:
    r = _load({"preset": "ring", "rings": [["internal"], ["beta"]]})
    both = frozenset({"internal", "beta"})
    assert [(p.name, p.weight_bp, p.allow_groups) for p in r.phases] == [
        ("ring-0", 0, frozenset({"internal"})),
        ("ring-1", 0, both),
        ("ring-10%", 1000, both),
        ("ring-50%", 5000, both),
        ("ring-100%", 10000, both),
    ]
    out = emit.plan(r)
    assert json.loads(json.dumps(out)) == out
    assert out[1]["allow_groups"] == ["beta", "internal"]


def test_preset_ring_custom_weights() -> None:
    r = _load({"preset": "ring", "rings": [["internal"]], "weights": [0.29, 50]})
    assert [p.weight_bp for p in r.phases] == [0, 29, 5000, 10000]
    assert r.phases[-1].name == "full"


# --- errors name the key path ---------------------------------------------------------

@pytest.mark.parametrize(("data", "path"), [
    ({"plan": _plan(10, 5, 100)}, "rollout.plan[1].weight"),
    ({"plan": _plan(1, 5, 2, 100)}, "rollout.plan[2].weight"),
    ({"plan": _plan(1, 50)}, "rollout.plan"),
    ({"plan": []}, "rollout.plan"),
    ({"plan": "canary"}, "rollout.plan"),
    ({"plan": [5, {"weight": 100}]}, "rollout.plan[0]"),
    ({"plan": [{"weight": 100, "colour": "red"}]}, "rollout.plan[0].colour"),
    ({"plan": [{"name": "x"}]}, "rollout.plan[0].weight"),
    ({"plan": [{"weight": 101}]}, "rollout.plan[0].weight"),
    ({"plan": [{"weight": 100, "on_breach": "panic"}]}, "rollout.plan[0].on_breach"),
    ({"plan": [{"weight": 100, "gates": {"max_error_rate": "abc"}}]},
     "rollout.plan[0].gates.max_error_rate"),
    ({"plan": [{"weight": 100, "gates": {"max_p99": 0}}]}, "rollout.plan[0].gates.max_p99"),
    ({"plan": [{"weight": 100, "gates": {"min_requests": 0}}]},
     "rollout.plan[0].gates.min_requests"),
    ({"gates": {"max_error_rate": "150%"}, "plan": _plan(100)}, "rollout.gates.max_error_rate"),
    ({"gates": {"p99": "1s"}, "plan": _plan(100)}, "rollout.gates.p99"),
    ({"plan": _plan(100), "preset": "canary"}, "rollout.preset"),
    ({"preset": "big-bang"}, "rollout.preset"),
    ({"name": "x"}, "rollout.preset"),
    ({"preset": "canary", "step": 10}, "rollout.step"),
    ({"preset": "canary", "weights": [10, 5]}, "rollout.weights"),
    ({"preset": "linear"}, "rollout.step"),
    ({"preset": "linear", "step": 0}, "rollout.step"),
    ({"preset": "ring"}, "rollout.rings"),
    ({"preset": "ring", "rings": ["internal"]}, "rollout.rings"),
    ({"preset": "blue-green", "testers": {"names": ["a"]}}, "rollout.testers.names"),
    ({"tick": "11s", "plan": _plan(100)}, "rollout.tick"),
    ({"tick": "0s", "plan": _plan(100)}, "rollout.tick"),
    ({"rollback_stages": [0.5, 0.25], "plan": _plan(100)}, "rollout.rollback_stages"),
    ({"rollback_stages": [0.5, 0.75, 0], "plan": _plan(100)}, "rollout.rollback_stages"),
    ({"rollback_stages": [], "plan": _plan(100)}, "rollout.rollback_stages"),
    ({"notify": ["https://hooks.local/veer"], "plan": _plan(100)}, "rollout.notify[0].url"),
    ({"confirm": [{"url": "https://gate.local"}], "plan": _plan(100)},
     "rollout.confirm[0].url"),
    ({"notify": ["http://"], "plan": _plan(100)}, "rollout.notify[0].url"),
    ({"notify": [{"url": "http://h/", "tries": 1}], "plan": _plan(100)},
     "rollout.notify[0].tries"),
    ({"notify": [7], "plan": _plan(100)}, "rollout.notify[0]"),
    ({"notify": "http://h/", "plan": _plan(100)}, "rollout.notify"),
    ({"plan": _plan(100), "colour": "red"}, "rollout.colour"),
])
def test_errors_name_the_key_path(data: dict[str, Any], path: str) -> None:
    assert _error(data).path == path


def test_tick_of_ten_seconds_is_allowed() -> None:
    assert _load({"tick": "10s", "plan": _plan(100)}).tick == 10.0


def test_error_message_shows_value_and_expectation() -> None:
    err = _error({"plan": [{"weight": 100, "gates": {"max_error_rate": "abc"}}]})
    assert err.value == "abc"
    assert "1%" in err.expected
    assert str(err).startswith("<test>: rollout.plan[0].gates.max_error_rate: got 'abc'")


def test_decreasing_weight_error_names_the_previous_weight() -> None:
    err = _error({"plan": _plan(10, 5, 100)})
    assert err.value == 5
    assert "10" in err.expected


# --- state: section -------------------------------------------------------------------

def test_read_state_defaults() -> None:
    assert read_state(Reader("<test>", {}, "state")) == StateConfig(None, "safe", 500)


@pytest.mark.parametrize("choice", ["safe", "refuse"])
def test_read_state_on_corrupt(choice: str) -> None:
    cfg = read_state(Reader("<test>", {"path": "/var/lib/veer/state.json",
                                       "on_corrupt": choice, "max_events": 10}, "state"))
    assert cfg == StateConfig("/var/lib/veer/state.json", choice, 10)


@pytest.mark.parametrize(("data", "path"), [
    ({"on_corrupt": "ignore"}, "state.on_corrupt"),
    ({"path": ""}, "state.path"),
    ({"path": 3}, "state.path"),
    ({"max_events": 9}, "state.max_events"),
    ({"max_events": 100_001}, "state.max_events"),
    ({"max_events": True}, "state.max_events"),
    ({"file": "x"}, "state.file"),
])
def test_read_state_errors(data: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_state(Reader("<test>", data, "state"))
    assert info.value.path == path


def test_every_preset_is_written_out_as_its_phases() -> None:
    for data in ({"preset": "canary"}, {"preset": "linear", "step": 25},
                 {"preset": "blue-green", "testers": {"users": ["u"]}},
                 {"preset": "ring", "rings": [["a"], ["b"]]}):
        r = _load(data)
        out = emit.plan(r)
        assert json.loads(json.dumps(out)) == out
        assert [d["weight"] for d in out] == [p.weight_bp / 100 for p in r.phases]
        again = _load({"plan": out})  # the written-out plan is the preset's
        assert again.phases == r.phases
        assert out[-1]["weight"] == 100
