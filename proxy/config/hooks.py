"""A webhook receiver as the config names it (the sending is ``proxy.control.webhooks``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Hook:
    """One receiver: where to POST, how long to wait, and which event kinds it wants."""

    url: str
    timeout: float = 5.0  # seconds per attempt
    retries: int = 3  # extra attempts after the first, for notifications
    events: frozenset[str] = frozenset()  # event kinds to send; empty = all

    def __post_init__(self) -> None:
        # Fail at startup, not on the first event hours into a rollout.
        url = urlsplit(self.url)
        if url.scheme != "http" or not url.hostname or url.port == 0:  # .port: ValueError if bad
            raise ValueError(f"webhook url must be http://host[:port]/path, got {self.url!r}")
        if self.timeout <= 0 or self.retries < 0:
            raise ValueError(f"webhook {self.url}: need timeout > 0 and retries >= 0")

    def wants(self, kind: str) -> bool:
        """True if events of ``kind`` go to this hook."""
        return not self.events or kind in self.events
