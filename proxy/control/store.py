"""Where rollout state lives: the ``StateStore`` seam and its single-process stores.

A store saves with compare-and-set on a version: ``save(state, version)``
succeeds only if what is stored is still at ``version`` and returns the new
one, so a second writer can never silently overwrite the first
(``VersionConflict``). ``watch`` pushes changes written by someone else. Saving
is async and the file store writes in a worker thread: no fsync blocks a tick.

``FileStore`` writes the whole state each time: to a temporary file in the same
directory, fsync'd, renamed over the old one, and the directory fsync'd, so a
crash leaves either the old state or the new one, never half of either. A file
that cannot be read is moved aside (never overwritten) and reported. It holds
an exclusive lock for as long as the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from proxy.control.state import RolloutState, StateError
from proxy.timing.clock import Clock, SystemClock

log = logging.getLogger("veer.state")

OnChange = Callable[[RolloutState, int], None]


class VersionConflict(StateError):
    """The stored state moved on since this process read it: another writer saved."""


class StateStore(Protocol):
    """Rollout state with a version (0: nothing saved yet). ``shared``: other replicas
    read and write it too (a decision applies only once it is saved there)."""

    shared: bool

    async def load(self) -> tuple[RolloutState | None, int]:
        """The saved state (None if there is none) and its version."""
        ...

    async def save(self, state: RolloutState, version: int) -> int:
        """Store ``state`` if the stored version is still ``version``; the new version.
        Raises ``VersionConflict``, or ``OSError`` when it cannot be written."""
        ...

    def watch(self, on_change: OnChange) -> None:
        """Call ``on_change(state, version)`` when another writer saves."""
        ...

    async def close(self) -> None:
        """Release the store (its lock, its connection)."""
        ...


def _document(state: RolloutState, version: int, max_events: int) -> dict[str, Any]:
    """What is written: the state with its newest ``max_events`` events, and the version."""
    doc = state.to_dict()
    doc["events"] = doc["events"][-max_events:]
    doc["version"] = version
    return doc


class MemoryStore:
    """State kept in memory only (no ``state.path``); stores shared by several runners
    (tests, simulations) see each other's saves through ``watch``."""

    def __init__(self, max_events: int = 500) -> None:
        self.max_events = max_events
        self.shared = False
        self.saved: dict[str, Any] | None = None
        self.version = 0
        self._watchers: list[OnChange] = []

    def read(self) -> RolloutState | None:
        return None if self.saved is None else RolloutState.from_dict(self.saved)

    def write(self, state: RolloutState, version: int) -> int:
        if version != self.version:
            raise VersionConflict(f"state is at version {self.version}, not {version}")
        doc = _document(state, version + 1, self.max_events)
        self.saved = json.loads(json.dumps(doc, default=str))  # a copy, as a file would be
        self.version = version + 1
        return self.version

    async def load(self) -> tuple[RolloutState | None, int]:
        return self.read(), self.version

    async def save(self, state: RolloutState, version: int) -> int:
        new = self.write(state, version)
        saved = self.saved or {}
        loop = asyncio.get_running_loop()
        for on_change in list(self._watchers):
            # Soon, not now: the saver learns its new version before any watcher hears.
            loop.call_soon(on_change, RolloutState.from_dict(saved), new)
        return new

    def watch(self, on_change: OnChange) -> None:
        self._watchers.append(on_change)

    async def close(self) -> None:
        self._watchers.clear()


class FileStore:
    """One JSON file, atomically replaced on every save, locked for one writer."""

    def __init__(self, path: str | Path, max_events: int = 500,
                 clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.shared = False
        self.clock = clock or SystemClock()
        self.version = 0  # of the file as last read or written
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the single-writer lock, or raise StateError naming the problem."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(f"{self.path} is in use by another veer process") from None
        self._lock_fd = fd

    # -- blocking primitives (the async methods run them in a worker thread) -------
    def read(self) -> RolloutState | None:
        """The saved state, None if there is none; a bad file is moved aside first."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.version = 0
            return None
        try:
            doc = json.loads(raw)
            state = RolloutState.from_dict(doc)
            version = int(doc.get("version", 1))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            kept = self.keep_aside()
            raise StateError(f"cannot read state file {self.path}: {exc}", kept) from None
        self.version = version
        return state

    def write(self, state: RolloutState, version: int) -> int:
        """Write the whole state atomically if the file is still at ``version``."""
        return self._write(_document(state, version + 1, self.max_events), version)

    def _write(self, doc: dict[str, Any], version: int) -> int:
        on_disk = self._version_on_disk()
        if on_disk != version:
            raise VersionConflict(f"{self.path} is at version {on_disk}, not {version}")
        data = json.dumps(doc, indent=1, default=str).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.version = version + 1  # the file is this version from here, whatever follows
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:  # some filesystems cannot fsync a directory; the file's data
            # was fsync'd and renamed into place, so this version is what is on disk.
            log.warning("state saved, but its directory could not be fsync'd: %s", exc)
        return self.version

    def _version_on_disk(self) -> int:
        try:
            return int(json.loads(self.path.read_bytes()).get("version", 1))
        except FileNotFoundError:
            return 0
        except (ValueError, TypeError, AttributeError):
            return -1  # unreadable: never overwritten by a save

    def keep_aside(self) -> str:
        """Move the file aside under a new name (never over an earlier copy); the name."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock.wall()))
        for n in range(1000):
            target = Path(f"{self.path}.corrupt-{stamp}" + (f"-{n}" if n else ""))
            if not target.exists():
                os.rename(self.path, target)
                return str(target)
        raise StateError(f"too many kept-aside copies of {self.path}")

    # -- StateStore ----------------------------------------------------------------
    async def load(self) -> tuple[RolloutState | None, int]:
        state = await asyncio.to_thread(self.read)
        return state, self.version

    async def save(self, state: RolloutState, version: int) -> int:
        # The document is taken here, on the loop: the state may change while the
        # thread writes, and what is written is this moment's.
        doc = _document(state, version + 1, self.max_events)
        return await asyncio.to_thread(self._write, doc, version)

    def watch(self, on_change: OnChange) -> None:
        """No other writer can hold the lock: nothing to push."""

    async def close(self) -> None:
        self.unlock()

    def unlock(self) -> None:
        """Release the single-writer lock."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
