"""The access log's writer: takes the buffered entries a few times a second and appends them.

Every ``FLUSH_EVERY`` seconds the loop takes the batch (a list swap), formats it
between requests in slices of ``SLICE`` lines, and hands the bytes to one writer
thread: neither a slow disk nor a log reader that stops reading (``-`` piped to
a collector) ever blocks the event loop. While ``MAX_QUEUED`` batches already wait for the thread,
a new one is dropped and counted, so a stalled consumer costs lines, never
memory or latency. The thread does everything to the file in order (writes,
switching to a reopened file, closing), so no write ever lands on a closed or
reused descriptor.

The file is opened with ``O_APPEND`` so that the workers of one host can share
it: each write is whole lines, and Linux appends a regular file's write as one
piece. Into a pipe only writes up to ``PIPE_BUF`` are atomic, so there batches
go in pieces of whole lines no larger than that. ``reopen`` (SIGUSR1, after
logrotate moved the file) opens the path again; ``-`` is standard output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import select
import stat
import threading
from collections import deque

from proxy.config.model import AccessLog
from proxy.telemetry.access_log import AccessLogBuffer, Entry

log = logging.getLogger("veer")

FLUSH_EVERY = 0.2  # seconds between batches
MAX_QUEUED = 8  # batches waiting for the thread before new ones are dropped
CLOSE_WAIT = 2.0  # seconds a stop waits for the thread's last writes
SLICE = 128  # lines formatted at a time on the loop (about 0.5 ms)


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
    """Writes one ``AccessLogBuffer`` to the configured file until closed."""

    def __init__(self, cfg: AccessLog, buffer: AccessLogBuffer) -> None:
        self.cfg = cfg
        self.buffer = buffer
        fd = open_log(cfg.path)
        self.written = 0  # lines (counted by the thread)
        self.failed = 0  # lines lost to write errors
        self.dropped = 0  # lines dropped: the thread was too far behind
        self.reopened = 0
        # Batches handed over (by the loop) and written (by the thread): each counter has
        # one writer, so their difference is exact without a lock.
        self._handed = self._done = 0
        # (kind, -, format, fd, data, lines): "bytes" to write, "switch" to fd, "close"
        self._jobs: queue.SimpleQueue[tuple[str, list[Entry], str, int, bytes, int]] = \
            queue.SimpleQueue()
        self._rendering: deque[tuple[list[Entry], str, int, list[bytes]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._work, args=(fd,), daemon=True,
                                        name="veer-access-log")
        self._thread.start()
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush every ``FLUSH_EVERY`` seconds from now on."""
        self._loop = loop
        self._task = loop.create_task(self._run(), name="veer-access-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.flush()

    def flush(self) -> None:
        """Hand what is waiting to the thread (or drop it, counted, if the thread is far
        behind)."""
        batch = self.buffer.take()
        if not batch:
            return
        if self._handed - self._done >= MAX_QUEUED:
            self.dropped += len(batch)
            return
        self._handed += 1
        self._rendering.append((batch, self.buffer.format, 0, []))
        if len(self._rendering) == 1 and self._loop is not None:
            self._loop.call_soon(self._render_slice)

    def _render_slice(self) -> None:
        """Format ``SLICE`` lines of the oldest batch, then yield to the loop: formatting
        on the loop in short slices costs the requests between them microseconds, where a
        thread holding the GIL for a whole batch stalled them for milliseconds."""
        if not self._rendering:
            return
        batch, fmt, start, parts = self._rendering[0]
        end = start + SLICE
        parts.append(self.buffer.render(batch[start:end], fmt))
        if end < len(batch):
            self._rendering[0] = (batch, fmt, end, parts)
        else:
            self._rendering.popleft()
            self._jobs.put(("bytes", [], fmt, -1, b"".join(parts), len(batch)))
        if self._rendering and self._loop is not None:
            self._loop.call_soon(self._render_slice)

    def _render_all(self) -> None:
        """Finish every batch being formatted, now (before a reopen or a close)."""
        while self._rendering:
            batch, fmt, start, parts = self._rendering.popleft()
            parts.append(self.buffer.render(batch[start:], fmt))
            self._jobs.put(("bytes", [], fmt, -1, b"".join(parts), len(batch)))

    def reopen(self, cfg: AccessLog | None = None) -> None:
        """Open the path (or ``cfg``'s, after a reload) again; raises ``AccessLogError`` and
        keeps writing where it did when it cannot. Lines handed over before this go to the
        old file."""
        cfg = cfg or self.cfg
        fd = open_log(cfg.path)
        self._render_all()  # what was handed over goes to the old file
        self.cfg = cfg
        self.buffer.format = cfg.format
        self.reopened += 1
        self._jobs.put(("switch", [], "", fd, b"", 0))

    def close(self) -> None:
        """Hand over the last entries, close the file; waits up to ``CLOSE_WAIT`` for the
        thread (a stalled consumer cannot hold the process)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush()
        self._loop = None
        self._render_all()
        self._jobs.put(("close", [], "", -1, b"", 0))
        self._thread.join(CLOSE_WAIT)

    # -- the thread ------------------------------------------------------------------
    def _work(self, fd: int) -> None:
        while True:
            kind, _, _, new_fd, data, lines = self._jobs.get()
            if kind == "bytes":
                self._write(fd, data, lines)
                self._done += 1
            elif kind == "switch":
                os.close(fd)
                fd = new_fd
            else:
                os.close(fd)
                return

    def _write(self, fd: int, data: bytes, lines: int) -> None:
        try:
            _write_all(fd, data, piped=not stat.S_ISREG(os.fstat(fd).st_mode))
            self.written += lines
        except OSError as exc:
            self.failed += lines
            log.error("access log %s: write failed (%s); %d lines lost", self.cfg.path,
                      exc.strerror, lines)


def _write_all(fd: int, data: bytes, piped: bool) -> None:
    """All of ``data``; into a pipe in pieces of whole lines of at most PIPE_BUF bytes, so
    that the lines of several writers never interleave."""
    if not piped:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return
    start = 0
    while start < len(data):
        end = min(len(data), start + select.PIPE_BUF)
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else end  # a line longer than PIPE_BUF goes whole
            if cut < start:
                end = data.find(b"\n", start) + 1 or len(data)
        piece = memoryview(data)[start:end]
        while piece:
            piece = piece[os.write(fd, piece):]
        start = end

