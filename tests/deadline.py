"""One way to wait for behaviour in tests: poll a condition until a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0,
                interval: float = 0.01, what: str = "condition") -> float:
    """Return once ``condition()`` is true; fail with ``what`` after ``timeout`` seconds.

    Returns the seconds the wait took (callers that only wait can ignore it).
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def until_sync(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01,
               what: str = "condition") -> float:
    """``until`` for code outside an event loop (subprocess tests); returns the seconds taken."""
    start = time.monotonic()
    deadline = start + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start
