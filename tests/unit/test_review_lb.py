"""Hostile review of the load-balancer features, pure parts (no socket): each test
demonstrates one defect and fails until it is fixed."""

from __future__ import annotations

import time
from typing import Any

from proxy.config.load import from_dict
from proxy.telemetry.access_log import AccessLogBuffer, Entry


def config(**extra: Any) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0",
            "upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                          "new": {"endpoints": ["http://127.0.0.1:2"]}}, **extra}


def test_a_phase_that_mirrors_as_the_config_does_may_gate_on_status_mismatch() -> None:
    """plan.py: 'mirror_bp None: the config's mirror.percent'. Such a phase at weight 0 IS a
    shadow phase once loaded (Phase.shadow is True), yet _read_phase checks
    max_status_mismatch before load.py fills the config's percent in, and refuses it."""
    plan = [{"name": "shadow", "weight": 0, "gates": {"min_requests": 5}},
            {"name": "full", "weight": 100}]
    loaded = from_dict(config(mirror={"percent": 100}, rollout={"plan": plan}), "<t>")
    assert loaded.rollout is not None and loaded.rollout.phases[0].shadow  # a shadow phase
    plan[0]["gates"] = {"min_requests": 5, "max_status_mismatch": "1%"}
    gated = from_dict(config(mirror={"percent": 100}, rollout={"plan": plan}), "<t>")
    assert gated.rollout is not None
    assert gated.rollout.phases[0].gates.max_status_mismatch == 0.01


def entry(target: bytes, agent: bytes) -> Entry:
    return (time.monotonic(), b"GET", target, "1.1", 200, "new", 1000, 2, None, "10.0.0.1",
            [(b"user-agent", agent)], None)


def test_combined_escapes_bytes_above_ascii_whatever_else_the_value_holds() -> None:
    """nginx writes a byte >= 0x7f as \\xHH. _escape does so only on its slow path (a value
    with a quote, a backslash or a control); a value that is merely non-ASCII takes the fast
    path and its latin-1-decoded text is encoded as UTF-8: the client's bytes c3 a9 ('é')
    reach the log as c3 83 c2 a9, and the same bytes are logged two ways."""
    buf = AccessLogBuffer("combined")
    with_quote = buf.render([entry(b'/caf\xc3\xa9"', b'caf\xc3\xa9"')])
    assert b'"GET /caf\\xC3\\xA9\\x22 HTTP/1.1"' in with_quote  # the slow path: as nginx
    plain = buf.render([entry(b"/caf\xc3\xa9", b"caf\xc3\xa9")])
    assert b'"GET /caf\\xC3\\xA9 HTTP/1.1"' in plain and b'"caf\\xC3\\xA9"' in plain, plain
