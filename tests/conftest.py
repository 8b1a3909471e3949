"""Tests run on uvloop, the loop veer runs on in production."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import uvloop

pytest_plugins = ("tests.redis_server",)  # the redis_server and redis_url fixtures


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], uvloop.Loop]]:
    return {"uvloop": uvloop.new_event_loop}
