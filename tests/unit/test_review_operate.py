"""Hostile review of the operator surface (retry and the stop record, ``veer check``'s
effective config and gate floors): each test here fails on a real defect and says why."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from admin import views
from admin.cli.parsing import main
from admin.cli.render import render_status
from proxy.config import emit
from proxy.config.load import from_dict, parse
from proxy.config.reader import ConfigError
from proxy.control.controller import Controller
from proxy.control.requirements import phase_needs, plan_timing
from proxy.control.state import RolloutState, Status
from proxy.routing.variant import NEW, ORIGINAL
from proxy.runtime.preflight import preflight
from proxy.runtime.runtime import Runtime
from tests.unit.test_controller import FakeTelemetry, make, rollout

POOLS: dict[str, Any] = {"original": {"endpoints": ["http://127.0.0.1:1"]},
                         "new": {"endpoints": ["http://127.0.0.1:2"]}}
TWO_PHASES: dict[str, Any] = {"name": "r", "plan": [
    {"name": "canary", "weight": 10, "duration": "1h"}, {"name": "full", "weight": 100}]}


def _runtime_of(c: Controller) -> Runtime:
    """What ``views.rollout`` reads of a runtime: its rollout runner's controller."""
    return cast(Runtime, SimpleNamespace(rollout=SimpleNamespace(controller=c)))


# -- veer check: the effective config must load back to the same settings -------------
def test_check_output_keeps_a_salt_with_a_next_line_character(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``veer check --config a.yaml > b.yaml`` must give a config with exactly the same
    settings (README, Running it). A salt holding U+0085 (NEL, written ``"\\x85"`` in a
    double-quoted YAML string) is printed raw by ``yaml.safe_dump(allow_unicode=True)``,
    and YAML reads a raw NEL as a line break folded to a space: b.yaml has another salt, so
    every user is hashed anew and moves between original and new. Right: the printed YAML
    reads back to the same salt (escape the character, e.g. dump without allow_unicode for
    such strings)."""
    path = tmp_path / "a.yaml"
    path.write_text('upstreams: {original: {endpoints: ["http://127.0.0.1:1"]}, '
                    'new: {endpoints: ["http://127.0.0.1:2"]}}\n'
                    'routing: {salt: "checkout\\x85v2"}\n', encoding="utf-8")
    assert parse(path.read_text(encoding="utf-8"), "a.yaml").routing.salt == "checkout\x85v2"
    assert main(["check", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert parse(printed, "b.yaml").routing.salt == "checkout\x85v2"


def test_check_output_of_workers_auto_loads_back_on_a_large_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers: auto`` resolves to the CPUs this process may use, with no upper bound, but
    a written number must be 1..256. On a host with more than 256 CPUs ``veer check``
    prints ``workers: 300``, which ``veer check``/``run`` then refuse ("a whole number
    1..256"), so the README's "check > b.yaml; check b.yaml passes" breaks (and run starts
    more workers than a written config may ask for). Right: auto stays within 1..256 (or
    the effective config is one that loads)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(300)))
    cfg = from_dict({"upstreams": POOLS, "workers": "auto"}, "a.yaml")
    import yaml

    text = yaml.safe_dump(emit.to_config_data(cfg), sort_keys=False, allow_unicode=True)
    back = parse(text, "b.yaml")  # ConfigError now: workers: got 300
    assert back.workers == cfg.workers


# -- veer check: gate floors against the controller ------------------------------------
@pytest.mark.parametrize("gate", [{"max_error_rate_increase": "0.5%"},
                                  {"max_latency_increase": "10%"}])
def test_a_gate_against_original_in_the_100_percent_phase_can_never_pass(
        gate: dict[str, str]) -> None:
    """A gate comparing new with original needs ``min_requests`` on original too, and at
    weight 100 original gets no requests: the controller never passes it, so the plan never
    completes (a preset with rollout-level ``gates: {max_error_rate_increase: ...}`` puts it
    in the 100% phase). ``veer check --rate 10`` still prints an earliest advance (1m13s
    for the increase gate, 10s for the latency one). Right: check says the phase can never
    advance there (``never``), as it does for a limit of 0."""
    data = {"name": "r", "plan": [{"name": "full", "weight": 100, "gates": gate}]}
    c, tel, clock = make(data)
    for _ in range(3600):  # an hour at 10 requests/s on new, all of them fine
        clock.t += 1
        tel.feed(NEW, 10)
        tel.hist[NEW][4] += 10
        c.tick(clock.t)
    assert c.state.status is Status.PROGRESSING  # the controller never passed it
    timing = plan_timing(rollout(data), rate=10.0)
    assert timing[0].earliest is None, (
        f"check says the phase can advance after {timing[0].earliest}s; it never can")


def test_the_increase_gate_floor_states_what_it_assumes_of_original() -> None:
    """README said the numbers are floors, "no gate passes without them"; for
    ``max_error_rate_increase: 0.5%`` check printed 736 requests on new. But the judge
    subtracts original's lower bound, so when original itself has errors (1% here) the gate
    passes after far fewer requests on new (about 250). Fixed: check says the 736 assumes no
    error on either side and names the true floor (``min_requests``), which holds."""
    data = {"name": "r", "plan": [
        {"name": "canary", "weight": 50, "gates": {"max_error_rate_increase": "0.5%"}},
        {"name": "full", "weight": 100}]}
    need = phase_needs(rollout(data).phases[0])[0]
    assert need.requests == 736
    assert "if neither side has an error (as few as 100 when original has errors" in need.text
    c, tel, clock = make(data)
    on_new = 0
    while c.state.phase == 0 and on_new < 2 * need.requests:
        clock.t += 1
        tel.feed(NEW, 1)
        tel.feed(ORIGINAL, 100, 1)  # original: 1% errors, as it had before the release
        on_new += 1
        c.tick(clock.t)
    assert c.state.phase == 1  # it did pass ...
    assert 100 <= on_new < need.requests  # ... sooner, as the text says, never before 100


def test_a_rollout_with_recording_off_is_refused() -> None:
    """With ``recording.enabled: false`` the recorder gets nothing, and the controller reads
    its gates from the recorder: a live veer shows ``0/0: only 0 of 20 requests`` after 150
    requests on new. So the plan never advances and, worse, a failing release is never
    rolled back, while ``veer check`` says OK and prints "can pass after >= 299
    requests". Right: a rollout with recording off is refused (by the config or by
    preflight, so check and run both say so)."""
    data = {"upstreams": POOLS, "recording": {"enabled": False},
            "rollout": {"name": "r", "plan": [
                {"name": "canary", "weight": 10, "gates": {"max_error_rate": "1%"}},
                {"name": "full", "weight": 100}]}}
    try:
        cfg = from_dict(data, "a.yaml")
    except ConfigError:
        return
    problems = preflight(cfg)
    assert any("recording" in p for p in problems), problems


# -- the stop record -------------------------------------------------------------------
def _rolled_back_state_without_stopped(now: float) -> RolloutState:
    """A rolled-back state as veer before retry wrote it: no ``stopped`` key, the rollback
    only in the events."""
    doc = RolloutState(rollout="r", status=Status.ROLLED_BACK, weight_bp=0,
                       phase_started=now - 3600).to_dict()
    del doc["stopped"]
    doc["events"] = [{"time": now - 1800, "kind": "rollback", "from": "progressing@10%",
                      "to": "rolled-back@0%", "reason": "carts failing", "actor": "alice",
                      "evidence": {}}]
    return RolloutState.from_dict(doc)


def test_a_state_from_an_older_veer_shows_its_rollback_with_the_clock_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """State files written before retry have no ``stopped`` (and so does the Redis
    document an older replica saves during a rolling upgrade). ``from_dict`` reads them,
    but /status then shows a rolled-back rollout with ``clock: running`` and an elapsed
    time that keeps growing ("elapsed 1h00m of at least 1h00m": the phase looks done and
    running), and neither what was rolled back nor the "veer retry" hint, though the
    rollback event is in the file. Right: a rolled-back or aborted rollout's phase clock is
    stopped (at its last rollback/abort event when ``stopped`` is absent)."""
    now = time.time()
    plan = rollout(TWO_PHASES)
    c = Controller(plan, FakeTelemetry(), _rolled_back_state_without_stopped(now), now)
    monkeypatch.setattr(views, "time", SimpleNamespace(time=lambda: now))
    first = views.rollout(_runtime_of(c))
    monkeypatch.setattr(views, "time", SimpleNamespace(time=lambda: now + 600))
    later = views.rollout(_runtime_of(c))
    assert first is not None and later is not None
    assert first["status"] == "rolled-back"
    assert later["phase"]["clock"] == "stopped"
    assert later["phase"]["elapsed_s"] == first["phase"]["elapsed_s"]


def test_a_partial_stop_record_is_refused_or_shown_never_a_crash() -> None:
    """``from_dict`` promises KeyError/TypeError/ValueError "on anything malformed" (so a
    bad file is kept aside and veer starts safe), but takes any mapping as ``stopped``. A
    record without ``elapsed_s`` (hand-edited, or another veer's) then makes every
    ``views.rollout`` raise KeyError: GET /status answers 500, the dashboard and
    ``veer status`` go dark until someone retries; ``phase: null`` crashes
    ``render_status`` with TypeError. Right: such a state is refused at load, or shown
    without crashing."""
    now = time.time()
    doc = RolloutState(rollout="r", status=Status.ROLLED_BACK, phase_started=now).to_dict()
    doc["stopped"] = {"kind": "rollback", "reason": "carts failing", "phase": None}
    try:
        state = RolloutState.from_dict(doc)
    except (KeyError, TypeError, ValueError):
        return  # refused at load: the file is kept aside and veer starts safe
    c = Controller(rollout(TWO_PHASES), FakeTelemetry(), state, now)
    ro = views.rollout(_runtime_of(c))
    text = render_status({"rollout": ro, "weights": {"original": 100.0, "new": 0.0},
                          "variants": {}})
    assert "rolled-back" in text
