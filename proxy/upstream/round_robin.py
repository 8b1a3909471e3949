"""Round-robin: each pick starts one endpoint further along the pool."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.upstream.endpoint import Endpoint


class RoundRobin:
    """The next healthy endpoint in turn."""

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
        for i in range(n):
            ep = eps[(start + i) % n]
            if ep.ejected_until <= now and ep not in exclude:
                return ep
        return None
