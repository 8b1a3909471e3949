"""The access log's writer: takes the buffered entries a few times a second and appends them.

The file is opened with ``O_APPEND`` so that the workers of one host can share
it: each flush is one ``write`` of whole lines, and Linux appends each write at
the end as one piece. Formatting and the write run on the loop between
requests, never inside one; appending a batch to a local file takes
microseconds (nginx's workers write their logs the same way). ``reopen``
(SIGUSR1, after logrotate moved the file) opens the path again; ``-`` is
standard output.
"""

from __future__ import annotations

import asyncio
import logging
import os

from proxy.config.model import AccessLog
from proxy.telemetry.access_log import AccessLogBuffer

log = logging.getLogger("veer")

FLUSH_EVERY = 0.2  # seconds between writes


class AccessLogError(Exception):
    """The access log file cannot be opened for appending."""


def open_log(path: str) -> int:
    """A file descriptor appending to ``path`` (``-``: a copy of standard output's)."""
    if path == "-":
        return os.dup(1)
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise AccessLogError(f"access_log.path {path}: cannot append ({exc.strerror})") from None


class AccessLogWriter:
    """Writes one ``AccessLogBuffer`` to the configured file until stopped."""

    def __init__(self, cfg: AccessLog, buffer: AccessLogBuffer) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.fd = open_log(cfg.path)
        self.written = 0  # lines
        self.failed = 0  # lines lost to write errors
        self.reopened = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush every ``FLUSH_EVERY`` seconds from now on."""
        self._task = loop.create_task(self._run(), name="veer-access-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()

    def flush(self) -> None:
        """Write what is waiting (one write per batch)."""
        batch = self.buffer.take()
        if not batch:
            return
        try:
            _write_all(self.fd, self.buffer.render(batch))
            self.written += len(batch)
        except OSError as exc:
            self.failed += len(batch)
            log.error("access log %s: write failed (%s); %d lines lost", self.cfg.path,
                      exc.strerror, len(batch))

    def reopen(self, cfg: AccessLog | None = None) -> None:
        """Open the path (or ``cfg``'s, after a reload) again; the old file is closed once the
        new one is open, so a failure keeps writing where it did."""
        cfg = cfg or self.cfg
        fd = open_log(cfg.path)
        old, self.fd, self.cfg = self.fd, fd, cfg
        self.buffer.format = cfg.format
        self.reopened += 1
        os.close(old)

    def close(self) -> None:
        """Write the last entries and close the file."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()
        os.close(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
