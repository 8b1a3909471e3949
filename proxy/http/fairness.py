"""Per-client accounting: one client address cannot take everyone's capacity.

Each client connection joins the slot of its address once, at connect, and
counts its in-flight upstream requests there with plain integer adds, so the
per-request cost is two attribute increments and no dictionary work. A slot
lives while its address has a connection open.
"""

from __future__ import annotations


class ClientSlot:
    """The live counters of one client address."""

    __slots__ = ("address", "connections", "in_flight", "refused")

    def __init__(self, address: str) -> None:
        self.address = address
        self.connections = 0
        self.in_flight = 0  # upstream requests of this address being forwarded now
        self.refused = 0  # requests answered 503 at the per-client limit


class ClientTable:
    """Slots by client address, for the connections that are open."""

    __slots__ = ("refused", "slots")

    def __init__(self) -> None:
        self.slots: dict[str, ClientSlot] = {}
        self.refused = 0  # requests refused at the per-client limit, all addresses

    def join(self, address: str) -> ClientSlot:
        """The slot of ``address``, counting one more open connection."""
        slot = self.slots.get(address)
        if slot is None:
            slot = self.slots[address] = ClientSlot(address)
        slot.connections += 1
        return slot

    def leave(self, slot: ClientSlot) -> None:
        """One connection of ``slot``'s address closed; the slot goes with the last."""
        slot.connections -= 1
        if slot.connections <= 0 and slot.in_flight <= 0:
            self.slots.pop(slot.address, None)
