"""Metrics from anywhere, and experiments on them: the ``experiment:`` section and metric gates.

A metric has a source: a backend response header (``veer-metric: name=value``),
the events API, veer's own traffic (``error_rate``, ``latency_ms``), or a
Prometheus query polled on an interval. An experiment fixes the split and
names the metrics it judges; a rollout phase may gate on any metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.config.reader import DUR, Reader, choice, int_range, reject, text
from proxy.config.units import parse_percent_bp, parse_rate, positive_duration

METRIC_TYPES = ("mean", "proportion")
GOALS = ("increase", "decrease")
ROLES = ("primary", "guardrail")
SOURCES = ("header", "events", "traffic")
TRAFFIC_METRICS = ("error_rate", "latency_ms")  # per user: share of 5xx, mean latency
VARIANT_PLACEHOLDER = "{{variant}}"  # in a Prometheus query: original or new
NAME_FORM = "a metric name of letters, digits and _ (e.g. accuracy)"


@dataclass(frozen=True, slots=True)
class PromQuery:
    """A Prometheus instant query polled every ``interval`` seconds, once per variant."""

    query: str  # with {{variant}} where the variant's label value goes
    address: str  # http://host:port of the Prometheus server
    interval: float = 10.0
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric an experiment judges."""

    name: str
    type: str = "mean"
    source: str = "header"  # or events, traffic, prometheus
    prometheus: PromQuery | None = None
    goal: str = "increase"  # which way is better
    role: str = "primary"  # primary: decides ship; guardrail: must not get worse
    margin: float = 0.0  # guardrail: relative worsening tolerated (non-inferiority)
    mde: float | None = None  # relative minimum detectable effect, for the sample size


@dataclass(frozen=True, slots=True)
class MetricGate:
    """A rollout gate on any metric: absolute bounds on new, or relative to original."""

    name: str
    source: str = "header"
    prometheus: PromQuery | None = None
    type: str = "mean"
    max: float | None = None  # new's mean must stay under
    min: float | None = None  # new's mean must stay over
    max_increase: float | None = None  # relative to original's mean, e.g. 0.05
    max_decrease: float | None = None
    min_samples: int = 30  # users (Prometheus: polls) before a pass may be claimed


@dataclass(frozen=True, slots=True)
class Experiment:
    """An A/B experiment: a fixed split and the metrics judged on it."""

    name: str
    split_bp: int  # basis points of users on new, fixed for the experiment
    metrics: tuple[Metric, ...]
    alpha: float = 0.05
    power: float = 0.8
    max_users: int = 1_000_000  # per variant and metric; beyond, users are counted, not kept
    min_users: int = 100  # per variant and metric before a metric may be called better/worse


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or not all(
            c.isalnum() or c == "_" for c in value):
        raise ValueError
    return value


def _experiment_name(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 100 or not all(
            c.isalnum() or c in "-_." for c in value):
        raise ValueError
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or \
            not urlsplit(value).hostname:
        raise ValueError
    return value.rstrip("/")


def _read_prometheus(r: Reader) -> PromQuery:
    q = PromQuery(
        query=r.require("query", text, "a PromQL query, with {{variant}} for the variant"),
        address=r.require("address", _address, "a URL such as http://127.0.0.1:9090"),
        interval=r.field(PromQuery, "interval", positive_duration, DUR[1]),
        timeout=r.field(PromQuery, "timeout", positive_duration, DUR[1]),
    )
    r.done()
    return q


def read_source(r: Reader, name: str, allowed: tuple[str, ...] = SOURCES
                ) -> tuple[str, PromQuery | None]:
    """``source:`` as a word, or ``{prometheus: {query, address, interval}}``."""
    raw = r.data.get("source", "header")
    r.used.add("source")
    if isinstance(raw, dict):
        s = Reader(r.file, raw, f"{r.path}.source")
        if not s.has("prometheus"):
            raise r.fail("source", raw, "header, events, traffic or {prometheus: {...}}")
        prom = _read_prometheus(s.section("prometheus"))
        s.done()
        return "prometheus", prom
    if raw not in allowed:
        why = "" if raw != "events" else (" (events reach veer through an experiment, and "
                                          "an experiment holds its split: no rollout)")
        raise r.fail("source", raw, " or ".join(allowed) + " or {prometheus: {query, address}}"
                     + why)
    if raw == "traffic" and name not in TRAFFIC_METRICS:
        raise r.fail("name", name, "error_rate or latency_ms (with source: traffic)")
    return str(raw), None


def _read_metric(r: Reader) -> Metric:
    name = r.require("name", _name, NAME_FORM)
    source, prom = read_source(r, name)
    metric = Metric(
        name=name,
        type=r.field(Metric, "type", choice(METRIC_TYPES), " or ".join(METRIC_TYPES)),
        source=source, prometheus=prom,
        goal=r.field(Metric, "goal", choice(GOALS), " or ".join(GOALS)),
        role=r.field(Metric, "role", choice(ROLES), " or ".join(ROLES)),
        margin=r.field(Metric, "margin", parse_rate, "a relative margin such as 1% or 0.01"),
        mde=r.field(Metric, "mde", _relative, "a relative effect such as 5% or 0.05"),
    )
    r.done()
    if metric.source == "prometheus":
        raise r.fail("source", "prometheus", "header, events or traffic in an experiment "
                     "(Prometheus reports per variant, not per user: use it in rollout gates)")
    return metric


def _relative(value: Any) -> float:
    rate = parse_rate(value)
    if rate <= 0:
        raise ValueError
    return rate


def read_experiment(r: Reader) -> Experiment:
    """The ``experiment:`` section."""
    name = r.require("name", _experiment_name, "a name of letters, digits, - _ .")
    split = r.require("split", parse_percent_bp, "a percent of users on new, e.g. 50")
    if not 0 < split < 10000:
        raise r.fail("split", r.data["split"], "a percent strictly between 0 and 100")
    raw = r.require("metrics", lambda v: v if isinstance(v, list) and v else reject(),
                    "a non-empty list of metrics")
    metrics = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise r.fail(f"metrics[{i}]", item, "a mapping with name, type, source, goal")
        metrics.append(_read_metric(Reader(r.file, item, f"{r.path}.metrics[{i}]")))
    seen = [m.name for m in metrics]
    for i, m in enumerate(metrics):
        if m.name in seen[:i]:
            raise r.fail(f"metrics[{i}].name", m.name, "a name not used by another metric")
    experiment = Experiment(
        name=name, split_bp=split, metrics=tuple(metrics),
        alpha=r.field(Experiment, "alpha", _alpha, "a rate such as 5% or 0.05 (under 50%)"),
        power=r.field(Experiment, "power", _power, "a rate such as 80% or 0.8"),
        max_users=r.field(Experiment, "max_users", int_range(1000, 100_000_000),
                          "an integer 1000..100000000"),
        min_users=r.field(Experiment, "min_users", int_range(5, 10_000_000),
                          "an integer 5..10000000"),
    )
    r.done()
    if not any(m.role == "primary" for m in metrics):
        raise r.fail("metrics", [m.name for m in metrics], "at least one primary metric")
    return experiment


def _alpha(value: Any) -> float:
    rate = parse_rate(value)
    if not 0 < rate < 0.5:
        raise ValueError
    return rate


def _power(value: Any) -> float:
    rate = parse_rate(value)
    if not 0.5 <= rate < 1:
        raise ValueError
    return rate


def read_metric_gates(r: Reader, raw: Any) -> tuple[MetricGate, ...]:
    """``gates.metrics``: a list of ``{name, source, max | min | max_increase | ...}``."""
    if not isinstance(raw, list):
        raise r.fail("metrics", raw, "a list of metric gates")
    gates = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise r.fail(f"metrics[{i}]", item, "a mapping with name and max, min or "
                         "max_increase")
        g = Reader(r.file, item, f"{r.path}.metrics[{i}]")
        name = g.require("name", _name, NAME_FORM)
        source, prom = read_source(g, name, ("header", "traffic"))
        gate = MetricGate(
            name=name, source=source, prometheus=prom,
            type=g.field(MetricGate, "type", choice(METRIC_TYPES), " or ".join(METRIC_TYPES)),
            max=g.field(MetricGate, "max", _number, "a number, e.g. 1e9"),
            min=g.field(MetricGate, "min", _number, "a number, e.g. 0.6"),
            max_increase=g.field(MetricGate, "max_increase", parse_rate,
                                 "a relative increase such as 5% or 0.05"),
            max_decrease=g.field(MetricGate, "max_decrease", parse_rate,
                                 "a relative decrease such as 5% or 0.05"),
            min_samples=g.field(MetricGate, "min_samples", int_range(2, 10**9),
                                "an integer 2..1000000000"),
        )
        g.done()
        if all(v is None for v in (gate.max, gate.min, gate.max_increase, gate.max_decrease)):
            raise g.fail("max", None, "at least one of max, min, max_increase, max_decrease")
        gates.append(gate)
    return tuple(gates)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        value = float(value)  # YAML reads 1e9 (no dot) as a string
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError
    return float(value)


def check_gate_names(r: Reader, gates: list[tuple[str, MetricGate]]) -> None:
    """One metric name means one metric in every phase: the same source and query (two
    sources would write into one table; two queries would poll only the last)."""
    seen: dict[str, tuple[str, MetricGate]] = {}
    for where, g in gates:
        first = seen.setdefault(g.name, (where, g))
        if (first[1].source, first[1].prometheus, first[1].type) != (g.source, g.prometheus,
                                                                      g.type):
            raise r.fail(where, g.name, f"the same source, type and query as {first[0]} "
                         "(one name, one metric; give a different metric another name)")
