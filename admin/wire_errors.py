"""JSON answers for requests the admin listener cannot even parse.

aiohttp answers a malformed request line or header with a plain-text 400 from its
protocol class, before any middleware runs. The admin API promises JSON errors
everywhere, so the runner's server makes protocol handlers whose error answer is
the same ``{"error", "detail"}`` document the middleware writes.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server


class JsonErrorHandler(RequestHandler):
    """aiohttp's protocol handler with JSON error answers."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs; checks state
        phrase = HTTPStatus(status).phrase.lower() if status in HTTPStatus._value2member_map_ \
            else "error"
        detail = message if status != 500 and message else phrase
        body = json.dumps({"error": phrase, "detail": detail})
        resp = web.Response(status=plain.status, text=body, content_type="application/json")
        resp.force_close()
        return resp


class JsonErrorServer(Server):
    """An aiohttp ``Server`` whose connections use ``JsonErrorHandler``."""

    def __call__(self) -> RequestHandler:
        kwargs: dict[str, Any] = self._kwargs
        return JsonErrorHandler(self, loop=self._loop, **kwargs)


class JsonErrorRunner(web.AppRunner):
    """``AppRunner`` whose server answers unparseable requests in JSON."""

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer  # same layout; only __call__ differs
        return server
