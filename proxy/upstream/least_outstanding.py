"""Least outstanding: the endpoint with the fewest requests in flight (ties in turn)."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.upstream.endpoint import Endpoint


class LeastOutstanding:
    """The healthy endpoint with the fewest in-flight requests; ties broken round-robin."""

    __slots__ = ("_endpoints", "_next")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = endpoints
        self._next = 0

    def pick(self, now: float, exclude: Sequence[Endpoint] = ()) -> Endpoint | None:
        """A healthy endpoint not in ``exclude``, or None when there is none."""
        eps = self._endpoints
        n = len(eps)
        start = self._next
        self._next = (start + 1) % n
        best: Endpoint | None = None
        for i in range(n):
            ep = eps[(start + i) % n]
            if ep.ejected_until <= now and ep not in exclude and (
                    best is None or ep.outstanding < best.outstanding):
                best = ep
        return best
