"""One end of a TCP connection as both sides hold it: close and abort, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast


class ConnectionEnd:
    """Mixed into the client and upstream protocols: closing twice is harmless, and a
    closed end writes nothing."""

    transport: asyncio.Transport | None
    closed: bool

    def close(self) -> None:
        """Close after what is buffered has been written."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection now (the peer sees a reset, never a clean end)."""
        if self.transport is not None:
            self.closed = True
            self.transport.abort()



def protocol_factory(factory: Callable[[], object]) -> Callable[[], asyncio.BaseProtocol]:
    """``factory`` as ``create_server``/``create_connection`` want it. Its protocols have
    a protocol's methods but no asyncio base class: uvloop calls the methods, and the
    base would keep mypyc from compiling them natively (see ``UpstreamConnection``)."""
    return cast("Callable[[], asyncio.BaseProtocol]", factory)
