"""Routing: the bucket function, Unleash compatibility, monotone cohorts, the Router."""

from __future__ import annotations

import dataclasses
from typing import Any

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.model import Cohort, KeySource, Routing
from proxy.routing.hashing import bucket, choose
from proxy.routing.keys import parse_cookies
from proxy.routing.live import LiveState
from proxy.routing.router import Decision, Router
from proxy.routing.variant import NEW, ORIGINAL

# ---------------------------------------------------------------------------
# bucket / choose: fixed vectors from the design (and Unleash's own tests)
# ---------------------------------------------------------------------------

DESIGN_VECTORS = [
    # salt, key, murmur3 h, bucket, weight bp, variant at that weight
    ("AB12A", "122", 1062108722, 2287, 5000, NEW),
    ("AB12A", "155", 3268232399, 9923, 5000, ORIGINAL),
    ("Feature.flexibleRollout.10", "174", 3067997709, 977, 1000, NEW),
]


@pytest.mark.parametrize(("salt", "key", "h", "expected_bucket", "weight", "variant"),
                         DESIGN_VECTORS)
def test_design_vectors(
    salt: str, key: str, h: int, expected_bucket: int, weight: int, variant: str,
) -> None:
    assert mmh3.hash(f"{salt}:{key}", 0, False) == h
    assert bucket(salt, key) == expected_bucket
    assert choose(bucket(salt, key), weight) == variant


def unleash_normalized_hash(key: str, group_id: str) -> int:
    """Unleash's normalizedHash: murmur3 x86 32 (seed 0) of "groupId:id" % 100 + 1."""
    return int(mmh3.hash(f"{group_id}:{key}", 0, False)) % 100 + 1


@pytest.mark.parametrize(("salt", "key", "normalized"), [
    ("AB12A", "122", 23),
    ("AB12A", "155", 100),
    ("Feature.flexibleRollout.10", "174", 10),
    # unleash-client-node test/strategy/util-test.js: same across node, java and go
    ("gr1", "123", 73),
    ("groupX", "999", 25),
])
def test_unleash_normalized_hash_vectors(salt: str, key: str, normalized: int) -> None:
    assert unleash_normalized_hash(key, salt) == normalized
    # veer's bucket keeps h % 100 in the high digits: the whole-percent cohort.
    assert bucket(salt, key) // 100 + 1 == normalized


@settings(max_examples=300)
@given(salt=st.text(min_size=1), key=st.text(), percent=st.integers(0, 100))
def test_whole_percent_cohort_equals_unleash(salt: str, key: str, percent: int) -> None:
    # Unleash gradual rollout: enabled when percentage > 0 and normalizedHash <= percentage.
    unleash_on = percent > 0 and unleash_normalized_hash(key, salt) <= percent
    assert (choose(bucket(salt, key), percent * 100) == NEW) == unleash_on


def test_bucket_utf8() -> None:
    # The hash input is UTF-8: a non-ASCII key hashes its UTF-8 bytes.
    h = mmh3.hash("s:ü".encode(), 0, False)
    assert bucket("s", "ü") == (h % 100) * 100 + (h // 100) % 100


@settings(max_examples=300)
@given(salt=st.text(), key=st.text())
def test_bucket_range(salt: str, key: str) -> None:
    assert 0 <= bucket(salt, key) <= 9999


@settings(max_examples=300)
@given(salt=st.text(), key=st.text(), w1=st.integers(0, 10000), w2=st.integers(0, 10000))
def test_monotone_cohorts(salt: str, key: str, w1: int, w2: int) -> None:
    lo, hi = min(w1, w2), max(w1, w2)
    b = bucket(salt, key)
    if choose(b, lo) == NEW:
        assert choose(b, hi) == NEW
    # and the other way round: original at the higher weight stays original lower down
    if choose(b, hi) == ORIGINAL:
        assert choose(b, lo) == ORIGINAL


@given(b=st.integers(0, 9999))
def test_weight_extremes(b: int) -> None:
    assert choose(b, 0) == ORIGINAL
    assert choose(b, 10000) == NEW


@pytest.mark.parametrize(("b", "weight", "variant"), [
    (0, 0, ORIGINAL), (0, 1, NEW), (999, 1000, NEW), (1000, 1000, ORIGINAL),
    (9999, 9999, ORIGINAL), (9999, 10000, NEW),
])
def test_choose_boundaries(b: int, weight: int, variant: str) -> None:
    assert choose(b, weight) == variant


N_KEYS = 100_000


@pytest.fixture(scope="module")
def buckets_100k() -> list[int]:
    return [bucket("split-test", f"user-{i}") for i in range(N_KEYS)]


@pytest.mark.parametrize("weight_bp", [100, 1000, 5000])
def test_split_within_one_point(buckets_100k: list[int], weight_bp: int) -> None:
    on_new = sum(1 for b in buckets_100k if choose(b, weight_bp) == NEW)
    share_pct = on_new * 100 / N_KEYS
    assert abs(share_pct - weight_bp / 100) <= 1.0


def test_buckets_cover_the_range(buckets_100k: list[int]) -> None:
    # Both digits pairs vary: every whole percent and every sub-percent slot is used.
    assert {b // 100 for b in buckets_100k} == set(range(100))
    assert {b % 100 for b in buckets_100k} == set(range(100))


# ---------------------------------------------------------------------------
# parse_cookies
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "expected"), [
    (None, {}),
    (b"", {}),
    (b"uid=u1", {"uid": "u1"}),
    (b"a=1; b=2;c=3", {"a": "1", "b": "2", "c": "3"}),
    (b"uid=first; uid=second", {"uid": "first"}),
    (b'uid="quoted"', {"uid": "quoted"}),
    (b"novalue; =nameless; ok=1", {"ok": "1"}),
    (b"empty=; x=y", {"empty": "", "x": "y"}),
    (b"tok=a=b", {"tok": "a=b"}),
])
def test_parse_cookies(header: bytes | None, expected: dict[str, str]) -> None:
    assert parse_cookies(header) == expected


# ---------------------------------------------------------------------------
# Router
# ---------------------------------------------------------------------------

THREE_SOURCES = (KeySource("header", "X-User-Id"), KeySource("cookie", "uid"),
                 KeySource("query", "uid"))


def make_router(uid: str = "generated-uid", **kw: Any) -> Router:
    cfg = dataclasses.replace(Routing(salt="AB12A", user_key=THREE_SOURCES), **kw)
    return Router(cfg, new_uid=lambda: uid)


def route(router: Router, headers: dict[bytes, bytes] | None = None, query: bytes = b"",
          ip: str = "10.0.0.1", weight: int = 5000) -> Decision:
    return router.route(headers or {}, query, ip, LiveState(weight))


@pytest.mark.parametrize(("headers", "query", "user"), [
    ({b"x-user-id": b"h1", b"cookie": b"uid=c1"}, b"uid=q1", "h1"),
    ({b"cookie": b"uid=c1"}, b"uid=q1", "c1"),
    ({}, b"uid=q1&other=2", "q1"),
    ({b"x-user-id": b"  h1  "}, b"", "h1"),
    # empty values are not present: the next source wins
    ({b"x-user-id": b"", b"cookie": b"uid=c1"}, b"uid=q1", "c1"),
    ({b"x-user-id": b"   ", b"cookie": b"uid="}, b"uid=q1", "q1"),
])
def test_user_key_source_order(headers: dict[bytes, bytes], query: bytes, user: str) -> None:
    d = route(make_router(), headers, query)
    assert d.user == user
    assert d.set_cookie is None
    assert d.reason == "weight"


def test_user_key_order_follows_config() -> None:
    router = make_router(user_key=(KeySource("query", "uid"), KeySource("header", "X-User-Id")))
    assert route(router, {b"x-user-id": b"h1"}, b"uid=q1").user == "q1"
    assert route(router, {b"x-user-id": b"h1"}, b"").user == "h1"


def test_weighted_decision_uses_bucket() -> None:
    router = make_router()
    d122 = route(router, {b"x-user-id": b"122"}, weight=5000)
    d155 = route(router, {b"x-user-id": b"155"}, weight=5000)
    assert d122 == Decision(NEW, "weight", "122", None)
    assert d155 == Decision(ORIGINAL, "weight", "155", None)
    assert route(router, {b"x-user-id": b"122"}, weight=2287).variant == ORIGINAL
    assert route(router, {b"x-user-id": b"122"}, weight=2288).variant == NEW


@settings(max_examples=200)
@given(key=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1),
       weight=st.integers(0, 10000))
def test_router_weight_matches_choose(key: str, weight: int) -> None:
    router = make_router(user_key=(KeySource("header", "X-User-Id"),))
    d = router.route({b"x-user-id": key.encode()}, b"", "10.0.0.1", LiveState(weight))
    assert d.reason == "weight"
    assert d.variant == choose(bucket("AB12A", key), weight)


def test_anonymous_cookie_first_visit_sets_cookie() -> None:
    d = route(make_router(uid="fresh", anonymous="cookie"))
    assert d.user == "fresh"
    assert d.set_cookie == "fresh"
    assert d.variant == choose(bucket("AB12A", "fresh"), 5000)


def test_anonymous_cookie_second_visit_is_sticky() -> None:
    router = make_router(uid="never-used", anonymous="cookie")
    d = route(router, {b"cookie": b"other=1; veer_uid=abc123"})
    assert d.user == "abc123"
    assert d.set_cookie is None
    assert d.variant == choose(bucket("AB12A", "abc123"), 5000)


def test_anonymous_cookie_custom_name_and_empty_value() -> None:
    router = make_router(uid="fresh", cookie_name="vid")
    assert route(router, {b"cookie": b"vid=mine"}).user == "mine"
    # the default name is not read when another is configured
    assert route(router, {b"cookie": b"veer_uid=x"}).set_cookie == "fresh"
    # an empty cookie is no uid
    d = route(router, {b"cookie": b"vid="})
    assert (d.user, d.set_cookie) == ("fresh", "fresh")


def test_anonymous_cookie_not_used_when_key_present() -> None:
    d = route(make_router(uid="fresh"), {b"x-user-id": b"u1", b"cookie": b"veer_uid=abc"})
    assert (d.user, d.set_cookie) == ("u1", None)


def test_default_uid_generator() -> None:
    router = Router(Routing())
    live = LiveState()
    a, b = router.route({}, b"", "1.2.3.4", live), router.route({}, b"", "1.2.3.4", live)
    assert a.set_cookie is not None and b.set_cookie is not None
    assert len(a.set_cookie) == 24
    int(a.set_cookie, 16)  # hex
    assert a.set_cookie != b.set_cookie


def test_anonymous_ip_mode() -> None:
    router = make_router(anonymous="ip")
    d = route(router, {b"cookie": b"veer_uid=ignored"}, ip="192.0.2.7", weight=5000)
    assert d.user == "192.0.2.7"
    assert d.set_cookie is None
    assert d.variant == choose(bucket("AB12A", "192.0.2.7"), 5000)
    # a user key still wins over the ip
    assert route(router, {b"x-user-id": b"u1"}, ip="192.0.2.7").user == "u1"


# --- force ------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "weight", "variant"), [
    ({b"x-veer-variant": b"new"}, 0, NEW),
    ({b"x-veer-variant": b"original"}, 10000, ORIGINAL),
    ({b"x-veer-variant": b" NEW "}, 0, NEW),
    ({b"cookie": b"veer_variant=new"}, 0, NEW),
    ({b"cookie": b"veer_variant=Original"}, 10000, ORIGINAL),
    # the header is read before the cookie
    ({b"x-veer-variant": b"original", b"cookie": b"veer_variant=new"}, 10000, ORIGINAL),
])
def test_force_when_enabled(headers: dict[bytes, bytes], weight: int, variant: str) -> None:
    router = make_router(force_enabled=True)
    headers = {b"x-user-id": b"u1", **headers}
    d = route(router, headers, weight=weight)
    assert (d.variant, d.reason, d.user) == (variant, "force", "u1")


@pytest.mark.parametrize("headers", [
    {b"x-veer-variant": b"new"},
    {b"cookie": b"veer_variant=new"},
])
def test_force_ignored_when_disabled(headers: dict[bytes, bytes]) -> None:
    router = make_router(force_enabled=False)
    d = route(router, {b"x-user-id": b"u1", **headers}, weight=0)
    assert (d.variant, d.reason) == (ORIGINAL, "weight")
    assert b"x-veer-variant" not in router.header_names


@pytest.mark.parametrize("value", [b"banana", b"", b"canary", b"new1"])
def test_invalid_force_value_ignored(value: bytes) -> None:
    router = make_router(force_enabled=True)
    d = route(router, {b"x-user-id": b"u1", b"x-veer-variant": value}, weight=0)
    assert (d.variant, d.reason) == (ORIGINAL, "weight")


def test_force_custom_header_and_cookie() -> None:
    router = make_router(force_enabled=True, force_header="X-Canary", force_cookie="canary")
    assert b"x-canary" in router.header_names
    assert route(router, {b"x-canary": b"new"}, weight=0).reason == "force"
    assert route(router, {b"cookie": b"canary=new"}, weight=0).reason == "force"
    assert route(router, {b"x-veer-variant": b"new"}, weight=0).reason == "weight"


def test_force_beats_allow_and_deny() -> None:
    router = make_router(force_enabled=True, allow=Cohort(users=frozenset({"a"})),
                         deny=Cohort(users=frozenset({"d"})))
    d = route(router, {b"x-user-id": b"a", b"x-veer-variant": b"original"})
    assert (d.variant, d.reason) == (ORIGINAL, "force")
    d = route(router, {b"x-user-id": b"d", b"x-veer-variant": b"new"})
    assert (d.variant, d.reason) == (NEW, "force")


def test_force_keeps_anonymous_cookie() -> None:
    router = make_router(uid="fresh", force_enabled=True)
    d = route(router, {b"x-veer-variant": b"new"})
    assert d == Decision(NEW, "force", "fresh", "fresh")


# --- allow / deny -----------------------------------------------------------

GROUPS = (KeySource("header", "X-Groups"),)


@pytest.mark.parametrize(("allow", "deny", "headers", "weight", "variant", "reason"), [
    (Cohort(users=frozenset({"u1"})), Cohort(), {b"x-user-id": b"u1"}, 0, NEW, "allow"),
    (Cohort(groups=frozenset({"staff"})), Cohort(),
     {b"x-user-id": b"u1", b"x-groups": b"staff"}, 0, NEW, "allow"),
    (Cohort(groups=frozenset({"staff"})), Cohort(),
     {b"x-user-id": b"u1", b"x-groups": b"beta, staff ,ops"}, 0, NEW, "allow"),
    (Cohort(), Cohort(users=frozenset({"u1"})), {b"x-user-id": b"u1"}, 10000, ORIGINAL, "deny"),
    (Cohort(), Cohort(groups=frozenset({"eu"})),
     {b"x-user-id": b"u1", b"x-groups": b"us,eu"}, 10000, ORIGINAL, "deny"),
    # allow beats deny: user in both, group in both, or allowed user in a denied group
    (Cohort(users=frozenset({"u1"})), Cohort(users=frozenset({"u1"})),
     {b"x-user-id": b"u1"}, 0, NEW, "allow"),
    (Cohort(groups=frozenset({"g"})), Cohort(groups=frozenset({"g"})),
     {b"x-user-id": b"u1", b"x-groups": b"g"}, 0, NEW, "allow"),
    (Cohort(users=frozenset({"u1"})), Cohort(groups=frozenset({"g"})),
     {b"x-user-id": b"u1", b"x-groups": b"g"}, 0, NEW, "allow"),
    (Cohort(groups=frozenset({"g"})), Cohort(users=frozenset({"u1"})),
     {b"x-user-id": b"u1", b"x-groups": b"g"}, 0, NEW, "allow"),
    # not listed: the weight decides
    (Cohort(users=frozenset({"u2"}), groups=frozenset({"staff"})),
     Cohort(users=frozenset({"u3"}), groups=frozenset({"eu"})),
     {b"x-user-id": b"u1", b"x-groups": b"staffer, e u"}, 10000, NEW, "weight"),
    # a group name is matched whole, not as a substring; empty items ignored
    (Cohort(groups=frozenset({"staff"})), Cohort(),
     {b"x-user-id": b"u1", b"x-groups": b" , ,staffing"}, 0, ORIGINAL, "weight"),
])
def test_allow_deny(
    allow: Cohort, deny: Cohort, headers: dict[bytes, bytes], weight: int,
    variant: str, reason: str,
) -> None:
    router = make_router(group_key=GROUPS, allow=allow, deny=deny)
    d = route(router, headers, weight=weight)
    assert (d.variant, d.reason, d.user) == (variant, reason, "u1")


def test_group_from_cookie_and_query() -> None:
    router = make_router(group_key=(KeySource("cookie", "grp"), KeySource("query", "grp")),
                         allow=Cohort(groups=frozenset({"beta"})))
    assert route(router, {b"x-user-id": b"u", b"cookie": b"grp=beta"}, weight=0).reason == "allow"
    assert route(router, {b"x-user-id": b"u"}, b"grp=x,beta", weight=0).reason == "allow"
    assert route(router, {b"x-user-id": b"u"}, b"grp=alpha", weight=0).reason == "weight"


def test_allow_applies_to_anonymous_ip() -> None:
    router = make_router(anonymous="ip", deny=Cohort(users=frozenset({"192.0.2.9"})))
    assert route(router, ip="192.0.2.9", weight=10000).reason == "deny"


def test_header_names() -> None:
    router = make_router(group_key=GROUPS, force_enabled=True)
    assert router.header_names == frozenset(
        {b"x-user-id", b"x-groups", b"cookie", b"x-veer-variant"})
    assert make_router(user_key=(KeySource("query", "u"),)).header_names == frozenset(
        {b"cookie"})


def test_query_ignored_without_query_source() -> None:
    router = make_router(uid="fresh", user_key=(KeySource("header", "X-User-Id"),))
    d = route(router, {}, b"uid=q1")
    assert d.user == "fresh"


def test_query_percent_decoded() -> None:
    assert route(make_router(), {}, b"x=1&uid=a%20b+c").user == "a b c"
