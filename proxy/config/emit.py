"""``Config`` -> plain data in the config file's own keys: what ``veer check`` prints.

The inverse of ``proxy.config.load``: every option written out with its effective
value (defaults filled in, presets expanded to their phases, ``workers: auto``
resolved), in the units a person writes (``250ms``, ``64KiB``, ``0.1%``) wherever
that spelling reads back to exactly the same value, else as a plain number. Loading
what this returns gives a ``Config`` equal to the one it came from (tested).
"""

from __future__ import annotations

from typing import Any

from proxy.config.experiment import Experiment, Metric, MetricGate, PromQuery
from proxy.config.hooks import Hook
from proxy.config.model import Address, Cohort, Config, KeySource, Pool
from proxy.config.plan import Gates, Phase, Rollout
from proxy.config.units import parse_duration, parse_rate, parse_size

_DURATION_UNITS = (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_SIZE_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def duration(seconds: float) -> str | float:
    """``2h``, ``90s``, ``250ms``: the largest unit that spells ``seconds`` exactly."""
    for unit, scale in _DURATION_UNITS:
        count = round(seconds / scale)
        spelled = f"{count}{unit}"
        if count >= 1 and parse_duration(spelled) == seconds:
            return spelled
    if seconds == 0:
        return "0s"
    return seconds  # a bare number of seconds reads back exactly


def size(count: int) -> str | int:
    """``64KiB``, ``1GiB``: a binary unit when it divides ``count``, else bytes."""
    for unit, scale in _SIZE_UNITS:
        if count and count % scale == 0 and parse_size(f"{count // scale}{unit}") == count:
            return f"{count // scale}{unit}"
    return count


def rate(fraction: float) -> str | float:
    """``1%``, ``0.1%``: a percent when it reads back exactly, else the fraction."""
    spelled = f"{fraction * 100:.10g}%"
    return spelled if parse_rate(spelled) == fraction else fraction


def percent(bp: int) -> float | int:
    """Basis points as the percent a config holds: 1250 -> 12.5, 1000 -> 10."""
    return bp // 100 if bp % 100 == 0 else bp / 100


def _address(a: Address) -> str:
    return str(a)


def _endpoint(a: Address) -> str:
    return f"{a.scheme}://{a}"


def _sources(sources: tuple[KeySource, ...]) -> list[str]:
    return [str(s) for s in sources]


def _cohort(c: Cohort) -> dict[str, Any]:
    return {"users": sorted(c.users), "groups": sorted(c.groups)}


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """A key left out means its default; None is never written (the readers refuse it)."""
    return {k: v for k, v in d.items() if v is not None}


def _pool(p: Pool) -> dict[str, Any]:
    out: dict[str, Any] = {"endpoints": [_endpoint(a) for a in p.endpoints],
                           "balance": p.balance, "failover": p.failover or "none"}
    if p.secure or p.tls != type(p.tls)():
        out["tls"] = _drop_none({"ca": p.tls.ca, "verify": p.tls.verify, "cert": p.tls.cert,
                                 "key": p.tls.key})
    return out


def _prometheus(q: PromQuery) -> dict[str, Any]:
    return {"prometheus": {"query": q.query, "address": q.address,
                           "interval": duration(q.interval), "timeout": duration(q.timeout)}}


def _metric_gate(g: MetricGate) -> dict[str, Any]:
    return _drop_none({
        "name": g.name, "source": _prometheus(g.prometheus) if g.prometheus else g.source,
        "type": g.type, "max": g.max, "min": g.min,
        "max_increase": None if g.max_increase is None else rate(g.max_increase),
        "max_decrease": None if g.max_decrease is None else rate(g.max_decrease),
        "min_samples": g.min_samples})


def gates(g: Gates) -> dict[str, Any]:
    """A phase's ``gates:`` mapping."""
    out = _drop_none({
        "max_error_rate": None if g.max_error_rate is None else rate(g.max_error_rate),
        "max_p99": None if g.max_p99 is None else duration(g.max_p99),
        "max_p999": None if g.max_p999 is None else duration(g.max_p999),
        "min_requests": g.min_requests,
        "max_error_rate_increase": None if g.max_error_rate_increase is None
        else rate(g.max_error_rate_increase),
        "max_latency_increase": None if g.max_latency_increase is None
        else rate(g.max_latency_increase),
        "max_status_mismatch": None if g.max_status_mismatch is None
        else rate(g.max_status_mismatch),
    })
    if g.metrics:
        out["metrics"] = [_metric_gate(m) for m in g.metrics]
    return out


def _phase(p: Phase) -> dict[str, Any]:
    return _drop_none({
        "name": p.name, "weight": percent(p.weight_bp), "duration": duration(p.duration),
        "gates": gates(p.gates), "approval": p.approval, "on_breach": p.on_breach,
        "allow_users": sorted(p.allow_users), "allow_groups": sorted(p.allow_groups),
        "mirror": None if p.mirror_bp is None else percent(p.mirror_bp)})


def _hook(h: Hook) -> dict[str, Any]:
    return {"url": h.url, "timeout": duration(h.timeout), "retries": h.retries,
            "events": sorted(h.events)}


def plan(r: Rollout) -> list[dict[str, Any]]:
    """The expanded plan, one ``plan:`` entry per phase (what a preset became)."""
    return [_phase(p) for p in r.phases]


def _rollout(r: Rollout) -> dict[str, Any]:
    return {"name": r.name, "tick": duration(r.tick), "plan": plan(r),
            "rollback_stages": [rate(s) for s in r.rollback_stages],
            "rollback_interval": duration(r.rollback_interval),
            "confirm": [_hook(h) for h in r.confirm],
            "confirm_retry": duration(r.confirm_retry),
            "notify": [_hook(h) for h in r.notify]}


def _metric(m: Metric) -> dict[str, Any]:
    return _drop_none({
        "name": m.name, "type": m.type,
        "source": _prometheus(m.prometheus) if m.prometheus else m.source,
        "goal": m.goal, "role": m.role, "margin": rate(m.margin),
        "mde": None if m.mde is None else rate(m.mde)})


def _experiment(e: Experiment) -> dict[str, Any]:
    return {"name": e.name, "split": percent(e.split_bp),
            "metrics": [_metric(m) for m in e.metrics], "alpha": rate(e.alpha),
            "power": rate(e.power), "max_users": e.max_users, "min_users": e.min_users}


def to_config_data(cfg: Config) -> dict[str, Any]:
    """The effective config in the config file's keys, ready for ``yaml.safe_dump``."""
    t, lim, h, ro = cfg.timeouts, cfg.limits, cfg.health, cfg.routing
    out: dict[str, Any] = {
        "listen": _address(cfg.listen),
        "admin": _drop_none({"listen": _address(cfg.admin.listen),
                             "token_file": cfg.admin.token_file}),
        "upstreams": {"original": _pool(cfg.original), "new": _pool(cfg.new)},
        "routing": {
            "salt": ro.salt, "user_key": _sources(ro.user_key),
            "group_key": _sources(ro.group_key), "anonymous": ro.anonymous,
            "cookie_name": ro.cookie_name,
            "cookie_max_age": duration(float(ro.cookie_max_age)),
            "force": {"enabled": ro.force_enabled, "header": ro.force_header,
                      "cookie": ro.force_cookie},
            "allow": _cohort(ro.allow), "deny": _cohort(ro.deny)},
    }
    if cfg.experiment is None:  # else experiment.split is the weight, and weights refused
        out["weights"] = {"new": percent(cfg.new_weight_bp)}
    out["timeouts"] = {name: duration(getattr(t, name)) for name in t.__dataclass_fields__}
    out["limits"] = {
        "max_header_bytes": size(lim.max_header_bytes), "max_headers": lim.max_headers,
        "max_body_bytes": size(lim.max_body_bytes),
        "max_concurrent_upstream": lim.max_concurrent_upstream,
        "max_idle_per_endpoint": lim.max_idle_per_endpoint, "max_pipelined": lim.max_pipelined,
        "max_concurrent_per_client": lim.max_concurrent_per_client,
        "min_body_rate": size(lim.min_body_rate)}
    out["health"] = {"consecutive_failures": h.consecutive_failures,
                     "ejection_time": duration(h.ejection_time),
                     "max_ejected_percent": h.max_ejected_percent}
    if h.active is not None:
        a = h.active
        lo, hi = a.expect
        out["health"]["active"] = _drop_none({
            "path": a.path, "interval": duration(a.interval), "timeout": duration(a.timeout),
            "healthy": a.healthy, "unhealthy": a.unhealthy,
            "expect": lo if lo == hi else f"{lo}-{hi}", "host": a.host})
    out["connect_retries"] = cfg.connect_retries
    out["recording"] = {"enabled": cfg.recording.enabled, "window": cfg.recording.window}
    if cfg.rollout is not None:
        out["rollout"] = _rollout(cfg.rollout)
    out["state"] = _drop_none({"path": cfg.state.path, "on_corrupt": cfg.state.on_corrupt,
                               "max_events": cfg.state.max_events})
    out["upgrades"] = sorted(cfg.upgrades)
    out["workers"] = cfg.workers
    if cfg.cluster is not None:
        c = cfg.cluster
        out["cluster"] = _drop_none({"redis": c.redis, "name": c.name, "id": c.id,
                                     "lease": duration(c.lease),
                                     "on_unreachable": c.on_unreachable})
    if cfg.experiment is not None:
        out["experiment"] = _experiment(cfg.experiment)
    if cfg.access_log is not None:
        out["access_log"] = {"path": cfg.access_log.path, "format": cfg.access_log.format}
    if cfg.tls is not None:
        out["tls"] = {"cert": cfg.tls.cert, "key": cfg.tls.key,
                      "min_version": cfg.tls.min_version}
    m = cfg.mirror
    out["mirror"] = {"percent": percent(m.percent_bp), "methods": sorted(m.methods),
                     "max_body": size(m.max_body), "queue": m.queue,
                     "timeout": duration(m.timeout)}
    return out
