"""The access log on real sockets: one line per request (JSON or combined), veer's own errors
included, switched by a reload, reopened on SIGUSR1 by a real ``veer run`` process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from admin.demo.backend import Backend
from proxy.config.load import from_dict
from proxy.runtime.access_writer import AccessLogError
from proxy.runtime.reload import ReloadError, apply
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.rawhttp import exchange
from tests.functional.test_process import VEER, wait_listening, write_config
from tests.ports import free_port

# nginx's "combined": addr - user [time] "request" status bytes "referer" "agent"
COMBINED = re.compile(r'^(\S+) - - \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "([^"]*)" '
                      r'(\d{3}) (\d+) "([^"]*)" "([^"]*)"$')


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_one_json_object_per_request_with_the_fixed_fields(
        start_veer: StartVeer, backends: dict[str, Backend], tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = base_config(backends, access_log={"path": str(log), "format": "json"},
                      weights={"new": 0})
    server = await start_veer(cfg)
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            headers = {"X-User-Id": f"u{i}", "User-Agent": "veer-test/1", "Referer": "http://r/"}
            async with s.get(f"{base}/hello?i={i}", headers=headers) as r:
                assert r.status == 200
                body = await r.read()
        async with s.post(f"{base}/echo", data=b"x" * 1000, headers={"X-User-Id": "p"}) as r:
            assert r.status == 200
    reply, _ = await exchange(server.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    await until(lambda: len(lines(log)) >= 7, timeout=10, what="7 access-log lines")
    entries = [json.loads(line) for line in lines(log)]
    required = {"time", "method", "path", "status", "variant", "duration_ms", "bytes_sent",
                "upstream"}
    assert all(required <= e.keys() for e in entries), entries
    gets = [e for e in entries if e["method"] == "GET" and e["status"] == 200]
    assert [e["path"] for e in gets] == [f"/hello?i={i}" for i in range(5)]
    for e in gets:
        assert e["variant"] == "original"
        assert e["upstream"] in (backends["original-a"].url, backends["original-b"].url)
        assert e["bytes_sent"] == len(body) and e["duration_ms"] > 0
        assert e["user_agent"] == "veer-test/1" and e["referer"] == "http://r/"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"])
        assert e["client"] == "127.0.0.1" and e["error"] is None
    post = next(e for e in entries if e["method"] == "POST")
    assert post["status"] == 200 and post["path"] == "/echo"
    refused = next(e for e in entries if e["status"] == 400)
    assert refused["variant"] is None and refused["upstream"] is None
    assert refused["error"] == "client"

    # veer's own 502, with the endpoint it tried
    cfg["upstreams"]["original"]["endpoints"] = [dead]
    apply(server.rt, from_dict(cfg, "<test>"), ["upstreams"])
    async with aiohttp.ClientSession() as s, s.get(f"{base}/x") as r:
        assert r.status == 502
        text = await r.read()
    await until(lambda: len(lines(log)) >= 8, timeout=10, what="the 502's line")
    e = json.loads(lines(log)[-1])
    assert (e["status"], e["error"], e["upstream"], e["bytes_sent"]) == (
        502, "connect", dead, len(text))


async def test_combined_format_parses_as_nginxs(
        start_veer: StartVeer, backends: dict[str, Backend], tmp_path: Path) -> None:
    log = tmp_path / "combined.log"
    server = await start_veer(base_config(
        backends, access_log={"path": str(log), "format": "combined"}, weights={"new": 0}))
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/a/b?q=1", headers={"User-Agent": 'quote"back\\slash'}) as r:
            body = await r.read()
        async with s.head(f"{base}/h", headers={"User-Agent": "curl/8"}) as r:
            assert r.status == 200
    await until(lambda: len(lines(log)) >= 2, timeout=10, what="2 combined lines")
    first, second = (COMBINED.match(line) for line in lines(log))
    assert first is not None and second is not None, lines(log)
    assert first.group(1) == "127.0.0.1" and first.group(3) == "GET /a/b?q=1 HTTP/1.1"
    assert (first.group(4), first.group(5)) == ("200", str(len(body)))
    assert first.group(6) == "-" and first.group(7) == "quote\\x22back\\x5Cslash"
    assert second.group(3) == "HEAD /h HTTP/1.1" and second.group(5) == "0"


async def test_a_reload_turns_it_on_changes_it_and_turns_it_off(
        start_veer: StartVeer, backends: dict[str, Backend], tmp_path: Path) -> None:
    cfg = base_config(backends, weights={"new": 0})
    server = await start_veer(cfg)
    base = f"http://127.0.0.1:{server.port}"

    async def get(n: int) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(n):
                async with s.get(base) as r:
                    await r.read()

    await get(3)
    assert server.rt.access_log is None  # off by default: nothing is kept
    one, two = tmp_path / "one.log", tmp_path / "two.log"
    apply(server.rt, from_dict({**cfg, "access_log": {"path": str(one)}}, "<t>"),
          ["access_log"])
    await get(2)
    await until(lambda: len(lines(one)) == 2, timeout=10, what="2 lines in one.log")
    apply(server.rt, from_dict({**cfg, "access_log": {"path": str(two), "format": "combined"}},
                               "<t>"), ["access_log"])
    await get(1)
    await until(lambda: len(lines(two)) == 1, timeout=10, what="1 line in two.log")
    assert COMBINED.match(lines(two)[0]) and len(lines(one)) == 2
    with pytest.raises(ReloadError, match=r"access_log\.path"):  # refused, and nothing changed
        apply(server.rt, from_dict({**cfg, "access_log": {"path": str(tmp_path / "no/x.log")}},
                                   "<t>"), ["access_log"])
    await get(1)
    await until(lambda: len(lines(two)) == 2, timeout=10, what="still logging to two.log")
    apply(server.rt, from_dict(cfg, "<t>"), ["access_log"])
    await get(2)
    assert server.rt.access_log is None and len(lines(two)) == 2


async def test_an_unwritable_path_refuses_to_start(
        start_veer: StartVeer, backends: dict[str, Backend], tmp_path: Path) -> None:
    with pytest.raises(AccessLogError, match=r"access_log.path .*no-such-dir.*cannot append"):
        await start_veer(base_config(
            backends, access_log={"path": str(tmp_path / "no-such-dir" / "a.log")}))


def test_bad_access_log_config_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  original: {endpoints: [http://127.0.0.1:1]}\n"
                    "  new: {endpoints: [http://127.0.0.1:2]}\n"
                    "access_log: {path: /tmp/x.log, format: xml}\n")
    r = subprocess.run([*VEER, "check", "--config", str(path)], capture_output=True, timeout=30)
    assert r.returncode == 2
    assert "access_log.format" in r.stderr.decode() and "json or combined" in r.stderr.decode()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigusr1_reopens_the_file_logrotate_moved(
        backends: dict[str, Backend], tmp_path: Path, workers: int,
        veer_process: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "access.log"
    cfg_path = write_config(tmp_path, backends, workers=workers,
                            access_log={"path": str(log)})
    cfg: dict[str, Any] = yaml.safe_load(cfg_path.read_text())
    port = int(cfg["listen"].rsplit(":", 1)[1])
    proc = subprocess.Popen([*VEER, "run", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    veer_process.append(proc)
    await wait_listening(port, proc)

    async def get(n: int, tag: str) -> None:
        async with aiohttp.ClientSession() as s:
            for i in range(n):
                async with s.get(f"http://127.0.0.1:{port}/{tag}/{i}") as r:
                    assert r.status == 200

    await get(4, "before")
    await until(lambda: len(lines(log)) == 4, timeout=10, what="4 lines before the rotation")
    os.rename(log, tmp_path / "access.log.1")
    proc.send_signal(signal.SIGUSR1)
    await until(log.exists, timeout=10, what="the log to be opened again")
    await get(4, "after")
    await until(lambda: len(lines(log)) == 4, timeout=10, what="4 lines after the rotation")
    assert all("/after/" in line for line in lines(log))
    assert all("/before/" in line for line in lines(tmp_path / "access.log.1"))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
