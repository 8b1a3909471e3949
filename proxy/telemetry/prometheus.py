"""Metrics only the release itself can report (memory, cache hit rate), read from Prometheus.

Each configured query is polled every ``interval`` once per variant, with
``{{variant}}`` replaced by ``original`` or ``new`` (as Flagger's and Argo
Rollouts' metric templates fill in the target). A poll gives one number or a
problem: an unreachable server, an error answer, no series, more than one
series (the query must aggregate), or a value that is not finite. A problem is
kept as the metric's state, so a gate on it is inconclusive, never a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.config.experiment import VARIANT_PLACEHOLDER, PromQuery
from proxy.routing.variant import VARIANTS, Variant
from proxy.timing.clock import Clock
from proxy.timing.tasks import cancel

log = logging.getLogger("veer.prometheus")
KEEP = 10_000  # polls kept per metric and variant


class QueryError(Exception):
    """A poll that gave no usable number."""


def query_for(q: PromQuery, variant: Variant) -> str:
    """The PromQL sent for ``variant``."""
    return q.query.replace(VARIANT_PLACEHOLDER, variant)


def value_of(body: Any) -> float:
    """The one number in a ``/api/v1/query`` answer; QueryError says why there is none."""
    try:
        return _value_of(body)
    except (AttributeError, TypeError, IndexError, KeyError, ValueError) as exc:
        raise QueryError(f"an answer of an unexpected shape ({type(exc).__name__})") from None


def _value_of(body: Any) -> float:
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise QueryError(f"Prometheus answered an error: {error or body!r}"[:300])
    data = body.get("data")
    if not isinstance(data, dict):
        raise QueryError("an answer without data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif kind == "vector" and isinstance(result, list):
        if not result:
            raise QueryError("no data (the query returned no series)")
        if len(result) > 1:
            raise QueryError(f"{len(result)} series: aggregate the query (sum, max, avg) to one")
        raw = result[0].get("value", [None, None])[1]
    else:
        raise QueryError(f"unusable result type {kind!r} (want a vector or scalar)")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise QueryError(f"not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise QueryError(f"not a finite number: {raw}")
    return value


@dataclass(slots=True)
class Series:
    """Polls of one metric for one variant: (wall time, value), and the latest problem."""

    values: deque[tuple[float, float]]
    problem: str | None = "not polled yet"
    polls: int = 0
    failures: int = 0

    def since(self, start: float) -> list[float]:
        """Values polled at or after ``start`` (wall seconds)."""
        return [v for t, v in self.values if t >= start]


class PrometheusPoller:
    """Polls every query the config names; ``series`` is what gates read."""

    def __init__(self, queries: dict[str, PromQuery], clock: Clock) -> None:
        self.queries = queries  # metric name -> query
        self.clock = clock
        self.series: dict[tuple[str, Variant], Series] = {
            (name, v): Series(deque(maxlen=KEEP)) for name in queries for v in VARIANTS}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def samples(self, metric: str, variant: Variant, since: float) -> tuple[list[float],
                                                                           str | None]:
        """Values since ``since`` and the current problem (None when the last poll worked)."""
        s = self.series.get((metric, variant))
        if s is None:
            return [], "no Prometheus query for this metric"
        return s.since(since), s.problem

    async def poll(self, name: str, variant: Variant) -> None:
        """One poll of ``name`` for ``variant``; its value or its problem is kept."""
        q, s = self.queries[name], self.series[(name, variant)]
        s.polls += 1
        try:
            s.values.append((self.clock.wall(), await self._query(q, variant)))
            s.problem = None
        except Exception as exc:  # anything, so a poll never dies and never keeps stale data
            if not isinstance(exc, QueryError):
                exc = QueryError(f"{type(exc).__name__}: {exc}"[:300])
            s.failures += 1
            if s.problem != str(exc):
                log.warning("prometheus %s (%s): %s", name, variant, exc)
            s.problem = str(exc)

    async def _query(self, q: PromQuery, variant: Variant) -> float:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{q.address}/api/v1/query"
        try:
            async with self._session.get(url, params={"query": query_for(q, variant)},
                                         timeout=aiohttp.ClientTimeout(total=q.timeout)) as r:
                try:
                    body = await r.json(content_type=None)
                except ValueError:
                    raise QueryError(f"HTTP {r.status}: not JSON") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise QueryError(f"unreachable: {type(exc).__name__} {exc}"[:300]) from None
        return value_of(body)

    async def _loop(self, name: str) -> None:
        interval = self.queries[name].interval
        while True:
            await asyncio.gather(*(self.poll(name, v) for v in VARIANTS))
            await asyncio.sleep(interval)

    def start(self) -> None:
        """A polling task per query."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop(n), name=f"veer-prometheus-{n}")
                       for n in self.queries]

    async def stop(self) -> None:
        """Stop polling; close the HTTP session."""
        for t in self._tasks:
            await cancel(t)
        self._tasks = []
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
