"""The dashboard in headless Chromium: live numbers from a live veer, and a rollback by click."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from admin.demo.backend import Backend
from admin.server import AdminServer
from proxy.control.state import Status
from tests.deadline import until
from tests.functional.conftest import StartVeer
from tests.functional.test_rollout import rollout_config, status, traffic
from tests.sysdeps import require_binary

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Dialog, Error, Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "t0ken"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PLAN = [{"name": "canary", "weight": 50, "duration": "1h",
         "gates": {"max_error_rate": "5%", "min_requests": 50}},
        {"name": "full", "weight": 100}]


def require_playwright() -> None:
    """Skip without the playwright package (fail in CI, which installs it)."""
    if importlib.util.find_spec("playwright") is not None:
        return
    reason = "the playwright package is not installed; pip install -e '.[test]'"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (.ci/run should have installed it)")
    pytest.skip(reason)


async def text(page: Page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def test_dashboard_shows_live_rollout_and_rolls_back(
    backends: dict[str, Backend], start_veer: StartVeer
) -> None:
    chromium = require_binary("chromium", "apt-get install chromium")
    require_playwright()
    from playwright.async_api import async_playwright, expect

    server = await start_veer(rollout_config(backends, PLAN, admin={"listen": "127.0.0.1:0"}))
    admin = AdminServer(server.rt, token=TOKEN)
    await admin.start()
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    dialogs: list[tuple[str, str]] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console: {msg.text}")

    def on_page_error(exc: Error) -> None:
        problems.append(f"page error: {exc}")

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append((dialog.type, dialog.message))
        if dialog.type == "prompt":
            await dialog.accept(TOKEN)
        else:
            await dialog.accept()

    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 1000})
                page.on("console", on_console)
                page.on("pageerror", on_page_error)
                page.on("dialog", on_dialog)
                await page.goto(f"http://127.0.0.1:{admin.port}/ui")
                await expect(page.locator("#rollout-name")).to_have_text("test", timeout=5000)
                await expect(page.locator("#status")).to_have_text("progressing")
                await expect(page.locator("#weight-new")).to_have_text("50.0%")
                await expect(page.locator("#weight-original")).to_have_text("50.0%")
                await expect(page.locator("#phase")).to_have_text("canary")

                async with traffic(server.port, workers=4) as counts:
                    first = await text(page, "#rate-new")

                    async def rate_moved() -> bool:
                        now = await text(page, "#rate-new")
                        return now != first and float(now) > 0

                    await until(rate_moved, 10, interval=0.1,
                                what="#rate-new to change under traffic")
                    assert float(await text(page, "#rate-original")) > 0
                    # the error-rate gate passes once enough healthy requests reach new
                    await expect(page.locator("#gates tr[data-gate=error_rate]")).to_contain_text(
                        "pass", timeout=10_000)
                    await expect(page.locator("#p99-new")).to_contain_text("ms")

                    async def charted() -> bool:  # a few seconds of samples to draw
                        points = await page.get_attribute("#chart-latency", "data-points")
                        return int(points or 0) >= 8

                    await until(charted, 15, interval=0.1, what="eight samples in the charts")
                    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True,
                                          animations="disabled")

                    await page.click("#btn-rollback")
                    await until(lambda: server.rt.live.new_weight_bp == 0, 10,
                                what="veer's weight to drop to 0 after the click")
                    assert counts.get("new:200", 0) > 0
                assert status(server) is Status.ROLLED_BACK
                assert [kind for kind, _ in dialogs] == ["prompt", "confirm"]
                assert "roll back" in dialogs[1][1].lower()
                await expect(page.locator("#weight-new")).to_have_text("0.0%", timeout=5000)
                await expect(page.locator("#weight-original")).to_have_text("100.0%")
                await expect(page.locator("#status")).to_have_text("rolled-back")
                first_event = page.locator("#events tbody tr").first
                await expect(first_event).to_contain_text("rollback", timeout=5000)
                await expect(first_event).to_contain_text("dashboard")
                await expect(page.locator("#btn-rollback")).to_be_disabled()
                # What was rolled back, from where, and the phase clock stopped.
                note = page.locator("#stopped-note")
                await expect(note).to_be_visible(timeout=5000)
                await expect(note).to_contain_text("Rolled back from phase canary (1/2) at "
                                                   "50.0% on new")
                await expect(note).to_contain_text("by admin: dashboard")
                await expect(page.locator("#elapsed")).to_contain_text("(stopped)")
                await page.screenshot(path=str(ARTIFACTS / "dashboard-rolled-back.png"),
                                      full_page=True, animations="disabled")

                await expect(page.locator("#btn-retry")).to_be_enabled()
                await page.click("#btn-retry")
                await until(lambda: status(server) is Status.PROGRESSING, 10,
                            what="the retry click to restart the plan")
                assert "first phase" in dialogs[-1][1]
                await expect(page.locator("#status")).to_have_text("progressing", timeout=5000)
                await expect(note).to_be_hidden()
                await expect(page.locator("#btn-retry")).to_be_disabled()
                await expect(page.locator("#weight-new")).to_have_text("50.0%", timeout=5000)
            finally:
                await browser.close()
    finally:
        await admin.stop()
    assert server.rollout is not None
    rollback, retry = server.rollout.controller.state.events[-2:]
    assert (rollback.kind, rollback.actor, rollback.reason) == ("rollback", "admin", "dashboard")
    assert (retry.kind, retry.actor) == ("retry", "admin")
    assert problems == []
