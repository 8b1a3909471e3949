"""The rise/fall rule of active health checks, against a plain model of it (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import ActiveHealth, Address
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.probe import forget, judge, mark


def model(results: list[bool], rise: int, fall: int) -> list[bool]:
    """Whether the endpoint is in rotation after each probe: HAProxy's rise/fall counters."""
    up, run_ok, run_bad, out = True, 0, 0, []
    for ok in results:
        run_ok, run_bad = (run_ok + 1, 0) if ok else (0, run_bad + 1)
        if up and run_bad >= fall:
            up = False
        elif not up and run_ok >= rise:
            up = True
        out.append(up)
    return out


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5), st.integers(1, 5))
def test_judge_follows_rise_and_fall(results: list[bool], rise: int, fall: int) -> None:
    cfg = ActiveHealth(healthy=rise, unhealthy=fall)
    ep = Endpoint(Address("127.0.0.1", 1))
    expected = model(results, rise, fall)
    was = True
    for ok, up in zip(results, expected, strict=True):
        change = judge(ep, ok, "200" if ok else "503", cfg)
        assert ep.healthy(0.0) is up and ep.probe_down is (not up)
        assert change == (None if up == was else up)  # a transition is reported exactly once
        was = up


def test_a_down_endpoint_is_skipped_however_long_and_forget_or_mark_bring_it_back() -> None:
    ep = Endpoint(Address("127.0.0.1", 1))
    cfg = ActiveHealth(unhealthy=1)
    assert judge(ep, False, "connect: refused", cfg) is False
    assert ep.ejected_until == math.inf and not ep.healthy(1e12) and ep.probe == "connect: refused"
    assert forget(ep) is True and ep.healthy(0.0) and ep.probe_streak == 0
    assert forget(ep) is False
    mark(ep, False)
    assert not ep.healthy(0.0)
    mark(ep, True)
    assert ep.healthy(0.0)


def test_coming_back_leaves_a_passive_ejection_alone_unless_the_probes_had_it_down() -> None:
    ep = Endpoint(Address("127.0.0.1", 1))
    ep.ejected_until = 50.0  # ejected by passive health
    judge(ep, True, "200", ActiveHealth(healthy=1))
    assert ep.ejected_until == 50.0  # it was never down by the probes: nothing to undo
