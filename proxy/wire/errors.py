"""The one table of what can go wrong in an exchange: the status veer answers, where it is
counted, and the label it has in the error counters and on ``/metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One kind of failure."""

    status: int  # what veer answers when no response byte has gone to the client yet
    counted: str  # "attempt": where it happens; "end": when the exchange ends; "": never
    meaning: str


KINDS: Final = {
    "connect": ErrorKind(502, "attempt", "no connection to an upstream endpoint could be opened"),
    "timeout": ErrorKind(504, "end", "a connect, first-byte, idle or total timeout"),
    "reset": ErrorKind(502, "end", "the upstream closed the connection mid-exchange"),
    "protocol": ErrorKind(502, "end", "the upstream's answer was not valid HTTP/1.1"),
    "no_healthy": ErrorKind(503, "attempt", "every endpoint of the pool is ejected"),
    "overload": ErrorKind(503, "end", "limits.max_concurrent_upstream was reached"),
    # The client's fault (slow body, too large, ...): its status is the error's own.
    "client": ErrorKind(400, "", "the client broke a limit while its request was forwarded"),
}
#: The error counters of each variant (``veer_upstream_errors{kind}``), in this order.
COUNTED: Final = tuple(k for k, v in KINDS.items() if v.counted)
#: Counted when the exchange ends (the others are counted at the attempt, or never).
COUNTED_AT_END: Final = frozenset(k for k, v in KINDS.items() if v.counted == "end")


class ProxyError(Exception):
    """A failure veer answers itself (``h1.error_response``), before any response byte of the
    upstream went to the client. ``kind`` is a key of ``KINDS``; ``status`` defaults to its."""

    def __init__(self, kind: str, cause: str, status: int | None = None,
                 upstream: str | None = None) -> None:
        super().__init__(cause)
        self.kind, self.cause = kind, cause
        self.upstream = upstream  # the endpoint it happened at, when no connection was had
        self.status = KINDS[kind].status if status is None else status
