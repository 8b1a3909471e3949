"""One backend address with its live counters and passive-health state (no I/O)."""

from __future__ import annotations

from proxy.config.model import Address


class Endpoint:
    """One backend address of a pool."""

    __slots__ = ("address", "authority", "connects", "ejected_until", "ejections", "failures",
                 "label", "outstanding", "probe", "probe_down", "probe_streak", "total")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.label = f"{address.scheme}://{address}"
        self.authority = str(address).encode()  # Host for clients that sent none
        self.outstanding = 0
        self.total = 0
        self.connects = 0  # new upstream connections opened (keep-alive reuse shows here)
        self.failures = 0  # consecutive
        self.ejected_until = 0.0  # math.inf while active health checks say it is down
        self.ejections = 0
        # Active health: down by the probes, and the run of like results (+ok, -failed).
        self.probe_down = False
        self.probe_streak = 0
        self.probe = ""  # what the last probe saw, e.g. "200" or "connect refused"

    def healthy(self, now: float) -> bool:
        """Not ejected, or the ejection has run out."""
        return self.ejected_until <= now

    def __repr__(self) -> str:
        return f"Endpoint({self.label}, outstanding={self.outstanding})"
