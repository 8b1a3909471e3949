"""Processes the load and slow-client tests start: demo backends in their own process, free
ports, the fd limit, and ending what they started (by PID, never by name)."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.deadline import until_sync
from tests.ports import free_port as free_port  # the reliability tests take it from here

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# Demo backends on the given NAME:PORT pairs in one uvloop process, with a listen backlog
# large enough that veer's burst of upstream connects is never dropped.
BACKEND_SCRIPT = """
import asyncio, signal, sys
import uvloop
from aiohttp import web
from admin.demo.backend import make_app

async def main(ports):
    runners = []
    for name, port in ports:
        runner = web.AppRunner(make_app(name), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()

uvloop.run(main([(a.split(":")[0], int(a.split(":")[1])) for a in sys.argv[1:]]))
"""


def raise_fd_limit(need: int) -> None:
    """veer and the attack tools inherit this process's limit: take ``need`` if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need, "too few file descriptors"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """End a process this test started (by its PID): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    """Until ``port`` accepts, failing if ``proc`` exits or ``timeout`` passes."""

    def listening() -> bool:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            socket.create_connection((HOST, port), timeout=1).close()
        except OSError:
            return False
        return True

    until_sync(listening, timeout, interval=0.05, what=f"{what} to listen on {port}")


@dataclass(frozen=True)
class Backends:
    """The ports of the two demo backends."""

    original: int
    new: int


def run_backends() -> Iterator[Backends]:
    """The demo backends (admin/backend.py), each in a process of its own (so one kept busy
    does not slow the other); a fixture's body."""
    ports = Backends(free_port(), free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port in (("original", ports.original), ("new", ports.new)):
            procs.append(subprocess.Popen([sys.executable, "-c", BACKEND_SCRIPT,
                                           f"{name}:{port}"],
                                          cwd=ROOT, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            wait_port(port, procs[-1], "a backend process")
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)
