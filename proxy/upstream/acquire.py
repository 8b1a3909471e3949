"""An upstream connection for one request: idle reuse, connect, retry, failover.

An idle keep-alive connection of the chosen endpoint is reused when there is
one; otherwise a new one is opened. A connect failure is retried on another
endpoint of the same variant (no byte of the request has been sent then), up to
``connect_retries`` times, and counts against the endpoint's health. When the
new pool has no usable endpoint left and ``upstreams.new.failover`` is set, the
request goes to original instead.
"""

from __future__ import annotations

import asyncio
import ssl

from proxy.routing.variant import ORIGINAL, Variant
from proxy.telemetry.recorder import Recorder
from proxy.upstream.connection import ReadBuffer, UpstreamConnection, connect
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.pools import Pools
from proxy.wire.errors import ProxyError


async def acquire(pools: Pools, variant: Variant, loop: asyncio.AbstractEventLoop,
                  scratch: ReadBuffer, recorder: Recorder,
                  first: Endpoint | None = None) -> tuple[UpstreamConnection, Variant]:
    """A connection and the variant it serves (original after a failover).

    ``first`` is an endpoint already picked for this request (its pick is not
    repeated). Raises ``ProxyError`` connect (502) or no_healthy (503).
    """
    tried: list[Endpoint] = []  # allocated once; usually stays empty
    last_error: ProxyError | None = None  # built only on the failure path
    while True:
        balancer = pools.balancers[variant]
        attempts = 1 + pools.connect_retries
        while attempts > 0:
            ep, first = first or balancer.pick(loop.time(), tried), None
            if ep is None:
                break
            idle = pools.idle[ep]
            conn = idle.take()
            if conn is not None:
                return conn, variant
            attempts -= 1
            try:
                return await connect(ep, idle, pools.connect_timeout, scratch,
                                     pools.tls[variant]), variant
            except (OSError, TimeoutError) as exc:
                tried.append(ep)
                recorder.variants[variant].errors["connect"] += 1
                balancer.report_failure(ep, loop.time())
                cause = ("timed out" if isinstance(exc, TimeoutError) else
                         f"TLS: {exc.reason or exc}" if isinstance(exc, ssl.SSLError) else
                         exc.strerror or str(exc))
                last_error = ProxyError("connect", f"upstream connect failed ({variant}: {cause})",
                                        upstream=ep.label)
        failover = pools.failover if variant != ORIGINAL else None
        if failover is None:
            if last_error is None:
                recorder.variants[variant].errors["no_healthy"] += 1
                last_error = ProxyError("no_healthy", f"no healthy upstream ({variant})")
            raise last_error
        variant = ORIGINAL
        tried = []
