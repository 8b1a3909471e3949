"""Webhooks: event notifications and confirm gates, sent as JSON POSTs.

The controller stays pure: it hands plain dicts to ``Notifier.notify`` and reads
``ConfirmGate.result`` each tick. Sockets live here and neither call awaits, so
a slow receiver can delay a message but never a routing decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence

import aiohttp

from proxy.config.hooks import Hook

log = logging.getLogger("veer.webhooks")

HEADERS = {"Content-Type": "application/json", "User-Agent": "veer"}
MAX_BACKOFF = 10.0  # seconds; keeps a long retry series from stalling the queue for minutes


def _encode(what: str, payload: Mapping[str, object]) -> bytes | None:
    """The JSON body for ``payload``, or None (logged) if it cannot be encoded."""
    try:
        # dict(): json encodes only real dicts; another Mapping would fall to default=str.
        return json.dumps(dict(payload), default=str).encode()
    except (TypeError, ValueError) as exc:  # odd key types, cycles: bad data, never a crash
        log.warning("webhook %s not serialisable: %s", what, exc)
        return None


async def _post(session: aiohttp.ClientSession, hook: Hook, body: bytes) -> tuple[int, str]:
    """One attempt: (status, reason), status 0 when no answer came (connect error, timeout)."""
    try:
        async with session.post(
            hook.url,
            data=body,
            headers=HEADERS,
            # A redirect would turn the POST into a GET; treat it as a refusal instead.
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=hook.timeout),
        ) as resp:
            return resp.status, f"HTTP {resp.status}"
    except Exception as exc:  # connect errors, timeouts, and any surprise: a failed attempt
        return 0, repr(exc)


class Notifier:
    """Sends event notifications as JSON POSTs in the background; never blocks the caller.

    One worker takes events in enqueue order and sends each to its hooks
    concurrently, waiting for all before the next, so order holds per hook.
    ``sent`` and ``failed`` count deliveries (one per event and hook);
    ``dropped`` counts events pushed out of a full queue, not serialisable, or
    left undelivered when ``stop`` ran out of time.
    """

    def __init__(self, hooks: Sequence[Hook], max_queue: int = 1000, backoff: float = 0.5) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.hooks = tuple(hooks)
        self.backoff = backoff
        self.sent = self.failed = self.dropped = 0
        # Precomputed so notify() rejects unwanted kinds with one set lookup.
        self._catch_all = any(not h.events for h in self.hooks)
        self._kinds = frozenset[str]().union(*(h.events for h in self.hooks))
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the HTTP session and start the worker; events queued before now go out."""
        if self._task is not None or self._closing:
            raise RuntimeError("notifier already started or stopped")
        self._session = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(
            self._run(self._session), name="veer-webhooks"
        )

    def notify(self, event: Mapping[str, object]) -> None:
        """Queue ``event`` for hooks wanting ``event['kind']``; a full queue drops its oldest."""
        kind = str(event.get("kind", ""))
        if not self._catch_all and kind not in self._kinds:
            return
        # Serialised now: the caller may reuse or mutate its dict after this call.
        body = None if self._closing else _encode(f"event {kind!r}", event)
        if body is None:
            self.dropped += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque discards the oldest on append
        self._queue.append((kind, body))
        self._wake.set()

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Deliver what is queued within ``flush_timeout``, then cancel and close the session."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        try:
            if task is not None:
                done, _ = await asyncio.wait({task}, timeout=flush_timeout)
                if not done:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._queue:
                log.warning("webhooks: %d queued event(s) not delivered at stop", len(self._queue))
                self.dropped += len(self._queue)
                self._queue.clear()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _run(self, session: aiohttp.ClientSession) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            kind, body = self._queue.popleft()
            try:
                wanted = (h for h in self.hooks if h.wants(kind))
                await asyncio.gather(*(self._deliver(session, h, body) for h in wanted))
            except asyncio.CancelledError:
                self.dropped += 1  # cut off by stop(); some hooks may have had it
                raise
            except Exception:
                # A bug must not end notifications for the rest of the process.
                log.exception("webhook worker error; continuing")

    async def _deliver(self, session: aiohttp.ClientSession, hook: Hook, body: bytes) -> None:
        attempts, reason = 0, ""
        while attempts <= hook.retries:
            if attempts:
                await asyncio.sleep(min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF))
            status, reason = await _post(session, hook, body)
            attempts += 1
            if 200 <= status < 300:
                self.sent += 1
                return
            if 0 < status < 500:
                break  # the receiver refused this body; sending it again will not help
        self.failed += 1
        log.warning("webhook %s: giving up after %d attempt(s): %s", hook.url, attempts, reason)


class ConfirmGate:
    """Runs 'confirm' hooks before an advance: all must answer 2xx.

    ``request`` starts the check in the background and ``result`` reads it, so
    a controller tick never awaits a receiver. Each hook gets one attempt
    within its timeout (``Hook.retries`` is for notifications): on False the
    controller simply asks again on a later tick.
    """

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = tuple(hooks)
        self._results: dict[str, bool] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session."""
        if self._session is not None:
            raise RuntimeError("confirm gate already started")
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Cancel pending checks (their keys read None) and close the session."""
        pending = list(self._pending.values())
        self._pending.clear()
        for task in pending:
            task.cancel()
        try:
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    def request(self, key: str, payload: Mapping[str, object]) -> None:
        """Start confirming ``key`` unless it is pending or already confirmed."""
        if self._session is None:
            raise RuntimeError("confirm gate not started")
        if key in self._pending or self._results.get(key):
            return
        self._results.pop(key, None)
        body = _encode(f"confirm {key!r}", payload)
        if body is None:
            self._results[key] = False
            return
        self._pending[key] = asyncio.get_running_loop().create_task(
            self._confirm(self._session, key, body), name=f"veer-confirm-{key}"
        )

    def result(self, key: str) -> bool | None:
        """None while pending or never requested; True if every hook answered 2xx, else False."""
        if key in self._pending:
            return None
        return self._results.get(key)

    async def _confirm(self, session: aiohttp.ClientSession, key: str, body: bytes) -> None:
        try:
            answers = await asyncio.gather(*(_post(session, h, body) for h in self.hooks))
            refusals = [
                f"{hook.url}: {reason}"
                for hook, (status, reason) in zip(self.hooks, answers, strict=True)
                if not 200 <= status < 300
            ]
            if refusals:
                log.warning("confirm %r refused: %s", key, "; ".join(refusals))
            self._results[key] = not refusals
        finally:
            self._pending.pop(key, None)
