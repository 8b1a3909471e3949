"""Config: the sample loads as is; every error names file, key path, value and expected form."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.emit import to_config_data
from proxy.config.load import from_dict, load, parse_endpoint, parse_listen
from proxy.config.model import (
    Address,
    Admin,
    Cohort,
    Config,
    Health,
    KeySource,
    Limits,
    Routing,
    Timeouts,
)
from proxy.config.net import is_loopback
from proxy.config.reader import ConfigError

SAMPLE_YAML = """\
listen: 127.0.0.1:8080
admin: {listen: 127.0.0.1:9901}
upstreams:
  original: {endpoints: ["http://127.0.0.1:9001", "http://127.0.0.1:9003"]}
  new: {endpoints: ["http://127.0.0.1:9002"]}
routing: {salt: checkout-v2, user_key: ["header:X-User-Id", "cookie:uid"], anonymous: cookie}
weights: {new: 10}
"""

SOURCE = "veer.yaml"
DELETE = object()


def sample() -> dict[str, Any]:
    data = yaml.safe_load(SAMPLE_YAML)
    assert isinstance(data, dict)
    return data


def with_(path: str, value: object) -> dict[str, Any]:
    """The sample with the dotted ``path`` set to ``value`` (or deleted)."""
    data = sample()
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = copy.deepcopy(value)
    return data


# ---------------------------------------------------------------------------
# The sample and the valid forms
# ---------------------------------------------------------------------------

def check_sample(cfg: Config, source: str) -> None:
    assert cfg.source == source
    assert cfg.new_weight_bp == 1000
    assert cfg.listen == Address("127.0.0.1", 8080)
    assert cfg.admin == Admin(listen=Address("127.0.0.1", 9901), token_file=None)
    assert cfg.original.endpoints == (Address("127.0.0.1", 9001), Address("127.0.0.1", 9003))
    assert cfg.new.endpoints == (Address("127.0.0.1", 9002),)
    assert cfg.original.balance == "round_robin"
    assert cfg.new.failover is None
    assert cfg.routing.salt == "checkout-v2"
    assert cfg.routing.user_key == (KeySource("header", "X-User-Id"), KeySource("cookie", "uid"))
    assert cfg.routing.anonymous == "cookie"
    assert cfg.routing.force_enabled is False
    # everything else defaulted
    assert cfg.timeouts == Timeouts()
    assert cfg.limits == Limits()
    assert cfg.health == Health()
    assert cfg.connect_retries == 1


def test_sample_from_dict() -> None:
    check_sample(from_dict(sample(), SOURCE), SOURCE)


def test_sample_load(tmp_path: Path) -> None:
    path = tmp_path / "veer.yaml"
    path.write_text(SAMPLE_YAML, encoding="utf-8")
    check_sample(load(path), str(path))
    check_sample(load(str(path)), str(path))


def test_config_is_frozen() -> None:
    cfg = from_dict(sample())
    with pytest.raises(AttributeError):
        cfg.new_weight_bp = 5  # type: ignore[misc]


def test_the_effective_config_is_written_in_config_keys() -> None:
    cfg = from_dict(with_("routing.allow", {"users": ["b", "a"], "groups": ["staff"]}), SOURCE)
    d = to_config_data(cfg)
    assert json.loads(json.dumps(d)) == d
    assert d["weights"] == {"new": 10}
    assert d["listen"] == "127.0.0.1:8080"
    assert d["upstreams"]["original"]["endpoints"] == ["http://127.0.0.1:9001",
                                                       "http://127.0.0.1:9003"]
    assert d["routing"]["user_key"] == ["header:X-User-Id", "cookie:uid"]
    assert d["routing"]["allow"] == {"users": ["a", "b"], "groups": ["staff"]}

def test_minimal_config_defaults() -> None:
    cfg = from_dict({"upstreams": {"original": {"endpoints": ["http://a:1"]},
                                   "new": {"endpoints": ["http://b"]}}})
    assert cfg.source == "<config>"
    assert cfg.new_weight_bp == 0
    assert cfg.listen == Address("127.0.0.1", 8080)
    assert cfg.admin == Admin()
    assert cfg.routing == Routing()
    assert cfg.new.endpoints == (Address("b", 80),)


@pytest.mark.parametrize(("weights", "bp"), [
    ({"new": 10}, 1000),
    ({"new": 0}, 0),
    ({"new": 100}, 10000),
    ({"new": 12.5}, 1250),
    ({"new": "12.34"}, 1234),
    ({"new": 12.34}, 1234),
    ({"new": "1%"}, 100),
    ({"new": 0.01}, 1),
    ({"new": 10, "original": 90}, 1000),
    ({"new": "12.34", "original": 87.66}, 1234),
    ({"original": 100}, 0),
    ({}, 0),
    (None, 0),
])
def test_weights(weights: object, bp: int) -> None:
    assert from_dict(with_("weights", weights)).new_weight_bp == bp


@pytest.mark.parametrize(("path", "value", "check"), [
    ("listen", "[::1]:8080", lambda c: c.listen == Address("::1", 8080)),
    ("listen", "0.0.0.0:0", lambda c: c.listen == Address("0.0.0.0", 0)),
    ("listen", "localhost:65535", lambda c: c.listen == Address("localhost", 65535)),
    ("upstreams.original.endpoints", ["http://h/"],
     lambda c: c.original.endpoints == (Address("h", 80),)),
    ("upstreams.original.endpoints", ["http://[::1]:9001"],
     lambda c: c.original.endpoints == (Address("::1", 9001),)),
    ("upstreams.original.balance", "least_outstanding",
     lambda c: c.original.balance == "least_outstanding"),
    ("upstreams.new.failover", "original", lambda c: c.new.failover == "original"),
    ("upstreams.new.failover", "none", lambda c: c.new.failover is None),
    ("routing.anonymous", "ip", lambda c: c.routing.anonymous == "ip"),
    ("routing.user_key", ["query:uid"],
     lambda c: c.routing.user_key == (KeySource("query", "uid"),)),
    ("routing.group_key", ["header:X-Groups"],
     lambda c: c.routing.group_key == (KeySource("header", "X-Groups"),)),
    ("routing.force", {"enabled": True, "header": "X-Canary"},
     lambda c: c.routing.force_enabled and c.routing.force_header == "X-Canary"),
    ("routing.deny", {"users": ["u1", 42]},
     lambda c: c.routing.deny == Cohort(users=frozenset({"u1", "42"}))),
    ("routing.cookie_max_age", "1h", lambda c: c.routing.cookie_max_age == 3600),
    ("timeouts", {"connect": "250ms", "total": 0, "idle": "2m"},
     lambda c: c.timeouts == Timeouts(connect=0.25, total=0.0, idle=120.0)),
    ("limits", {"max_header_bytes": "16KiB", "max_body_bytes": "10MB"},
     lambda c: (c.limits.max_header_bytes, c.limits.max_body_bytes) == (16384, 10_000_000)),
    ("health", {"consecutive_failures": 3, "ejection_time": "10s", "max_ejected_percent": 100},
     lambda c: c.health == Health(3, 10.0, 100)),
    ("connect_retries", 0, lambda c: c.connect_retries == 0),
    ("admin.token_file", "/run/token", lambda c: c.admin.token_file == "/run/token"),
    ("rollout", {"preset": "canary"},
     lambda c: [p.weight_bp for p in c.rollout.phases] == [100, 500, 1000, 2500, 5000, 10000]),
    ("recording", {"enabled": False, "window": 30},
     lambda c: (c.recording.enabled, c.recording.window) == (False, 30)),
    ("routing", None, lambda c: c.routing == Routing()),
])
def test_valid_values(path: str, value: object, check: Callable[[Config], object]) -> None:
    assert check(from_dict(with_(path, value), SOURCE))


# ---------------------------------------------------------------------------
# Errors: (case id, data, key path, bad value, words of the expected form)
# ---------------------------------------------------------------------------

ENDPOINT_FORM = "http://127.0.0.1:9001"
ERRORS: list[tuple[str, dict[str, Any], str, object, str]] = [
    ("missing original", with_("upstreams.original", DELETE),
     "upstreams.original", None, "pool with endpoints"),
    ("missing new", with_("upstreams.new", DELETE), "upstreams.new", None, "pool with endpoints"),
    ("missing upstreams", with_("upstreams", DELETE), "upstreams.original", None, "required"),
    ("missing endpoints", with_("upstreams.new", {"balance": "round_robin"}),
     "upstreams.new.endpoints", None, "required"),
    ("empty endpoints", with_("upstreams.original.endpoints", []),
     "upstreams.original.endpoints", [], "non-empty list"),
    ("endpoints not a list", with_("upstreams.new.endpoints", "http://127.0.0.1:9002"),
     "upstreams.new.endpoints", "http://127.0.0.1:9002", ENDPOINT_FORM),
    ("ftp endpoint", with_("upstreams.new.endpoints", ["ftp://127.0.0.1:9002"]),
     "upstreams.new.endpoints[0]", 'ftp://127.0.0.1:9002', ENDPOINT_FORM),
    ("endpoint with a query", with_("upstreams.new.endpoints", ["https://127.0.0.1:9002?a"]),
     "upstreams.new.endpoints[0]", 'https://127.0.0.1:9002?a', ENDPOINT_FORM),
    ("endpoint without host", with_("upstreams.new.endpoints", ["http://:9002"]),
     "upstreams.new.endpoints[0]", 'http://:9002', ENDPOINT_FORM),
    ("endpoint bare scheme", with_("upstreams.original.endpoints", ["http://a:1", "http://"]),
     "upstreams.original.endpoints[1]", 'http://', ENDPOINT_FORM),
    ("endpoint with path", with_("upstreams.new.endpoints", ["http://127.0.0.1:9002/api"]),
     "upstreams.new.endpoints[0]", 'http://127.0.0.1:9002/api', ENDPOINT_FORM),
    ("endpoint no scheme", with_("upstreams.new.endpoints", ["127.0.0.1:9002"]),
     "upstreams.new.endpoints[0]", '127.0.0.1:9002', ENDPOINT_FORM),
    ("endpoint bad port", with_("upstreams.new.endpoints", ["http://127.0.0.1:99999"]),
     "upstreams.new.endpoints[0]", 'http://127.0.0.1:99999', ENDPOINT_FORM),
    ("endpoint port 0", with_("upstreams.new.endpoints", ["http://127.0.0.1:0"]),
     "upstreams.new.endpoints[0]", 'http://127.0.0.1:0', ENDPOINT_FORM),
    ("endpoint not a string", with_("upstreams.new.endpoints", [9002]),
     "upstreams.new.endpoints[0]", 9002, ENDPOINT_FORM),
    ("listen no port", with_("listen", "127.0.0.1"), "listen", "127.0.0.1", "host:port"),
    ("listen port only", with_("listen", ":8080"), "listen", ":8080", "host:port"),
    ("listen bad port", with_("listen", "127.0.0.1:http"), "listen", "127.0.0.1:http",
     "host:port"),
    ("listen port too big", with_("listen", "127.0.0.1:65536"), "listen", "127.0.0.1:65536",
     "host:port"),
    ("listen unbracketed ipv6", with_("listen", "::1"), "listen", "::1", "host:port"),
    ("listen a number", with_("listen", 8080), "listen", 8080, "host:port"),
    ("admin listen", with_("admin.listen", "nowhere"), "admin.listen", "nowhere", "host:port"),
    ("weight 101", with_("weights.new", 101), "weights.new", 101, "percent 0..100"),
    ("weight three decimals", with_("weights.new", 12.345), "weights.new", 12.345,
     "at most two decimals"),
    ("weight three decimals str", with_("weights.new", "0.001"), "weights.new", "0.001",
     "at most two decimals"),
    ("weight abc", with_("weights.new", "abc"), "weights.new", "abc", "percent 0..100"),
    ("weight negative", with_("weights.new", -1), "weights.new", -1, "percent 0..100"),
    ("weight bool", with_("weights.new", True), "weights.new", True, "percent 0..100"),
    ("weight null", with_("weights.new", None), "weights.new", None, "percent 0..100"),
    ("weight list", with_("weights.new", [10]), "weights.new", [10], "percent 0..100"),
    ("weight sNaN", with_("weights.new", "sNaN"), "weights.new", "sNaN", "percent 0..100"),
    ("weight overflow", with_("weights.new", "1e999999"), "weights.new", "1e999999",
     "percent 0..100"),
    ("weights do not add up", with_("weights", {"new": 10, "original": 80}),
     "weights.original", 80, "100 - new = 90"),
    ("weights do not add up 2", with_("weights", {"new": "12.5", "original": 88}),
     "weights.original", 88, "100 - new = 87.5"),
    ("weights original junk", with_("weights", {"new": 10, "original": "x"}),
     "weights.original", "x", "percent 0..100"),
    ("weights not a mapping", with_("weights", 10), "weights", 10, "a mapping"),
    ("typo top level", with_("wieghts", {"new": 10}), "wieghts", {"new": 10}, "no such key"),
    ("typo nested routing", with_("routing.sallt", "x"), "routing.sallt", "x", "no such key"),
    ("typo nested pool", with_("upstreams.original.balanse", "round_robin"),
     "upstreams.original.balanse", "round_robin", "no such key"),
    ("unknown pool", with_("upstreams.canary", {"endpoints": ["http://a:1"]}),
     "upstreams.canary", {"endpoints": ["http://a:1"]}, "no such key"),
    ("typo timeouts", with_("timeouts.conect", "1s"), "timeouts.conect", "1s", "no such key"),
    ("typo force", with_("routing.force.enable", True), "routing.force.enable", True,
     "no such key"),
    ("typo admin", with_("admin.lisen", "127.0.0.1:1"), "admin.lisen", "127.0.0.1:1",
     "no such key"),
    ("typo allow", with_("routing.allow.user", ["a"]), "routing.allow.user", ["a"],
     "no such key"),
    ("bad balance", with_("upstreams.original.balance", "random"),
     "upstreams.original.balance", "random", "round_robin or least_outstanding"),
    ("bad failover", with_("upstreams.new.failover", "new"), "upstreams.new.failover", "new",
     "none or original"),
    ("original cannot fail over", with_("upstreams.original.failover", "original"),
     "upstreams.original.failover", "original", "none"),
    ("duration parsecs", with_("timeouts.connect", "5 parsecs"), "timeouts.connect",
     "5 parsecs", "a duration"),
    ("duration negative", with_("timeouts.idle", -1), "timeouts.idle", -1, "a duration"),
    ("duration negative str", with_("timeouts.total", "-5s"), "timeouts.total", "-5s",
     "a duration"),
    ("duration negative ejection", with_("health.ejection_time", -0.5),
     "health.ejection_time", -0.5, "a duration"),
    ("duration inf", with_("timeouts.first_byte", math.inf), "timeouts.first_byte", math.inf,
     "a duration"),
    ("cookie max age negative", with_("routing.cookie_max_age", "-1h"),
     "routing.cookie_max_age", "-1h", "a duration"),
    ("cookie max age inf", with_("routing.cookie_max_age", math.inf),
     "routing.cookie_max_age", math.inf, "a duration"),
    ("bad anonymous", with_("routing.anonymous", "nobody"), "routing.anonymous", "nobody",
     "cookie or ip"),
    ("bad user_key source", with_("routing.user_key", ["body:x"]), "routing.user_key",
     ["body:x"], "header:X-User-Id"),
    ("user_key no name", with_("routing.user_key", ["header:"]), "routing.user_key",
     ["header:"], "header:X-User-Id"),
    ("user_key not a list", with_("routing.user_key", "header:X-User-Id"), "routing.user_key",
     "header:X-User-Id", "a list of sources"),
    ("bad group_key", with_("routing.group_key", ["x-groups"]), "routing.group_key",
     ["x-groups"], "a list of sources"),
    ("empty salt", with_("routing.salt", ""), "routing.salt", "", "non-empty string"),
    ("force enabled not bool", with_("routing.force", {"enabled": "yes"}),
     "routing.force.enabled", "yes", "true or false"),
    ("allow users not list", with_("routing.allow", {"users": "u1"}), "routing.allow.users",
     "u1", "a list of user ids"),
    ("routing not mapping", with_("routing", "x"), "routing", "x", "a mapping"),
    ("pool not mapping", with_("upstreams.new", ["http://a:1"]), "upstreams.new",
     ["http://a:1"], "a mapping"),
    ("health percent", with_("health.max_ejected_percent", 101),
     "health.max_ejected_percent", 101, "an integer 0..100"),
    ("health failures zero", with_("health.consecutive_failures", 0),
     "health.consecutive_failures", 0, "an integer 1..1000000"),
    ("limits bad size", with_("limits.max_body_bytes", "lots"), "limits.max_body_bytes",
     "lots", "a size"),
    ("limits header too small", with_("limits.max_header_bytes", 100),
     "limits.max_header_bytes", 100, "at least 1024"),
    ("retries", with_("connect_retries", 11), "connect_retries", 11, "an integer 0..10"),
    ("retries bool", with_("connect_retries", True), "connect_retries", True,
     "an integer 0..10"),
    ("workers zero", with_("workers", 0), "workers", 0, "1..256, or auto"),
    ("workers word", with_("workers", "many"), "workers", "many", "1..256, or auto"),
    ("cluster no redis", with_("cluster", {"name": "c"}), "cluster.redis", None,
     "a Redis URL"),
    ("cluster bad url", with_("cluster", {"redis": "http://x:1", "name": "c"}),
     "cluster.redis", "http://x:1", "a Redis URL"),
    ("cluster no name", with_("cluster", {"redis": "redis://127.0.0.1:6379/0"}),
     "cluster.name", None, "a name"),
    ("cluster bad name", with_("cluster", {"redis": "redis://h:1", "name": "a b"}),
     "cluster.name", "a b", "a name"),
    ("cluster lease", with_("cluster", {"redis": "redis://h:1", "name": "c", "lease": "0.1s"}),
     "cluster.lease", "0.1s", "0.5s..60s"),
    ("cluster unreachable", with_("cluster", {"redis": "redis://h:1", "name": "c",
                                              "on_unreachable": "guess"}),
     "cluster.on_unreachable", "guess", "safe or refuse"),
    ("cluster and a state file", {**with_("cluster", {"redis": "redis://h:1", "name": "c"}),
                                  "state": {"path": "s.json"}},
     "state.path", "s.json", "no state file with cluster"),
    ("cluster unknown key", with_("cluster", {"redis": "redis://h:1", "name": "c", "x": 1}),
     "cluster.x", 1, "known: id, lease, name, on_unreachable, redis"),
]


def test_workers_and_cluster() -> None:
    import os

    from proxy.config.model import Cluster
    assert from_dict(sample(), SOURCE).workers == 1
    assert from_dict(sample(), SOURCE).cluster is None
    assert from_dict(with_("workers", 3), SOURCE).workers == 3
    assert from_dict(with_("workers", "auto"), SOURCE).workers == len(os.sched_getaffinity(0))
    cfg = from_dict(with_("cluster", {"redis": "redis://127.0.0.1:6379/0", "name": "checkout",
                                      "lease": "3s"}), SOURCE)
    assert cfg.cluster == Cluster("redis://127.0.0.1:6379/0", "checkout", lease=3.0)


@pytest.mark.parametrize(("data", "path", "value", "expected"),
                         [pytest.param(*case[1:], id=case[0]) for case in ERRORS])
def test_config_errors(data: dict[str, Any], path: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data, SOURCE)
    err = info.value
    assert err.file == SOURCE
    assert err.path == path
    assert err.value == value
    assert expected in err.expected
    message = str(err)
    assert message.startswith(f"{SOURCE}: {path}: ")
    assert repr(value) in message
    assert err.expected in message


def test_unknown_key_lists_known_keys() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(with_("wieghts", {"new": 10}), SOURCE)
    assert "weights" in info.value.expected
    assert "upstreams" in info.value.expected


def test_bad_endpoint_names_the_url() -> None:
    data = with_("upstreams.new.endpoints", ["http://127.0.0.1:9002", "https://u@10.0.0.1:9"])
    with pytest.raises(ConfigError) as info:
        from_dict(data, SOURCE)
    assert "https://u@10.0.0.1:9" in str(info.value)


@pytest.mark.parametrize("data", [None, [], ["a"], "listen: x", 42])
def test_top_level_not_a_mapping(data: object) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data, SOURCE)
    err = info.value
    assert (err.file, err.path, err.value) == (SOURCE, "", data)
    assert "mapping" in err.expected
    assert str(err).startswith(f"{SOURCE}: got ")


# --- load(): files ------------------------------------------------------------

def test_load_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken-veer.yaml"
    path.write_text("listen: 127.0.0.1:8080\nupstreams: [\n  original: {\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.file == str(path)
    assert "broken-veer.yaml" in str(err)
    assert "valid YAML" in err.expected
    assert isinstance(err.value, str) and err.value.startswith("line ")


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.file == str(path)
    assert "nope.yaml" in str(err)
    assert "readable file" in err.expected


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert "readable file" in info.value.expected


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"listen: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.expected == "UTF-8 text"


@pytest.mark.parametrize(("text", "value"), [
    ("- a\n- b\n", ["a", "b"]),
    ("just a string\n", "just a string"),
    ("", None),
])
def test_load_top_level_not_a_mapping(tmp_path: Path, text: str, value: object) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert (err.file, err.path, err.value) == (str(path), "", value)
    assert "mapping" in err.expected


def test_load_error_names_nested_path(tmp_path: Path) -> None:
    path = tmp_path / "veer.yaml"
    path.write_text(SAMPLE_YAML.replace("weights: {new: 10}", "weights: {new: 101}"),
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: weights.new: got 101, expected ")


# --- helpers --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:8080", Address("127.0.0.1", 8080)),
    ("[::1]:9901", Address("::1", 9901)),
    ("example.com:1", Address("example.com", 1)),
])
def test_parse_listen(text: str, address: Address) -> None:
    assert parse_listen(text) == address


def test_address_str() -> None:
    assert str(Address("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(parse_listen(str(Address("::1", 80)))) == "[::1]:80"


@pytest.mark.parametrize("text", ["http://a:1/x", "https://a:1#f", "ftp://a", "http://a:0"])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("path", ["timeouts.connect", "routing.cookie_max_age",
                                  "health.ejection_time"])
def test_nan_duration_is_a_config_error(path: str) -> None:
    # NaN is not equal to itself, so it cannot go through the ERRORS table.
    with pytest.raises(ConfigError) as info:
        from_dict(with_(path, math.nan), SOURCE)
    assert info.value.path == path
    assert isinstance(info.value.value, float) and math.isnan(info.value.value)
    assert "a duration" in info.value.expected


def test_weights_original_alone_means_the_rest_is_new() -> None:
    cfg = from_dict({"upstreams": {"original": {"endpoints": ["http://a:1"]},
                                   "new": {"endpoints": ["http://b:2"]}},
                     "weights": {"original": 90}})
    assert cfg.new_weight_bp == 1000


def test_the_seed_plan_with_its_memory_and_cache_gates_loads() -> None:
    cfg = load(Path(__file__).resolve().parents[2] / "admin" / "examples" / "seed-plan.yaml")
    assert cfg.rollout is not None
    phases = cfg.rollout.phases
    assert [(p.name, p.weight_bp, p.duration) for p in phases] == [
        ("canary", 100, 7200.0), ("ramp", 1000, 14400.0), ("full", 10000, 0.0)]
    limits = [{g.name: (g.max, g.min, g.source) for g in p.gates.metrics} for p in phases]
    assert limits == [
        {"memory_bytes": (1e9, None, "prometheus"), "cache_hit_rate": (None, 0.6, "prometheus")},
        {"memory_bytes": (1.5e9, None, "prometheus"), "cache_hit_rate": (None, 0.7, "prometheus")},
        {"memory_bytes": (2e9, None, "prometheus"), "cache_hit_rate": (None, 0.85, "prometheus")}]
    q = phases[0].gates.metrics[0].prometheus
    assert q is not None and "{{variant}}" in q.query and q.interval == 10.0
    json.dumps(to_config_data(cfg))  # veer check can print it


METRIC_GATE_ERRORS = [
    ({"name": "m"}, "rollout.plan[0].gates.metrics[0].max",
     "at least one of max, min, max_increase, max_decrease"),
    ({"name": "m", "max": "lots"}, "rollout.plan[0].gates.metrics[0].max", "a number"),
    ({"name": "m", "max": 1, "source": "carrier-pigeon"},
     "rollout.plan[0].gates.metrics[0].source", "header or traffic"),
    ({"name": "m", "max": 1, "source": {"prometheus": {"query": "up"}}},
     "rollout.plan[0].gates.metrics[0].source.prometheus.address", "a URL"),
    ({"name": "m", "max": 1, "source": {"prometheus": {"query": "up", "address": "x"}}},
     "rollout.plan[0].gates.metrics[0].source.prometheus.address", "a URL"),
    ({"name": "m", "max": 1, "typo": 2}, "rollout.plan[0].gates.metrics[0].typo", "no such key"),
]


@pytest.mark.parametrize(("gate", "path", "expected"), METRIC_GATE_ERRORS)
def test_metric_gate_errors_name_the_key(gate: dict[str, Any], path: str, expected: str
                                         ) -> None:
    data = {"upstreams": {"original": {"endpoints": ["http://a:1"]},
                          "new": {"endpoints": ["http://b:2"]}},
            "rollout": {"plan": [{"weight": 100, "gates": {"metrics": [gate]}}]}}
    with pytest.raises(ConfigError) as info:
        from_dict(data, SOURCE)
    assert info.value.path == path
    assert expected in info.value.expected


def test_top_level_x_keys_are_the_users_anchors_and_elsewhere_are_typos() -> None:
    base = {"upstreams": {"original": {"endpoints": ["http://a:1"]},
                          "new": {"endpoints": ["http://b:2"]}}}
    from_dict({**base, "x-shared": {"anything": 1}}, SOURCE)
    with pytest.raises(ConfigError) as info:
        from_dict({**base, "routing": {"x-salt": "s"}}, SOURCE)
    assert info.value.path == "routing.x-salt"


def test_mirror_health_access_log_and_tls_sections() -> None:
    cfg = from_dict({**with_("mirror", {"percent": 2.5, "methods": ["GET", "POST"],
                                        "max_body": "1KiB", "queue": 8, "timeout": "2s"}),
                     "health": {"active": {"interval": "1s", "timeout": "500ms", "healthy": 2,
                                           "unhealthy": 2, "expect": "200-299"}},
                     "access_log": {"path": "-", "format": "combined"},
                     "tls": {"cert": "c.pem", "key": "k.pem", "min_version": "1.3"}}, SOURCE)
    assert cfg.mirror.percent_bp == 250 and cfg.mirror.methods == {"GET", "POST"}
    assert (cfg.mirror.max_body, cfg.mirror.queue, cfg.mirror.timeout) == (1024, 8, 2.0)
    active = cfg.health.active
    assert active is not None and (active.interval, active.timeout, active.expect) == (
        1.0, 0.5, (200, 299))
    assert cfg.access_log is not None and cfg.access_log.format == "combined"
    assert cfg.tls is not None and cfg.tls.min_version == "1.3"
    defaults = from_dict(with_("health", {"active": {}}), SOURCE).health.active
    assert defaults is not None and (defaults.interval, defaults.healthy, defaults.unhealthy) \
        == (2.0, 2, 3)  # HAProxy's inter 2s, rise 2, fall 3


@pytest.mark.parametrize(("section", "value", "key"), [
    ("mirror", {"percent": 101}, "mirror.percent"),
    ("mirror", {"methods": ["get"]}, "mirror.methods"),
    ("mirror", {"queue": 0}, "mirror.queue"),
    ("health", {"active": {"path": "healthz"}}, "health.active.path"),
    ("health", {"active": {"interval": "1s", "timeout": "2s"}}, "health.active.timeout"),
    ("health", {"active": {"expect": "300-200"}}, "health.active.expect"),
    ("health", {"active": {"unhealthy": 0}}, "health.active.unhealthy"),
    ("access_log", {"format": "json"}, "access_log.path"),
    ("access_log", {"path": "x", "format": "xml"}, "access_log.format"),
])
def test_data_plane_section_errors_name_the_key(section: str, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(with_(section, value), SOURCE)
    assert info.value.path == key


def test_a_phase_mirrors_as_the_config_unless_it_says() -> None:
    plan = {"plan": [{"name": "shadow", "weight": 0, "mirror": 100},
                     {"name": "canary", "weight": 10}, {"name": "full", "weight": 100}]}
    cfg = from_dict({**with_("rollout", plan), "mirror": {"percent": 5}}, SOURCE)
    assert cfg.rollout is not None
    assert [p.mirror_bp for p in cfg.rollout.phases] == [10000, 500, 500]
    assert [p.shadow for p in cfg.rollout.phases] == [True, False, False]


def test_live_state_carries_the_mirror_share_to_workers() -> None:
    from proxy.routing.live import LiveState

    a, b = LiveState(100), LiveState()
    a.set_mirror(2500)
    b.take(a.to_wire())
    assert (b.new_weight_bp, b.mirror_bp) == (100, 2500)
    with pytest.raises(ValueError, match="mirror"):
        a.set_mirror(10001)
