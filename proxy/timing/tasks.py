"""Background tasks: cancelling one and waiting until it has finished."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("veer.tasks")
RECANCEL_EVERY = 0.1  # seconds: a cancel a library swallowed is sent again this often


async def cancel(task: asyncio.Task[None] | None, timeout: float = 5.0) -> None:
    """Cancel a background task and wait until it has finished (its own exception, if it
    failed, is raised here).

    A cancel can be lost: a library that catches ``CancelledError`` mid-command and goes
    on (redis-py has) would leave ``await task`` waiting forever and a SIGTERM hanging.
    So the cancel is repeated until the task ends, and after ``timeout`` seconds the task
    is left behind with a warning instead of holding the process.
    """
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.warning("task %s did not stop %.0fs after being cancelled; left behind",
                        task.get_name(), timeout)
            return
        await asyncio.wait({task}, timeout=min(RECANCEL_EVERY, left))
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
