"""The access log's buffer and its two formats (pure: no file, no socket)."""

from __future__ import annotations

import json
import time

from proxy.telemetry.access_log import MAX_PENDING, AccessLogBuffer, Entry


def entry(**kw: object) -> Entry:
    base: dict[str, object] = {
        "arrival": time.monotonic(), "method": b"GET", "target": b"/p?q=1", "version": "1.1",
        "status": 200, "variant": "new", "dur": 1500, "sent": 12, "upstream": "http://u:1",
        "client": "10.0.0.1", "headers": [(b"User-Agent", b"ua")], "error": None}
    base.update(kw)
    return tuple(base.values())  # type: ignore[return-value]


def test_a_full_buffer_drops_and_counts_instead_of_growing() -> None:
    buf = AccessLogBuffer()
    for _ in range(MAX_PENDING + 5):
        buf.add(entry())
    assert len(buf.pending) == MAX_PENDING and buf.dropped == 5
    assert len(buf.take()) == MAX_PENDING and buf.pending == [] and buf.taken == MAX_PENDING


def test_json_lines_carry_every_field_and_survive_odd_bytes() -> None:
    buf = AccessLogBuffer("json")
    raw = buf.render([entry(target=b'/"\xff\x01', headers=[(b"user-agent", b"\xe9")]),
                      entry(variant=None, upstream=None, status=0, error="client")])
    first, second = (json.loads(line) for line in raw.decode().splitlines())
    assert first["path"] == '/"\xff\x01' and first["user_agent"] == "\xe9"
    assert first["duration_ms"] == 1.5 and first["bytes_sent"] == 12
    assert first["protocol"] == "HTTP/1.1" and first["referer"] is None
    assert (second["variant"], second["upstream"], second["status"], second["error"]) == (
        None, None, 0, "client")


def test_combined_escapes_as_nginx_does() -> None:
    buf = AccessLogBuffer("combined")
    line = buf.render([entry(target=b"/a\x01b", headers=[(b"Referer", b'r"\\')])]).decode()
    assert '"GET /a\\x01b HTTP/1.1" 200 12 "r\\x22\\x5C" "-"' in line
    assert line.startswith("10.0.0.1 - - [") and line.endswith("\n")
