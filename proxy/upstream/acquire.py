"""An upstream connection for one request: idle reuse, connect, retry, failover.

An idle keep-alive connection of the chosen endpoint is reused when there is
one; otherwise a new one is opened. A connect failure is retried on another
endpoint of the same variant (no byte of the request has been sent then), up to
``connect_retries`` times, and counts against the endpoint's health. When the
new pool has no usable endpoint left and ``upstreams.new.failover`` is set, the
request goes to original instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.http.h1 import ProxyError
from proxy.routing.router import ORIGINAL, Variant
from proxy.upstream.connection import UpstreamConnection, connect, take_idle

if TYPE_CHECKING:
    from proxy.runtime.runtime import Runtime
    from proxy.upstream.pool import Endpoint


async def acquire(rt: Runtime, variant: Variant,
                  first: Endpoint | None = None) -> tuple[UpstreamConnection, Variant]:
    """A connection and the variant it serves (original after a failover).

    ``first`` is an endpoint already picked for this request (its pick is not
    repeated). Raises ``ProxyError`` 502 (connect failed) or 503 (no healthy endpoint).
    """
    tried: list[Endpoint] = []  # allocated once; usually stays empty
    last_error: ProxyError | None = None  # built only on the failure path
    while True:
        balancer = rt.balancers[variant]
        attempts = 1 + rt.config.connect_retries
        while attempts > 0:
            ep, first = first or balancer.pick(rt.loop.time(), tried), None
            if ep is None:
                break
            conn = take_idle(ep)
            if conn is not None:
                return conn, variant
            attempts -= 1
            try:
                return await connect(ep, rt.config.timeouts.connect, rt.read_buffer), variant
            except (OSError, TimeoutError) as exc:
                tried.append(ep)
                rt.recorder.variants[variant].errors["connect"] += 1
                balancer.report_failure(ep, rt.loop.time())
                cause = "timed out" if isinstance(exc, TimeoutError) else exc.strerror
                last_error = ProxyError(502, "connect",
                                        f"upstream connect failed ({variant}: {cause})")
        failover = rt.config.new.failover if variant != ORIGINAL else None
        if failover is None:
            if last_error is None:
                rt.recorder.variants[variant].errors["no_healthy"] += 1
                last_error = ProxyError(503, "no_healthy", f"no healthy upstream ({variant})")
            raise last_error
        variant = ORIGINAL
        tried = []
