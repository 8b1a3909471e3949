"""TLS both ways on real sockets, with certificates made here (trustme) and real clients
(curl, ``openssl s_client``): the HTTPS listener (versions, ALPN, x-forwarded-proto,
certificates renewed on reload without dropping a connection) and https:// upstreams
(verification on by default, SNI, a client certificate, pooled connections, probes)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from admin.demo.backend import Backend, start_backend
from proxy.config.load import from_dict
from proxy.runtime.reload import ReloadError, apply
from proxy.wire.tls import TlsError
from tests.deadline import until
from tests.functional.conftest import StartVeer, base_config
from tests.functional.test_process import VEER, write_config
from tests.sysdeps import require_binary


@dataclass
class Pki:
    """A CA and the PEM files the tests hand to veer and its peers."""

    ca: trustme.CA
    dir: Path
    ca_file: Path
    cert: Path  # veer's listener: localhost and 127.0.0.1
    key: Path

    def issue(self, name: str, *hosts: str) -> tuple[Path, Path]:
        leaf = self.ca.issue_cert(*hosts)
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def server_context(self, *hosts: str, client_ca: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*hosts).configure_cert(ctx)
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    p = Pki(ca, tmp_path, ca_file, tmp_path / "x", tmp_path / "y")
    p.cert, p.key = p.issue("veer", "localhost", "127.0.0.1")
    return p


def tls_config(backends: dict[str, Backend], pki: Pki, **extra: Any) -> dict[str, Any]:
    return base_config(backends, tls={"cert": str(pki.cert), "key": str(pki.key), **extra},
                       weights={"new": 0})


async def test_https_listener_answers_curl_and_tells_the_backend_https(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki) -> None:
    curl = require_binary("curl", "apt-get install curl")
    server = await start_veer(tls_config(backends, pki))
    r = await asyncio.to_thread(  # veer runs on this loop: the client runs off it
        subprocess.run, [curl, "-sS", "--cacert", str(pki.ca_file), "-H", "X-User-Id: u1",
                         "-H", "X-Forwarded-Proto: http",  # a client's claim is replaced
                         f"https://localhost:{server.port}/tls?x=1"],
        capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    echoed = json.loads(r.stdout)
    assert echoed["path"] == "/tls?x=1"
    protos = [v for k, v in echoed["headers"] if k.lower() == "x-forwarded-proto"]
    assert protos == ["https"]
    # Plain HTTP to the TLS port is not served as HTTP.
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://127.0.0.1:{server.port}/") as resp:
                await resp.read()


def _get_then_close_notify(port: int, ctx: ssl.SSLContext) -> bytes:
    """One request over TLS, then a clean TLS close (close_notify) before the TCP close."""
    with (socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
          ctx.wrap_socket(raw, server_hostname="localhost") as tls):
        tls.sendall(b"GET /bye HTTP/1.1\r\nHost: localhost\r\nX-User-Id: u1\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += tls.recv(65536)
        head, _, body = got.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:  # the whole answer first: then the close is clean
            body += tls.recv(65536)
        tls.unwrap()
        return head.split(b"\r\n", 1)[0]


async def test_a_client_closing_tls_cleanly_is_no_error(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki) -> None:
    """close_notify reaches the protocol as eof_received (uvloop's TLS layer calls it):
    the client protocol has no asyncio base class, so it must define it itself."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    server = await start_veer(tls_config(backends, pki))
    for _ in range(3):
        status = await asyncio.to_thread(_get_then_close_notify, server.port,
                                         pki.client_context())
        assert status == b"HTTP/1.1 200 OK"
    await until(lambda: not server.rt.connections, timeout=10,
                what="the closed TLS connections to be gone")
    assert not errors, [c.get("message") for c in errors]


def s_client(port: int, *args: str) -> str:
    openssl = require_binary("openssl", "apt-get install openssl")
    r = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", *args],
                       input=b"", capture_output=True, timeout=30)
    return r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


async def test_versions_and_alpn_as_openssl_s_client_sees_them(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki) -> None:
    server = await start_veer(tls_config(backends, pki))
    port = server.port
    out = await asyncio.to_thread(s_client, port, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out, out  # h2 offered first, http/1.1 chosen
    assert "Protocol  : TLSv1.3" in out or "TLSv1.3" in out
    out = await asyncio.to_thread(s_client, port, "-tls1_2")
    assert "TLSv1.2" in out and "Cipher is (NONE)" not in out, out
    # (TLS 1.1 and older: this OpenSSL's client refuses them itself, so only the 1.3
    # minimum below is veer's doing.)
    strict = await start_veer(tls_config(backends, pki, min_version="1.3"))
    out = await asyncio.to_thread(s_client, strict.port, "-tls1_2")
    assert "Cipher is (NONE)" in out or "alert" in out, out


def peer_serial(port: int, ctx: ssl.SSLContext) -> int:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


async def test_a_renewed_certificate_applies_on_reload_and_open_connections_stay(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki) -> None:
    cfg = tls_config(backends, pki)
    server = await start_veer(cfg)
    ctx = pki.client_context()
    before = await asyncio.to_thread(peer_serial, server.port, ctx)
    url = f"https://localhost:{server.port}/"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=1)) as s:
        async with s.get(url) as r:
            assert r.status == 200
        pki.issue("veer", "localhost", "127.0.0.1")  # renewed in place: same paths
        apply(server.rt, from_dict(cfg, "<t>"), [])  # what SIGHUP does, same config
        async with s.get(url) as r:  # the same keep-alive connection, still served
            assert r.status == 200
        assert s.connector is not None
    after = await asyncio.to_thread(peer_serial, server.port, ctx)
    assert before != after and server.rt.certificates is not None
    assert server.rt.certificates.reloads == 1

    # A broken file refuses the reload, and the renewed certificate goes on being served.
    pki.key.write_text("not a key")
    with pytest.raises(ReloadError, match=r"tls\.cert .* not a PEM certificate and key"):
        apply(server.rt, from_dict(cfg, "<t>"), [])
    assert await asyncio.to_thread(peer_serial, server.port, ctx) == after


async def test_bad_certificate_files_are_refused_by_check_and_run(
        backends: dict[str, Backend], pki: Pki, tmp_path: Path) -> None:
    _, other_key = pki.issue("other", "localhost")
    missing = tmp_path / "missing.pem"
    cases = {
        "mismatch": ({"cert": str(pki.cert), "key": str(other_key)},
                     "the key does not match the certificate"),
        "missing": ({"cert": str(missing), "key": str(pki.key)}, "no such file"),
        "garbage": ({"cert": str(pki.ca_file.with_name("junk.pem")), "key": str(pki.key)},
                    "not a PEM certificate and key"),
    }
    pki.ca_file.with_name("junk.pem").write_text("junk\n")
    for name, (tls, needle) in cases.items():
        path = write_config(tmp_path, backends, tls=tls)
        for command in ("check", "run"):
            r = await asyncio.to_thread(subprocess.run, [*VEER, command, "--config", str(path)],
                                        capture_output=True, timeout=30)
            err = r.stderr.decode()
            assert r.returncode == 2, (name, command, err)
            assert "tls.cert" in err and needle in err and str(path) in err, (name, err)
    bad_ca = write_config(tmp_path, backends)
    cfg_text = bad_ca.read_text().replace(
        "new:\n", f"new:\n    tls: {{ca: {missing}}}\n", 1).replace(
        backends["new"].url, backends["new"].url.replace("http:", "https:"))
    bad_ca.write_text(cfg_text)
    r = await asyncio.to_thread(subprocess.run, [*VEER, "check", "--config", str(bad_ca)],
                                capture_output=True, timeout=30)
    assert r.returncode == 2 and "upstreams.new.tls.ca" in r.stderr.decode(), r.stderr


@pytest.fixture
async def tls_backend(pki: Pki) -> AsyncIterator[tuple[Backend, list[str | None]]]:
    """An HTTPS backend for localhost and 127.0.0.1 that records the SNI of each handshake."""
    ctx = pki.server_context("localhost", "127.0.0.1")
    names: list[str | None] = []
    ctx.sni_callback = lambda _obj, name, _ctx: names.append(name)
    backend = await start_backend("secure", tls=ctx)
    yield backend, names
    await backend.close()


def upstream_config(backends: dict[str, Backend], url: str, **tls: Any) -> dict[str, Any]:
    cfg = base_config(backends, weights={"new": 100})
    cfg["upstreams"]["new"] = {"endpoints": [url], **({"tls": tls} if tls else {})}
    return cfg


async def get(port: int, n: int = 1, path: str = "/") -> list[tuple[int, str]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"http://127.0.0.1:{port}{path}",
                             headers={"X-User-Id": f"u{i}"}) as r:
                out.append((r.status, await r.text()))
    return out


async def test_https_upstream_verified_against_the_ca_file_with_sni_and_pooled(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki,
        tls_backend: tuple[Backend, list[str | None]]) -> None:
    backend, names = tls_backend
    url = f"https://localhost:{backend.port}"
    server = await start_veer(upstream_config(backends, url, ca=str(pki.ca_file)))
    answers = await get(server.port, 10)
    assert [status for status, _ in answers] == [200] * 10
    assert all(json.loads(body)["backend"] == "secure" for _, body in answers)
    ep = next(ep for _, ep in server.rt.endpoints() if ep.label == url)
    assert ep.connects == 1 and names == ["localhost"]  # one handshake, SNI from the URL


async def test_verification_is_on_by_default_and_off_only_when_written_and_loudly(
        start_veer: StartVeer, backends: dict[str, Backend],
        tls_backend: tuple[Backend, list[str | None]], caplog: pytest.LogCaptureFixture) -> None:
    backend, _ = tls_backend
    url = f"https://127.0.0.1:{backend.port}"
    server = await start_veer(upstream_config(backends, url))  # system CAs: not ours
    [(status, body)] = await get(server.port)
    assert status == 502 and "TLS" in body and "CERTIFICATE_VERIFY_FAILED" in body, body
    with caplog.at_level(logging.WARNING, logger="veer"):
        lax = await start_veer(upstream_config(backends, url, verify=False))
    assert any("upstreams.new.tls.verify is false" in r.message for r in caplog.records)
    [(status, _)] = await get(lax.port)
    assert status == 200


async def test_a_certificate_for_another_name_is_refused(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki) -> None:
    wrong = await start_backend("wrong", tls=pki.server_context("elsewhere.test"))
    try:
        server = await start_veer(upstream_config(
            backends, f"https://localhost:{wrong.port}", ca=str(pki.ca_file)))
        [(status, body)] = await get(server.port)
        assert status == 502 and "CERTIFICATE_VERIFY_FAILED" in body, body
    finally:
        await wrong.close()


async def test_mutual_tls_with_a_client_certificate(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki) -> None:
    strict = await start_backend("mtls", tls=pki.server_context("localhost", client_ca=True))
    try:
        url = f"https://localhost:{strict.port}"
        without = await start_veer(upstream_config(backends, url, ca=str(pki.ca_file)))
        [(status, _)] = await get(without.port)
        assert status == 502
        cert, key = pki.issue("client", "veer-client")
        with_cert = await start_veer(upstream_config(backends, url, ca=str(pki.ca_file),
                                                     cert=str(cert), key=str(key)))
        assert [s for s, _ in await get(with_cert.port, 3)] == [200] * 3
    finally:
        await strict.close()


async def test_active_health_checks_probe_https_endpoints_verified(
        start_veer: StartVeer, backends: dict[str, Backend], pki: Pki,
        tls_backend: tuple[Backend, list[str | None]]) -> None:
    backend, _ = tls_backend
    fast = {"interval": "100ms", "timeout": "90ms", "healthy": 1, "unhealthy": 1}
    good = upstream_config(backends, f"https://localhost:{backend.port}", ca=str(pki.ca_file))
    server = await start_veer({**good, "health": {"active": fast}})
    checker = server.rt.health_checker
    assert checker is not None
    await until(lambda: checker.rounds >= 3, timeout=10, what="three rounds of probes")
    ep = next(ep for _, ep in server.rt.endpoints() if ep.address.scheme == "https")
    assert not ep.probe_down and ep.probe == "200"
    unverified = upstream_config(backends, f"https://localhost:{backend.port}")
    other = await start_veer({**unverified, "health": {"active": fast}})
    ep = next(ep for _, ep in other.rt.endpoints() if ep.address.scheme == "https")
    await until(lambda: ep.probe_down, timeout=10, what="an unverifiable endpoint to be down")
    assert ep.probe.startswith("TLS")


def test_check_warns_when_verification_is_off(tmp_path: Path) -> None:
    path = tmp_path / "lax.yaml"
    path.write_text("upstreams:\n  original: {endpoints: [http://127.0.0.1:1]}\n"
                    "  new: {endpoints: [https://127.0.0.1:2], tls: {verify: false}}\n")
    r = subprocess.run([*VEER, "check", "--config", str(path)], capture_output=True, timeout=30)
    assert r.returncode == 0
    assert "upstreams.new.tls.verify is false" in r.stderr.decode()


def test_tls_config_errors_name_the_key() -> None:
    base: dict[str, Any] = {"upstreams": {"original": {"endpoints": ["http://127.0.0.1:1"]},
                                          "new": {"endpoints": ["https://127.0.0.1:2"]}}}
    from proxy.config.reader import ConfigError

    for extra, key in (({"tls": {"cert": "a"}}, "tls.key"),
                       ({"tls": {"cert": "a", "key": "b", "min_version": "1.1"}},
                        "tls.min_version")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_dict({**base, **extra})
    for tls, key in (({"cert": "c"}, "upstreams.new.tls.key"),
                     ({"verify": False, "ca": "x"}, "upstreams.new.tls.ca"),
                     ({"verify": "no"}, "upstreams.new.tls.verify")):
        data = {"upstreams": {**base["upstreams"],
                              "new": {"endpoints": ["https://127.0.0.1:2"], "tls": tls}}}
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_dict(data)
    from proxy.runtime.server import ProxyServer

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TlsError, match=r"upstreams\.new\.tls\.ca"):
            ProxyServer(from_dict({"upstreams": {**base["upstreams"], "new": {
                "endpoints": ["https://127.0.0.1:2"], "tls": {"ca": "/nonexistent/ca.pem"}}}}),
                loop=loop)
    finally:
        loop.close()
