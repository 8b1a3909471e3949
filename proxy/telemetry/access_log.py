"""The access log's lines: taken on the hot path as tuples, formatted later in batches.

The data plane appends one ``Entry`` per request to ``AccessLogBuffer.pending``:
no formatting, no clock read beyond the one the latency already took, no I/O.
A writer (``proxy.runtime.access_writer``) takes the batch a few times a second
and, in its own thread, formats it here and appends it to the file. Between two takes at
most ``MAX_PENDING`` entries wait; beyond that they are dropped and counted, so
a stalled disk costs lines, never memory or latency.

Formats: ``json``, one object per line with ``time`` (the request's arrival,
UTC, RFC 3339 with milliseconds), ``method``, ``path`` (the request target as
sent, query included, as nginx's ``$request_uri``), ``protocol``, ``status``
(0 when no response began: the client left first), ``variant`` (null for a
request refused before routing), ``duration_ms``, ``bytes_sent`` (response body
bytes, as Envoy's ``BYTES_SENT``), ``upstream`` (the endpoint, or null),
``client``, ``user_agent``, ``referer`` and ``error`` (the failure's kind, e.g.
``connect`` or ``timeout``, else null); and ``combined``, nginx's and Apache's
``combined`` format, byte for byte what log tools parse.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

MAX_PENDING = 65_536

# (arrival monotonic s, method, target, version, status, variant | None, duration us,
#  body bytes sent, upstream label | None, client ip, headers, error kind | None)
Entry = tuple[float, bytes, bytes, str, int, str | None, int, int, str | None, str,
              list[tuple[bytes, bytes]], str | None]


class AccessLogBuffer:
    """Entries waiting for the writer; ``dropped`` counts the ones that found it full."""

    __slots__ = ("dropped", "format", "pending", "taken")

    def __init__(self, fmt: str = "json") -> None:
        self.format = fmt
        self.pending: list[Entry] = []
        self.dropped = 0
        self.taken = 0  # entries handed to the writer

    def add(self, entry: Entry) -> None:
        """Keep one entry (the hot path: an append, or a count when full)."""
        if len(self.pending) < MAX_PENDING:
            self.pending.append(entry)
        else:
            self.dropped += 1

    def take(self) -> list[Entry]:
        """Everything waiting, at once."""
        batch, self.pending = self.pending, []
        self.taken += len(batch)
        return batch

    def render(self, batch: list[Entry], fmt: str | None = None) -> bytes:
        """The lines of ``batch`` in ``fmt`` (default: this log's format)."""
        offset = time.time() - time.monotonic()  # arrival times are monotonic
        stamps = _Stamps(offset, fmt or self.format)
        line = _json_line if (fmt or self.format) == "json" else _combined_line
        return "".join([line(e, stamps) for e in batch]).encode("utf-8", "surrogateescape")


class _Stamps:
    """Wall-clock stamps of arrival times, formatted once per second (a batch spans few)."""

    __slots__ = ("_cache", "_combined", "offset")

    def __init__(self, offset: float, fmt: str) -> None:
        self.offset = offset
        self._combined = fmt == "combined"
        self._cache: dict[int, str] = {}

    def of(self, arrival: float) -> tuple[str, int]:
        """(the stamp of the second, the milliseconds within it)."""
        wall = arrival + self.offset
        second = int(wall)
        text = self._cache.get(second)
        if text is None:
            when = datetime.fromtimestamp(second, UTC)
            text = self._cache[second] = when.strftime(
                "%d/%b/%Y:%H:%M:%S +0000" if self._combined else "%Y-%m-%dT%H:%M:%S")
        return text, int((wall - second) * 1000)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if len(k) == len(name) and k.lower() == name:
            return v.decode("latin-1")
    return None


_escape_json = json.encoder.encode_basestring_ascii


def _q(value: str | None) -> str:
    """A JSON string (escaped in C), or null."""
    return "null" if value is None else str(_escape_json(value))


def _json_line(e: Entry, stamps: _Stamps) -> str:
    arrival, method, target, version, status, variant, dur_us, sent, upstream, client, \
        headers, error = e
    second, ms = stamps.of(arrival)
    # Field by field rather than json.dumps of a dict: a third of the time per line.
    return (f'{{"time":"{second}.{ms:03d}Z","method":{_q(method.decode("latin-1"))},'
            f'"path":{_q(target.decode("latin-1"))},"protocol":"HTTP/{version}",'
            f'"status":{status},"variant":{_q(variant)},"duration_ms":{dur_us / 1000:.3f},'
            f'"bytes_sent":{sent},"upstream":{_q(upstream)},"client":{_q(client)},'
            f'"user_agent":{_q(_header(headers, b"user-agent"))},'
            f'"referer":{_q(_header(headers, b"referer"))},"error":{_q(error)}}}\n')


def _escape(value: str | None) -> str:
    """As nginx escapes a variable in a log line: quote, backslash, controls and every byte
    above ASCII as \\xHH (values are bytes decoded as latin-1: one char per byte)."""
    if value is None or value == "":
        return "-"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return "".join(c if " " <= c < "\x7f" and c not in '"\\' else f"\\x{ord(c):02X}"
                   for c in value)


def _combined_line(e: Entry, stamps: _Stamps) -> str:
    arrival, method, target, version, status, _variant, _dur, sent, _up, client, \
        headers, _error = e
    stamp, _ = stamps.of(arrival)
    request = _escape(f"{method.decode('latin-1')} {target.decode('latin-1')} HTTP/{version}")
    return (f'{client or "-"} - - [{stamp}] "{request}" {status} {sent} '
            f'"{_escape(_header(headers, b"referer"))}" '
            f'"{_escape(_header(headers, b"user-agent"))}"\n')
