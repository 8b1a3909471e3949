"""Prometheus exposition, rendered at scrape time from the recorder.

A custom collector on veer's own ``CollectorRegistry`` reads the runtime's
counters and HDR histograms when scraped, so the data plane never calls
prometheus_client. Histogram buckets are cumulative counts read off the HDR
data (within its 0.1% precision); ``_sum`` is the exact sum of latencies.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.control.experiments import results
from proxy.routing.variant import NEW, ORIGINAL, PAIRED, SHADOW, VARIANTS
from proxy.runtime.runtime import Runtime
from proxy.telemetry import latency
from proxy.telemetry.source import Picture
from proxy.wire.errors import COUNTED

# Seconds; Prometheus' defaults stretched down to sub-millisecond, where a proxy lives.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)
WINDOWS = (("10s", 10), ("60s", 60))
QUANTILES = ((0.5, 50.0), (0.9, 90.0), (0.99, 99.0), (0.999, 99.9))


class VeerCollector(Collector):
    """Everything veer exports, computed when Prometheus asks."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        host = rt.host_view  # this host's workers summed; replicas are summed in PromQL

        requests = CounterMetricFamily(
            "veer_requests", "Requests answered, by variant and status code (0 = no response).",
            labels=["variant", "code"])
        errors = CounterMetricFamily(
            "veer_upstream_errors", "Upstream failures and veer-made errors, by kind.",
            labels=["variant", "kind"])
        bytes_in = CounterMetricFamily("veer_request_body_bytes",
                                       "Request body bytes received from clients.",
                                       labels=["variant"])
        bytes_out = CounterMetricFamily("veer_response_body_bytes",
                                        "Response body bytes received from upstreams.",
                                        labels=["variant"])
        in_flight = GaugeMetricFamily("veer_in_flight_requests", "Requests being served now.",
                                      labels=["variant"])
        duration = HistogramMetricFamily(
            "veer_request_duration_seconds",
            "Time from arrival at veer to the end of the response (HDR-derived buckets).",
            labels=["variant"])
        # A summary: per window, exact quantiles from HDR plus the window's count and sum.
        quantiles = Metric("veer_latency_seconds",
                           "Latency quantiles over a recent window, exact to HDR's 0.1%.",
                           "summary")
        for v in VARIANTS:
            counts = host.counters(v)
            for code, n in sorted(counts.codes.items()):
                requests.add_metric([v, str(code)], n)
            for kind in COUNTED:
                errors.add_metric([v, kind], counts.errors.get(kind, 0))
            bytes_in.add_metric([v], counts.bytes_in)
            bytes_out.add_metric([v], counts.bytes_out)
            in_flight.add_metric([v], host.in_flight(v))
            hist = host.cumulative(v)
            below = latency.count_at_or_below_us(hist, [int(b * 1e6) for b in BUCKETS])
            total = hist.get_total_count()
            buckets = [(f"{b:g}", c) for b, c in zip(BUCKETS, below, strict=True)]
            buckets.append(("+Inf", total))
            duration.add_metric([v], buckets, counts.latency_sum_us / 1e6)
            for window, seconds in WINDOWS:
                stats = host.window(v, seconds)
                values = latency.quantiles_us(stats.histogram, tuple(p for _, p in QUANTILES))
                labels = {"variant": v, "window": window}
                for (q, _), value in zip(QUANTILES, values, strict=True):
                    quantiles.add_sample("veer_latency_seconds", {**labels, "quantile": f"{q:g}"},
                                         value / 1e6)
                quantiles.add_sample("veer_latency_seconds_count", labels, stats.requests)
                quantiles.add_sample("veer_latency_seconds_sum", labels, stats.sum or 0.0)
        yield from (requests, errors, bytes_in, bytes_out, in_flight, duration, quantiles)
        yield from _shadow_metrics(rt, host)

        weight = GaugeMetricFamily("veer_weight_ratio", "Share of users routed to each variant.",
                                   labels=["variant"])
        weight.add_metric([NEW], rt.live.new_weight_bp / 10000)
        weight.add_metric([ORIGINAL], 1 - rt.live.new_weight_bp / 10000)
        yield weight

        healthy = GaugeMetricFamily("veer_endpoint_healthy",
                                    "1 if the endpoint is in rotation: not ejected by passive "
                                    "health, not down by active health checks.",
                                    labels=["variant", "endpoint"])
        opened = CounterMetricFamily("veer_upstream_connections_opened",
                                     "New upstream connections (keep-alive reuse shows here).",
                                     labels=["variant", "endpoint"])
        for e in host.endpoints():
            healthy.add_metric([e.variant, e.label], 1.0 if e.healthy else 0.0)
            opened.add_metric([e.variant, e.label], e.connects)
        yield healthy
        yield opened
        if rt.health_checker is not None:
            moves = CounterMetricFamily("veer_endpoint_health_transitions",
                                        "Active health check transitions (to: up or down).",
                                        labels=["variant", "endpoint", "to"])
            for (variant, label, to), n in sorted(rt.health_checker.transitions.items()):
                moves.add_metric([variant, label, to], n)
            yield moves

        if rt.rollout is not None:
            c = rt.rollout.controller
            phase = GaugeMetricFamily("veer_rollout_phase_info",
                                      "The rollout's current phase and status (value 1).",
                                      labels=["rollout", "phase", "status"])
            phase.add_metric([rt.rollout.rollout.name, c.phase.name, str(c.state.status)], 1)
            yield phase
            index = GaugeMetricFamily("veer_rollout_phase_index", "Index of the current phase.",
                                      labels=["rollout"])
            index.add_metric([rt.rollout.rollout.name], c.state.phase)
            yield index
            rollbacks = CounterMetricFamily("veer_rollbacks",
                                            "Rollbacks by reason (breach = the controller's).",
                                            labels=["reason"])
            for reason, n in sorted(rt.rollout.rollbacks.items()):
                rollbacks.add_metric([reason], n)
            yield rollbacks

        if rt.workers is not None:
            alive = GaugeMetricFamily("veer_workers", "Worker processes running now.")
            alive.add_metric([], rt.workers.alive)
            yield alive
            restarts = CounterMetricFamily("veer_worker_restarts",
                                           "Workers started again after one exited.")
            restarts.add_metric([], rt.workers.restarts)
            yield restarts

        yield from _cluster_series(rt)
        yield from _experiment_series(rt)
        if rt.prometheus is not None:
            polls = CounterMetricFamily("veer_metric_polls", "Prometheus polls of gate metrics.",
                                        labels=["metric", "variant"])
            failed = CounterMetricFamily("veer_metric_poll_failures",
                                         "Polls that gave no usable number (no data, errors).",
                                         labels=["metric", "variant"])
            for (name, v), series in sorted(rt.prometheus.series.items()):
                polls.add_metric([name, v], series.polls)
                failed.add_metric([name, v], series.failures)
            yield polls
            yield failed

        cfg = rt.config
        info = InfoMetricFamily("veer_config", "The loaded config.")
        info.add_metric([], {"source": cfg.source, "salt": cfg.routing.salt,
                             "listen": str(cfg.listen)})
        yield info


def _cluster_series(rt: Runtime) -> Iterator[Metric]:
    """This replica's view of its cluster: who leads, whether Redis answers, how many
    replicas it sees (alerts: no leader, two leaders, Redis away)."""
    if rt.cluster is None:
        return
    seen = rt.cluster.describe()
    name, me = str(seen["name"]), str(seen["self"])
    leader = GaugeMetricFamily("veer_cluster_leader",
                               "1 while this replica holds the controller's lease.",
                               labels=["cluster", "replica"])
    leader.add_metric([name, me], 1.0 if seen["leader"] == me else 0.0)
    yield leader
    reachable = GaugeMetricFamily("veer_cluster_redis_reachable",
                                  "1 while this replica's last Redis round trip worked.",
                                  labels=["cluster", "replica"])
    reachable.add_metric([name, me], 1.0 if seen["redis_reachable"] else 0.0)
    yield reachable
    members = GaugeMetricFamily("veer_cluster_members",
                                "Replicas this one saw alive in Redis (itself included).",
                                labels=["cluster", "replica"])
    members.add_metric([name, me], len(seen["members"]))
    yield members
    epoch = GaugeMetricFamily("veer_cluster_lease_epoch",
                              "The newest lease epoch seen (each new leader raises it).",
                              labels=["cluster", "replica"])
    epoch.add_metric([name, me], float(seen["epoch"] or 0))
    yield epoch


def _experiment_series(rt: Runtime) -> Iterator[Metric]:
    """Per variant and metric: users, means, lift with its always-valid bounds, SRM, decision.

    Computed from the picture the experiment is judged on (every replica's, merged), so
    each replica exports the same values: aggregate with max() across replicas, not sum().
    """
    runner = rt.experiment
    if runner is None:
        return
    res = runner.last or results(runner.exp, rt.view.outcomes,
                                 max(0.0, rt.clock.wall() - runner.started))
    name = runner.exp.name
    units = GaugeMetricFamily("veer_experiment_units", "Users each variant served.",
                              labels=["experiment", "variant"])
    users = GaugeMetricFamily("veer_experiment_metric_users",
                              "Users with at least one value of the metric.",
                              labels=["experiment", "metric", "variant"])
    means = GaugeMetricFamily("veer_experiment_metric_mean",
                              "Mean over users of each user's mean value (per variant).",
                              labels=["experiment", "metric", "variant"])
    lift = GaugeMetricFamily("veer_experiment_lift",
                             "Relative lift of new over original, with its always-valid "
                             "bounds (bound=lower|upper|estimate).",
                             labels=["experiment", "metric", "bound"])
    p_value = GaugeMetricFamily("veer_experiment_p_value",
                                "Fixed-horizon two-sided p-value (valid read once, at a "
                                "planned size).", labels=["experiment", "metric"])
    for v in VARIANTS:
        units.add_metric([name, v], res["variants"][v]["units"])
    for metric, r in res["metrics"].items():
        for v in VARIANTS:
            users.add_metric([name, metric, v], r[v]["n"])
            if r[v]["mean"] is not None:  # null when the values overflow a float
                means.add_metric([name, metric, v], r[v]["mean"])
        if r["lift"] is not None:
            lift.add_metric([name, metric, "estimate"], r["lift"])
        if r["lift_ci"] is not None:
            for bound, value in zip(("lower", "upper"), r["lift_ci"], strict=True):
                if value is not None:
                    lift.add_metric([name, metric, bound], value)
        if r["p_value"] is not None:
            p_value.add_metric([name, metric], r["p_value"])
    srm = GaugeMetricFamily("veer_experiment_srm_p_value",
                            "Sample ratio mismatch: always-valid (sequential) p-value; "
                            "< 0.001 is a mismatch.",
                            labels=["experiment"])
    srm.add_metric([name], res["srm"]["p_value"])
    decision = GaugeMetricFamily("veer_experiment_decision_info",
                                 "The experiment's decision now (value 1).",
                                 labels=["experiment", "action"])
    decision.add_metric([name, res["decision"]["action"]], 1)
    malformed = CounterMetricFamily("veer_metric_values_malformed",
                                    "veer-metric header values that could not be read.",
                                    labels=["experiment"])
    malformed.add_metric([name], res["malformed"])
    yield from (units, users, means, lift, p_value, srm, decision, malformed)


def build_registry(rt: Runtime) -> CollectorRegistry:
    """veer's own registry (never the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VeerCollector(rt))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)


def _shadow_metrics(rt: Runtime, host: Picture) -> Iterator[Metric]:
    """Mirrored traffic, apart from the variants' series (a sum over variant must not count
    a request twice): the shadow's answers, mismatches with original's, copies dropped, and
    latency quantiles of the shadow and of original's answers to the same requests."""
    mirror = GaugeMetricFamily("veer_mirror_ratio",
                               "Share of original's requests copied to new now.")
    mirror.add_metric([], rt.live.mirror_bp / 10000)
    yield mirror
    counts = host.counters(SHADOW)
    answers = CounterMetricFamily("veer_shadow_responses",
                                  "Answers new gave to mirrored copies, by status (0: none).",
                                  labels=["code"])
    for code, n in sorted(counts.codes.items()):
        answers.add_metric([str(code)], n)
    mismatches = CounterMetricFamily("veer_shadow_mismatches",
                                     "Mirrored requests whose status from new differed "
                                     "from original's.")
    mismatches.add_metric([], counts.mismatches)
    dropped = CounterMetricFamily("veer_shadow_dropped",
                                  "Copies not sent: the mirror's queue was full.")
    dropped.add_metric([], counts.dropped)
    quantiles = Metric("veer_shadow_latency_seconds",
                       "Latency of mirrored requests over the last minute: series=shadow "
                       "(new's answer) or paired (original's answer to the same requests).",
                       "summary")
    for series in (SHADOW, PAIRED):
        stats = host.window(series, 60)
        values = latency.quantiles_us(stats.histogram, tuple(p for _, p in QUANTILES))
        for (q, _), value in zip(QUANTILES, values, strict=True):
            quantiles.add_sample("veer_shadow_latency_seconds",
                                 {"series": series, "quantile": f"{q:g}"}, value / 1e6)
        quantiles.add_sample("veer_shadow_latency_seconds_count", {"series": series},
                             stats.requests)
    yield from (answers, mismatches, dropped, quantiles)
