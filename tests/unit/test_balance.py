"""Balancer: round robin, least outstanding, exclusion and passive health (no sleeping)."""

from __future__ import annotations

import pytest

from proxy.config.model import Address, Health
from proxy.upstream.balancer import Balancer
from proxy.upstream.endpoint import Endpoint

HEALTH = Health(consecutive_failures=3, ejection_time=10.0, max_ejected_percent=50)


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(Address("127.0.0.1", 9000 + i)) for i in range(n)]


def balancer(n: int, policy: str = "round_robin", health: Health = HEALTH) -> Balancer:
    return Balancer(endpoints(n), policy, health)


def fail(b: Balancer, ep: Endpoint, times: int, now: float) -> list[bool]:
    return [b.report_failure(ep, now) for _ in range(times)]


def test_endpoint_basics() -> None:
    ep = Endpoint(Address("10.0.0.1", 8080))
    assert ep.label == "http://10.0.0.1:8080"
    assert (ep.outstanding, ep.total, ep.failures, ep.ejections) == (0, 0, 0, 0)
    assert ep.healthy(0.0)
    assert "10.0.0.1:8080" in repr(ep)
    assert Endpoint(Address("::1", 1)).label == "http://[::1]:1"


def test_empty_pool_rejected() -> None:
    with pytest.raises(ValueError):
        Balancer([], "round_robin", HEALTH)


# --- choice -------------------------------------------------------------------

def test_round_robin_cycles() -> None:
    b = balancer(3)
    eps = b.endpoints
    picks = [b.pick(0.0) for _ in range(7)]
    assert picks == [eps[0], eps[1], eps[2], eps[0], eps[1], eps[2], eps[0]]


def test_round_robin_single_endpoint() -> None:
    b = balancer(1)
    assert [b.pick(0.0) for _ in range(3)] == [b.endpoints[0]] * 3


def test_round_robin_ignores_outstanding() -> None:
    b = balancer(2)
    b.endpoints[0].outstanding = 100
    assert [b.pick(0.0) for _ in range(2)] == b.endpoints


def test_least_outstanding_picks_minimum() -> None:
    b = balancer(4, "least_outstanding")
    for ep, n in zip(b.endpoints, [5, 2, 7, 3], strict=True):
        ep.outstanding = n
    assert all(b.pick(0.0) is b.endpoints[1] for _ in range(8))
    b.endpoints[1].outstanding = 9
    assert b.pick(0.0) is b.endpoints[3]


def test_least_outstanding_ties_round_robin() -> None:
    b = balancer(3, "least_outstanding")
    eps = b.endpoints
    assert [b.pick(0.0) for _ in range(6)] == eps + eps
    eps[1].outstanding = 1
    picks = {id(b.pick(0.0)) for _ in range(6)}
    assert picks == {id(eps[0]), id(eps[2])}


@pytest.mark.parametrize("policy", ["round_robin", "least_outstanding"])
def test_exclude_respected(policy: str) -> None:
    b = balancer(3, policy)
    eps = b.endpoints
    for _ in range(9):
        ep = b.pick(0.0, exclude=[eps[0]])
        assert ep is not None and ep is not eps[0]
    assert all(b.pick(0.0, exclude=(eps[0], eps[2])) is eps[1] for _ in range(5))


def test_least_outstanding_exclude_takes_next_minimum() -> None:
    b = balancer(3, "least_outstanding")
    for ep, n in zip(b.endpoints, [0, 4, 2], strict=True):
        ep.outstanding = n
    assert b.pick(0.0, exclude=[b.endpoints[0]]) is b.endpoints[2]


@pytest.mark.parametrize("policy", ["round_robin", "least_outstanding"])
def test_pick_none_when_all_excluded(policy: str) -> None:
    b = balancer(3, policy)
    assert b.pick(0.0, exclude=b.endpoints) is None
    assert b.pick(0.0, exclude=list(b.endpoints)) is None


@pytest.mark.parametrize("policy", ["round_robin", "least_outstanding"])
def test_pick_none_when_rest_ejected_or_excluded(policy: str) -> None:
    b = balancer(2, policy)
    b.endpoints[0].ejected_until = 50.0
    assert b.pick(10.0, exclude=[b.endpoints[1]]) is None
    assert b.pick(50.0, exclude=[b.endpoints[1]]) is b.endpoints[0]


@pytest.mark.parametrize("policy", ["round_robin", "least_outstanding"])
def test_pick_skips_ejected(policy: str) -> None:
    b = balancer(3, policy)
    b.endpoints[1].ejected_until = 100.0
    picks = [b.pick(99.9) for _ in range(6)]
    assert b.endpoints[1] not in picks
    assert set(map(id, picks)) == {id(b.endpoints[0]), id(b.endpoints[2])}
    assert b.endpoints[1] in [b.pick(100.0) for _ in range(3)]


# --- passive health ---------------------------------------------------------

def test_ejection_after_consecutive_failures() -> None:
    b = balancer(3)
    ep = b.endpoints[0]
    assert fail(b, ep, 3, now=100.0) == [False, False, True]
    assert not ep.healthy(100.0)
    assert ep.ejected_until == 110.0
    assert ep.ejections == 1
    assert ep.failures == 0
    assert b.healthy_count(100.0) == 2
    assert all(b.pick(105.0) is not ep for _ in range(6))


def test_success_resets_streak() -> None:
    b = balancer(3)
    ep = b.endpoints[0]
    assert fail(b, ep, 2, now=0.0) == [False, False]
    b.report_success(ep)
    assert ep.failures == 0
    assert fail(b, ep, 2, now=1.0) == [False, False]
    assert ep.healthy(1.0)
    assert b.report_failure(ep, 2.0) is True


def test_failures_are_per_endpoint() -> None:
    b = balancer(4)
    e0, e1 = b.endpoints[:2]
    for _ in range(2):
        b.report_failure(e0, 0.0)
        b.report_failure(e1, 0.0)
    assert e0.healthy(0.0) and e1.healthy(0.0)
    assert b.report_failure(e0, 0.0) is True


def test_ejection_expires() -> None:
    b = balancer(2)
    e0, e1 = b.endpoints
    assert fail(b, e0, 3, now=100.0)[-1] is True
    assert not e0.healthy(109.999)
    assert [b.pick(109.999) for _ in range(4)] == [e1] * 4
    assert e0.healthy(110.0)
    assert b.healthy_count(110.0) == 2
    assert e0 in [b.pick(110.0) for _ in range(2)]
    # back in, with a clean streak: it takes a full streak again to be ejected
    assert fail(b, e0, 3, now=120.0) == [False, False, True]
    assert e0.ejections == 2
    assert e0.ejected_until == 130.0


def test_failures_while_ejected_do_not_extend() -> None:
    b = balancer(3)
    ep = b.endpoints[0]
    fail(b, ep, 3, now=0.0)
    assert fail(b, ep, 5, now=5.0) == [False] * 5
    assert ep.ejected_until == 10.0
    assert ep.ejections == 1


def test_never_ejects_last_healthy_endpoint() -> None:
    b = balancer(2, health=Health(consecutive_failures=1, ejection_time=10.0,
                                  max_ejected_percent=100))
    e0, e1 = b.endpoints
    assert b.report_failure(e0, 0.0) is True
    assert fail(b, e1, 5, now=1.0) == [False] * 5
    assert e1.healthy(1.0)
    assert b.pick(1.0) is e1


def test_single_endpoint_never_ejected() -> None:
    b = balancer(1, health=Health(consecutive_failures=1, ejection_time=10.0,
                                  max_ejected_percent=100))
    ep = b.endpoints[0]
    assert fail(b, ep, 10, now=0.0) == [False] * 10
    assert ep.healthy(0.0)
    assert b.pick(0.0) is ep


@pytest.mark.parametrize(("n", "percent", "max_ejected"), [
    (4, 50, 2),
    (4, 25, 1),
    (4, 100, 3),  # never the last healthy one
    (4, 0, 0),
    (3, 50, 1),   # 1.5 rounds down
    (2, 50, 1),
    (10, 10, 1),
    (5, 10, 1),   # 0.5 rounds down, but at least one may go (as Envoy)
])
def test_max_ejected_percent(n: int, percent: int, max_ejected: int) -> None:
    b = balancer(n, health=Health(consecutive_failures=1, ejection_time=10.0,
                                  max_ejected_percent=percent))
    results = [b.report_failure(ep, 0.0) for ep in b.endpoints]
    assert sum(results) == max_ejected
    assert b.healthy_count(0.0) == n - max_ejected
    assert b.pick(0.0) is not None


def test_max_ejected_frees_up_after_expiry() -> None:
    b = balancer(4, health=Health(consecutive_failures=1, ejection_time=10.0,
                                  max_ejected_percent=25))
    e0, e1 = b.endpoints[:2]
    assert b.report_failure(e0, 0.0) is True
    assert b.report_failure(e1, 5.0) is False  # the one allowed slot is taken
    assert e1.failures == 1
    assert b.report_failure(e1, 10.0) is True  # e0's ejection ran out
    assert e0.healthy(10.0) and not e1.healthy(10.0)
