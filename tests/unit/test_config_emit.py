"""``veer check``'s effective config: written in the config's own keys, read back the same.

Two configs between them set every option away from its default (a guard checks that,
so a new option must be added here and to ``proxy.config.emit``); each must survive
``emit -> YAML -> load`` unchanged. The unit spellings are checked as properties.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import emit
from proxy.config.load import from_dict, parse
from proxy.config.model import Config
from proxy.config.units import parse_duration, parse_percent_bp, parse_rate, parse_size

ROOT = Path(__file__).resolve().parents[2]

COMMON: dict[str, Any] = {
    "listen": "[::1]:8443",
    "admin": {"listen": "0.0.0.0:9902", "token_file": "/run/secrets/veer-token"},
    "upstreams": {
        "original": {"endpoints": ["https://orig.internal:8443", "http://10.0.0.2:80"],
                     "balance": "least_outstanding",
                     "tls": {"ca": "/etc/ca.pem", "cert": "/etc/c.pem", "key": "/etc/k.pem"}},
        "new": {"endpoints": ["https://new.internal"], "failover": "original",
                "tls": {"verify": False}},
    },
    "routing": {"salt": "s1", "user_key": ["cookie:uid", "query:u"],
                "group_key": ["header:X-Group"], "anonymous": "ip", "cookie_name": "vid",
                "cookie_max_age": "1h", "force": {"enabled": True, "header": "X-Force",
                                                  "cookie": "force"},
                "allow": {"users": ["qa1"], "groups": ["staff"]},
                "deny": {"users": ["vip"], "groups": ["bank"]}},
    "timeouts": {"connect": "1500ms", "first_byte": "20s", "idle": "2m", "total": "1h",
                 "client_header": "5s", "client_idle": "90s", "upstream_keepalive": "15s",
                 "drain": "45s", "body_grace": "0.25", "client_write": "7s"},
    "limits": {"max_header_bytes": "32KiB", "max_headers": 50, "max_body_bytes": 1000000,
               "max_concurrent_upstream": 99, "max_idle_per_endpoint": 3, "max_pipelined": 4,
               "max_concurrent_per_client": 0, "min_body_rate": "1KiB"},
    "health": {"consecutive_failures": 2, "ejection_time": "5s", "max_ejected_percent": 30,
               "active": {"path": "/ready", "interval": "500ms", "timeout": "100ms",
                          "healthy": 1, "unhealthy": 4, "expect": 204, "host": "app.local"}},
    "connect_retries": 3,
    "recording": {"enabled": True, "window": 120},
    "upgrades": ["websocket", "tcp"],
    "workers": 3,
    "access_log": {"path": "/var/log/veer.log", "format": "combined"},
    "tls": {"cert": "/etc/veer/cert.pem", "key": "/etc/veer/key.pem", "min_version": "1.3"},
    "mirror": {"percent": 2.5, "methods": ["GET", "POST"], "max_body": "1MiB", "queue": 9,
               "timeout": "250ms"},
}
PROM = {"prometheus": {"query": 'rate(x{variant="{{variant}}"}[1m])',
                       "address": "http://127.0.0.1:9090", "interval": "15s",
                       "timeout": "3s"}}
ROLLOUT_CONFIG: dict[str, Any] = {
    **COMMON,
    "weights": {"new": 12.34},
    "rollout": {
        "name": "checkout-v2", "tick": "100ms",
        "rollback_stages": ["80%", "0.4", 0], "rollback_interval": "3s",
        "confirm": [{"url": "http://127.0.0.1:1/ok", "timeout": "2s", "retries": 1,
                     "events": ["advance"]}],
        "confirm_retry": "30s", "notify": ["http://127.0.0.1:1/n"],
        "plan": [
            {"name": "shadow", "weight": 0, "mirror": 100, "duration": "10m",
             "gates": {"max_status_mismatch": "0.5%", "min_requests": 50}},
            {"name": "testers", "weight": 0, "allow_users": ["t1"], "allow_groups": ["qa"],
             "approval": True, "mirror": 0},
            {"name": "canary", "weight": 1, "duration": "2h", "on_breach": "alert",
             "gates": {"max_error_rate": "0.1%", "max_p99": "200ms", "max_p999": "1s",
                       "max_error_rate_increase": "0.2%", "max_latency_increase": "10%",
                       "metrics": [
                           {"name": "accuracy", "type": "proportion", "min": 0.6,
                            "max": 0.99, "min_samples": 50},
                           {"name": "latency_ms", "source": "traffic",
                            "max_increase": "5%", "max_decrease": "50%"},
                           {"name": "cpu", "source": PROM, "max": 1e9}]}},
            {"name": "full", "weight": 100},
        ],
    },
    "state": {"path": "./veer-state.json", "on_corrupt": "refuse", "max_events": 50},
}
EXPERIMENT_CONFIG: dict[str, Any] = {
    **COMMON,
    "recording": {"enabled": False, "window": 120},  # refused with a rollout
    "cluster": {"redis": "redis://10.0.0.9:6379/2", "name": "shop", "id": "veer-0",
                "lease": "5s", "on_unreachable": "refuse"},
    "experiment": {"name": "checkout-button", "split": 33.3, "alpha": "1%", "power": 0.9,
                   "max_users": 5000, "min_users": 20,
                   "metrics": [{"name": "conversion", "type": "proportion",
                                "source": "events", "mde": "5%"},
                               {"name": "latency_ms", "source": "traffic", "goal": "decrease",
                                "role": "guardrail", "margin": "2%"}]},
}


def round_trip(cfg: Config) -> tuple[Config, str]:
    text = yaml.safe_dump(emit.to_config_data(cfg), sort_keys=False)
    return parse(text, cfg.source), text


def same(a: Config, b: Config) -> bool:
    return dataclasses.replace(a, text="") == dataclasses.replace(b, text="")


def test_every_option_survives_emit_and_load() -> None:
    for data in (ROLLOUT_CONFIG, EXPERIMENT_CONFIG):
        cfg = from_dict(data, "rich.yaml")
        back, text = round_trip(cfg)
        assert same(back, cfg), text
        _, text2 = round_trip(back)
        assert text2 == text  # a fixed point: check of a check prints the same


def _default_of(value: Any) -> Any:
    """``value``'s dataclass with its required fields kept and every other one defaulted."""
    required = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    return type(value)(**required)


def _walk(value: Any, default: Any, key: str, seen: set[str], changed: set[str]) -> None:
    """Every option, as ``Type.field``, into ``seen``; those set away from their default
    into ``changed``. Optional sections and list items are compared with their type's
    defaults, so the options of a phase, a metric or a hook are guarded too."""
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        seen.add(key)
        if value != default:
            changed.add(key)
        for item in value:
            _walk(item, _default_of(item), key, seen, changed)
        return
    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        seen.add(key)
        if value != default:
            changed.add(key)
        return
    seen.add(key)
    if value != default:
        changed.add(key)
    if type(default) is not type(value):
        default = _default_of(value)
    name = type(value).__name__
    for f in dataclasses.fields(value):
        inner = getattr(value, f.name)
        nested = dataclasses.is_dataclass(inner) or (
            isinstance(inner, tuple) and inner and dataclasses.is_dataclass(inner[0]))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
                and not nested:
            continue  # required: always written, nothing to default
        _walk(getattr(value, f.name), getattr(default, f.name), f"{name}.{f.name}", seen,
              changed)


def test_the_two_configs_set_every_option_away_from_its_default() -> None:
    """Guard: an option added to the model but not to these configs (and so perhaps not to
    the emitter) fails here."""
    minimal = from_dict({"upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                                       "new": {"endpoints": ["http://127.0.0.1:2"]}}}, "m")
    seen: set[str] = set()
    changed: set[str] = set()
    for data in (ROLLOUT_CONFIG, EXPERIMENT_CONFIG):
        _walk(from_dict(data, "m"), minimal, "Config", seen, changed)
    # Not options: the YAML text, a listener's scheme (it is tls: or not), and a Prometheus
    # source in an experiment (refused: Prometheus reports per variant, not per user).
    not_options = {"Config.text", "Address.scheme", "Metric.prometheus"}
    untouched = seen - changed - not_options
    assert not untouched, f"options no test config sets: {sorted(untouched)}"
    assert {"Phase.allow_groups", "Gates.max_p999", "MetricGate.max_decrease",
            "Hook.events", "Metric.mde", "ActiveHealth.host"} <= seen  # it reached inside


def test_the_shipped_examples_survive_too() -> None:
    cfg = parse((ROOT / "admin/examples/seed-plan.yaml").read_text(), "seed-plan.yaml")
    back, _ = round_trip(cfg)
    assert same(back, cfg)


def test_internal_names_are_not_printed() -> None:
    text = yaml.safe_dump(emit.to_config_data(from_dict(ROLLOUT_CONFIG, "r")))
    for internal in ("new_weight_bp", "weight_bp", "percent_bp", "mirror_bp", "duration_s",
                     "force_enabled", "split_bp"):
        assert internal not in text
    assert "max_error_rate: 0.1%" in text and "max_p99: 200ms" in text
    assert "max_header_bytes: 32KiB" in text and "connect: 1500ms" in text


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_a_duration_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(emit.duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**40))
def test_a_size_reads_back_exactly(count: int) -> None:
    assert parse_size(emit.size(count)) == count


@given(st.floats(min_value=0, max_value=1, allow_nan=False))
def test_a_rate_reads_back_exactly(fraction: float) -> None:
    assert parse_rate(emit.rate(fraction)) == fraction


@given(st.integers(min_value=0, max_value=10000))
def test_a_percent_reads_back_exactly(bp: int) -> None:
    assert parse_percent_bp(emit.percent(bp)) == bp
