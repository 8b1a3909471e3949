"""The load balancer's sections: active health checks (``health.active``), mirroring
(``mirror:``) and the access log (``access_log:``), read into their models."""

from __future__ import annotations

from typing import Any

from proxy.config.model import ACCESS_LOG_FORMATS, AccessLog, ActiveHealth, Mirror
from proxy.config.reader import (
    SIZE,
    Reader,
    choice,
    default,
    int_range,
    names,
    text,
)
from proxy.config.units import parse_duration, parse_percent_bp, parse_size


def read_active_health(r: Reader) -> ActiveHealth:
    """``health.active``: probes of every endpoint, with or without traffic."""
    seconds = "a duration 10ms..1h, e.g. 2s"
    a = ActiveHealth(
        path=r.field(ActiveHealth, "path", _probe_path, "a path starting with /, e.g. /healthz"),
        interval=r.field(ActiveHealth, "interval", _probe_duration, seconds),
        timeout=r.field(ActiveHealth, "timeout", _probe_duration, seconds),
        healthy=r.field(ActiveHealth, "healthy", int_range(1, 100), "an integer 1..100"),
        unhealthy=r.field(ActiveHealth, "unhealthy", int_range(1, 100), "an integer 1..100"),
        expect=r.field(ActiveHealth, "expect", _status_range,
                       'a status or range of statuses, e.g. 200 or "200-399"'),
        host=r.field(ActiveHealth, "host", _host_header, "a host name, e.g. app.internal"),
    )
    r.done()
    if a.timeout > a.interval:
        raise r.fail("timeout", a.timeout, f"at most the interval ({a.interval:g}s)")
    return a


def _probe_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not all(
            33 <= ord(c) < 127 for c in value):
        raise ValueError
    return value


def _probe_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if not 0.01 <= seconds <= 3600:
        raise ValueError
    return seconds


def _status_range(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and value.count("-") == 1:
        a, b = value.split("-")
        lo, hi = int(a), int(b)
    else:
        raise ValueError
    if not 100 <= lo <= hi <= 599:
        raise ValueError
    return lo, hi


def _host_header(value: Any) -> str:
    if not isinstance(value, str) or not value or not all(
            c.isalnum() or c in "-._:[]" for c in value):
        raise ValueError
    return value


def read_mirror(r: Reader) -> Mirror:
    """``mirror:``: off unless a percent is given (here or in a phase)."""
    m = Mirror(
        percent_bp=r.get("percent", default(Mirror, "percent_bp"), parse_percent_bp,
                         "a percent 0..100, e.g. 100 or 2.5"),
        methods=r.field(Mirror, "methods", _methods, "a list of methods, e.g. [GET, HEAD]"),
        max_body=r.field(Mirror, "max_body", parse_size, SIZE[1]),
        queue=r.field(Mirror, "queue", int_range(1, 100_000), "an integer 1..100000"),
        timeout=r.field(Mirror, "timeout", _probe_duration, "a duration 10ms..1h, e.g. 5s"),
    )
    r.done()
    return m


def _methods(value: Any) -> frozenset[str]:
    methods = names(value)
    if not methods or any(not m.isascii() or not m.isalpha() or not m.isupper()
                          for m in methods):
        raise ValueError
    return methods


def read_access_log(r: Reader) -> AccessLog:
    """The ``access_log:`` section."""
    log = AccessLog(
        path=r.require("path", text, 'a file path, or "-" for standard output'),
        format=r.field(AccessLog, "format", choice(ACCESS_LOG_FORMATS),
                       " or ".join(ACCESS_LOG_FORMATS)),
    )
    r.done()
    return log
