"""A real redis-server on a free 127.0.0.1 port, started by the test that needs it.

Only the process started here is ever stopped, paused or restarted (by PID).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.deadline import until
from tests.ports import accepts, free_port
from tests.sysdeps import require_binary


class RedisServer:
    """One redis-server without persistence: a restart starts it empty."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_binary("redis-server", "apt-get install redis-server")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Start (again, empty) on the same port and wait until it accepts."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await until(lambda: accepts(self.port), timeout=10, interval=0.02,
                    what="redis-server to listen")

    def stop(self) -> None:
        """Stop it (its data is gone: nothing is persisted)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A running redis-server for one test."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.resume()  # a paused one cannot be terminated cleanly
        server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """The URL of a running redis-server for one test."""
    return redis_server.url
