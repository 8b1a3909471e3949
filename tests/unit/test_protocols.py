"""The two protocol classes have no asyncio base class (so that mypyc compiles them
natively): each must define every method of the protocol it is, since nothing is
inherited, and uvloop tells a buffered protocol by ``get_buffer``."""

from __future__ import annotations

import asyncio

import pytest

from proxy.http.inbound import ClientConnection
from proxy.upstream.connection import UpstreamConnection


def _methods(base: type) -> set[str]:
    return {name for name in dir(base) if not name.startswith("_")}


@pytest.mark.parametrize(("cls", "protocol", "not_buffered"), [
    (ClientConnection, asyncio.Protocol, True),
    (UpstreamConnection, asyncio.BufferedProtocol, False),
])
def test_a_protocol_class_defines_every_method_of_its_protocol(
        cls: type, protocol: type, not_buffered: bool) -> None:
    assert not issubclass(cls, asyncio.BaseProtocol)  # else mypyc cannot make it native
    missing = sorted(m for m in _methods(protocol) if not callable(getattr(cls, m, None)))
    assert not missing, f"{cls.__name__} lacks {missing} of {protocol.__name__}"
    # uvloop reads a protocol with get_buffer as buffered, and then never calls
    # data_received.
    assert hasattr(cls, "get_buffer") != not_buffered
