"""Per-user outcomes: who was served by which variant, and each user's values of each metric.

Experiments are judged per user (the randomisation unit), so what is kept is
per user, not per request: the users each variant served (``units``), and for
each (metric, variant) a ``UserTable`` of every user's count, sum and count of
non-zero values. A user's mean is sum / count; for a proportion a user counts
1 when any value was non-zero. Users are keyed by a 64-bit murmur3 hash of the
user id (the chance of any collision among 1M users is ~3e-8).

Memory is bounded: a table keeps at most ``max_users`` users (later ones are
counted in ``dropped``, never silently mixed in); ``bench/experiment.py``
measures the bytes per user.

Between processes the tables travel as deltas: a reporter ``drain``s what it
recorded since its last report, and the receiver ``merge``s it. Sums and counts
add exactly, so the merged table is the table one process would have kept.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from typing import Any

import mmh3
import numpy as np

from proxy.routing.variant import VARIANTS, Variant

MAX_USERS = 1_000_000
MAX_NAMES = 64  # metric names a header may bring (configured ones only are kept)
MAX_VALUE = 1e15  # beyond, a value is malformed (squares must stay within a float)


def user_id(user: str) -> int:
    """The 64-bit key a user is kept under."""
    return int(mmh3.hash64(user, signed=False)[0])


class UserTable:
    """Per-user count, sum and non-zero count of one metric on one variant."""

    __slots__ = ("count", "dropped", "index", "max_users", "nonzero", "total")

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.index: dict[int, int] = {}
        self.count = array("d")
        self.total = array("d")
        self.nonzero = array("d")
        self.max_users = max_users
        self.dropped = 0  # values from users beyond max_users

    def __len__(self) -> int:
        return len(self.index)

    def add(self, uid: int, value: float, count: float = 1.0, nonzero: float | None = None
            ) -> None:
        """Add ``count`` values summing to ``value`` for user ``uid``."""
        i = self.index.get(uid)
        if i is None:
            if len(self.index) >= self.max_users:
                self.dropped += int(count)
                return
            i = self.index[uid] = len(self.count)
            self.count.append(0.0)
            self.total.append(0.0)
            self.nonzero.append(0.0)
        self.count[i] += count
        self.total[i] += value
        self.nonzero[i] += (1.0 if value else 0.0) if nonzero is None else nonzero

    def values(self, proportion: bool) -> np.ndarray[Any, np.dtype[np.float64]]:
        """One value per user: their mean, or 1/0 for a proportion."""
        count = np.frombuffer(self.count, dtype=np.float64)
        if proportion:
            return (np.frombuffer(self.nonzero, dtype=np.float64) > 0).astype(np.float64)
        return np.frombuffer(self.total, dtype=np.float64) / count

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON-able data (uids as ints)."""
        return {"u": list(self.index), "c": self.count.tolist(), "s": self.total.tolist(),
                "z": self.nonzero.tolist(), "d": self.dropped}


class Outcomes:
    """What this process (or, merged, the whole cluster) recorded per user."""

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self.units: dict[Variant, set[int]] = {v: set() for v in VARIANTS}
        self.units_dropped = 0
        self.tables: dict[tuple[str, Variant], UserTable] = {}
        self.malformed = 0  # veer-metric values that could not be read
        self.active = False  # an experiment or a metric gate wants outcomes
        self.header_names: frozenset[str] = frozenset()
        self._header_names: dict[bytes, str] = {}
        self.traffic_names: frozenset[str] = frozenset()

    def configure(self, header: Iterable[str], traffic: Iterable[str], active: bool,
                  max_users: int = MAX_USERS) -> None:
        """Which header and traffic metrics to keep (from the config; on every reload)."""
        self.header_names = frozenset(header)
        self._header_names = {n.encode("latin-1"): n for n in self.header_names}
        self.traffic_names = frozenset(traffic)
        self.active = active
        self.max_users = max_users

    def table(self, metric: str, variant: Variant) -> UserTable:
        """The table of ``metric`` on ``variant`` (made empty when first asked for)."""
        t = self.tables.get((metric, variant))
        if t is None:
            t = self.tables[(metric, variant)] = UserTable(self.max_users)
        return t

    # -- hot path (only when ``active``) -------------------------------------------
    def request(self, variant: Variant, user: str, latency_us: int, failed: bool) -> None:
        """One finished request: its user was served by ``variant``."""
        uid = user_id(user)
        units = self.units[variant]
        if uid not in units:
            if len(units) >= self.max_users:
                self.units_dropped += 1
            else:
                units.add(uid)
        if self.traffic_names:
            if "error_rate" in self.traffic_names:
                self.table("error_rate", variant).add(uid, 1.0 if failed else 0.0)
            if "latency_ms" in self.traffic_names:
                self.table("latency_ms", variant).add(uid, latency_us / 1000)

    def header(self, variant: Variant, user: str, raw: bytes) -> None:
        """One ``veer-metric`` header value: ``name=value, name=value``. A value that is
        not a number within +-1e15, or has no name, is counted as malformed."""
        uid = 0
        names = self._header_names
        for item in raw.split(b",", MAX_NAMES)[:MAX_NAMES]:
            name, eq, value = item.partition(b"=")
            key = name.strip()
            try:
                number = float(value) if eq and key else math.nan
            except ValueError:
                number = math.nan
            if not -MAX_VALUE <= number <= MAX_VALUE:  # NaN fails too
                self.malformed += 1
                continue
            metric = names.get(key)
            if metric is not None:
                if not uid:
                    uid = user_id(user)
                self.table(metric, variant).add(uid, number)

    # -- between processes ----------------------------------------------------------
    def drain(self) -> dict[str, Any] | None:
        """Everything recorded since the last drain, as wire data; None if nothing."""
        if not any(self.units.values()) and not self.tables and not self.malformed:
            return None
        out = {"units": {v: list(u) for v, u in self.units.items() if u},
               "units_dropped": self.units_dropped,
               "tables": [[m, v, t.to_wire()] for (m, v), t in self.tables.items()],
               "malformed": self.malformed}
        self.units = {v: set() for v in VARIANTS}
        self.tables = {}
        self.units_dropped = self.malformed = 0
        return out

    def merge(self, d: dict[str, Any]) -> None:
        """Add what another process drained, all of it or (ValueError, KeyError or TypeError
        on bad data) none of it."""
        units_in = {v: [int(uid) for uid in uids] for v, uids in dict(d["units"]).items()}
        tables_in = []
        for metric, v, t in d["tables"]:
            cols = [t["u"], t["c"], t["s"], t["z"]]
            if not all(isinstance(c, list) for c in cols) or len({len(c) for c in cols}) > 1:
                raise ValueError("table columns must be lists of one length")
            rows = [(int(u), float(c), float(s), float(z)) for u, c, s, z in zip(*cols,
                                                                               strict=True)]
            tables_in.append((str(metric), v, rows, int(t.get("d", 0))))
        if any(v not in VARIANTS for v in units_in) or any(t[1] not in VARIANTS
                                                           for t in tables_in):
            raise ValueError("unknown variant")
        extra = (int(d.get("units_dropped", 0)), int(d.get("malformed", 0)))
        for v, uids in units_in.items():
            units = self.units[v]
            for uid in uids:
                if uid in units:
                    continue
                if len(units) >= self.max_users:
                    self.units_dropped += 1
                else:
                    units.add(uid)
        for metric, v, rows, dropped in tables_in:
            table = self.table(metric, v)
            for uid, count, total, nonzero in rows:
                table.add(uid, total, count, nonzero)
            table.dropped += dropped
        self.units_dropped += extra[0]
        self.malformed += extra[1]

    def seen(self, uid: int) -> Variant | None:
        """The variant that served this user, if any did (the newest wins: new)."""
        for v in reversed(VARIANTS):
            if uid in self.units[v]:
                return v
        return None
