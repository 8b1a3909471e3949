"""The dashboard's experiment panel in headless Chromium, against a live veer running an
experiment (backends reporting ``veer-metric`` headers), and hidden without one."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp

from admin.demo.backend import Backend
from admin.server import AdminServer
from tests.deadline import until
from tests.functional.conftest import StartVeer
from tests.functional.metric_backend import MetricBackend, start_experiment
from tests.functional.test_dashboard import ARTIFACTS, CHROMIUM_ARGS, PLAN, require_playwright
from tests.functional.test_experiment import EXPERIMENT
from tests.functional.test_rollout import rollout_config
from tests.sysdeps import require_binary

if TYPE_CHECKING:
    from playwright.async_api import ConsoleMessage, Error, Locator, Page

TOKEN = "exp-t0ken"
USERS = 300  # a fixed set: the split of u0..u299 under salt "exp" is the same every run
METRICS = ["accuracy", "converted", "error_rate"]  # EXPERIMENT's, in its order


async def one_request_per_user(port: int, users: int) -> None:
    async with aiohttp.ClientSession() as s:
        for u in range(users):
            async with s.get(f"http://127.0.0.1:{port}/x", headers={"X-User-Id": f"u{u}"}) as r:
                assert r.status == 200
                await r.read()


@asynccontextmanager
async def dashboard(url: str, problems: list[str]) -> AsyncIterator[Page]:
    """Headless Chromium on ``url``; console errors and page errors go to ``problems``."""
    chromium = require_binary("chromium", "apt-get install chromium")
    require_playwright()
    from playwright.async_api import async_playwright

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console: {msg.text}")

    def on_page_error(exc: Error) -> None:
        problems.append(f"page error: {exc}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1100})
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            await page.goto(url)
            yield page
        finally:
            await browser.close()


async def attribute(page: Page, selector: str, name: str) -> str:
    return await page.get_attribute(selector, name) or ""


def points_at_least(page: Page, metric: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        drawn = await attribute(page, f"svg.lift-chart[data-metric={metric}]", "data-points")
        return int(drawn or 0) >= n
    return check


async def test_the_experiment_panel_shows_decision_srm_metrics_and_lift_over_time(
        metric_backends: dict[str, MetricBackend], start_veer: StartVeer) -> None:
    from playwright.async_api import expect

    server, admin = await start_experiment(metric_backends, start_veer, EXPERIMENT, TOKEN)
    base = f"http://127.0.0.1:{admin.port}"
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    try:
        # before any traffic: the panel is there, waiting
        async with dashboard(f"{base}/ui", problems) as page:
            card = page.locator("#experiment-card")
            await expect(card).to_be_visible(timeout=10_000)
            await expect(card).to_have_attribute("data-state", "shown")
            await expect(page.locator("#exp-name")).to_have_text("ranking-v2")
            await expect(page.locator("#exp-decision")).to_have_text("keep running")
            await expect(page.locator("#status")).to_have_text("experiment")
            await expect(page.locator(
                "svg.lift-chart[data-metric=accuracy] text.waiting")).to_have_text(
                "collecting data\u2026")

            await one_request_per_user(server.port, USERS)
            # >= min_users (100) per variant, new better by 0.05 on accuracy: ship
            await expect(page.locator("#exp-decision")).to_have_text("ship", timeout=10_000)
            await expect(page.locator("#exp-decision")).to_have_attribute("data-action", "ship")
            await expect(page.locator("#exp-reason")).to_have_text(
                "confidently better: accuracy; no metric worse")
            await until(points_at_least(page, "accuracy", 2), 15, interval=0.1,
                        what="two looks at accuracy's lift in the chart")

            async with aiohttp.ClientSession() as s, \
                    s.get(f"{base}/experiments/ranking-v2/results") as r:
                res: dict[str, Any] = await r.json()
            units = {v: res["variants"][v]["units"] for v in ("original", "new")}
            assert units["original"] + units["new"] == USERS
            await expect(page.locator("#exp-srm")).to_have_text("ok")
            await expect(page.locator("#exp-srm")).to_have_attribute("data-srm", "ok")
            await expect(page.locator("#exp-srm-p")).to_have_text(re.compile(r"^p = \d\.\d{4}"))
            for v in ("original", "new"):
                await expect(page.locator(f"#exp-units-{v}")).to_have_text(str(units[v]))

            rows = page.locator("#exp-metrics tbody tr")
            await expect(rows).to_have_count(len(METRICS))
            assert [await r.get_attribute("data-metric") for r in await rows.all()] == METRICS
            acc = page.locator("#exp-metrics tr[data-metric=accuracy]")
            await expect(acc).to_have_attribute("data-verdict", "better")

            def field(name: str) -> Locator:
                return acc.locator(f"td[data-field={name}]")

            await expect(field("name")).to_contain_text("accuracy")
            await expect(field("orig-n")).to_have_text(str(units["original"]))
            await expect(field("new-n")).to_have_text(str(units["new"]))
            await expect(field("orig-mean")).to_have_text(re.compile(r"^0\.8\d*$"))
            await expect(field("new-mean")).to_have_text(re.compile(r"^0\.[89]\d*$"))
            await expect(field("difference")).to_have_text(re.compile(r"^\+0\.0\d+$"))
            await expect(field("lift")).to_have_text(re.compile(r"^\+\d\.\d\d%$"))
            await expect(field("lift-ci")).to_have_text(
                re.compile(r"^\[\+\d\.\d\d%, \+\d+\.\d\d%\]$"))
            await expect(field("p-value")).to_have_text("<0.0001")
            await expect(field("verdict")).to_have_text("better")
            await expect(field("users-needed")).to_have_text(re.compile(r"^\d+ \(300 now, "
                                                                        r"reached\)$"))
            conv = page.locator("#exp-metrics tr[data-metric=converted]")
            await expect(conv).to_have_attribute("data-verdict", "inconclusive")
            await expect(conv.locator("td[data-field=lift]")).to_have_text("\u2013")
            guard = page.locator("#exp-metrics tr[data-metric=error_rate]")
            await expect(guard.locator("td[data-field=name]")).to_contain_text("guardrail")
            await expect(guard).to_have_attribute("data-verdict", "inconclusive")
            await expect(guard.locator("td[data-field=lift]")).to_have_text("\u2013")

            chart = page.locator("svg.lift-chart[data-metric=accuracy]")
            await expect(chart.locator("path.lift-line")).to_have_count(1)
            await expect(chart.locator("path.lift-band")).to_have_count(1)
            await expect(chart.locator("circle.lift-now")).to_have_count(1)
            line = await chart.locator("path.lift-line").get_attribute("d") or ""
            assert len(re.findall(r"[ML]", line)) >= 2, line
            await expect(page.locator(
                "#exp-charts figure[data-metric=accuracy] figcaption .now")).to_have_text(
                re.compile(r"^\+\d\.\d\d% \[\+\d\.\d\d%, \+\d+\.\d\d%\]$"))
            # nothing to draw: no values yet (converted), or none that vary (error_rate: all 0)
            await expect(page.locator(
                "svg.lift-chart[data-metric=converted] text.waiting")).to_have_text(
                "collecting data\u2026")
            await expect(page.locator(
                "svg.lift-chart[data-metric=error_rate] text.waiting")).not_to_be_empty()
            for metric in ("converted", "error_rate"):
                assert await attribute(page, f"svg.lift-chart[data-metric={metric}]",
                                       "data-points") == "0"
            await page.screenshot(path=str(ARTIFACTS / "dashboard-experiment.png"),
                                  full_page=True, animations="disabled")
    finally:
        await admin.stop()
    assert problems == []


async def test_the_experiment_panel_is_hidden_without_an_experiment(
        backends: dict[str, Backend], start_veer: StartVeer) -> None:
    from playwright.async_api import expect

    server = await start_veer(rollout_config(backends, PLAN, admin={"listen": "127.0.0.1:0"}))
    admin = AdminServer(server.rt, token=TOKEN)
    await admin.start()
    problems: list[str] = []
    try:
        async with dashboard(f"http://127.0.0.1:{admin.port}/ui", problems) as page:
            await expect(page.locator("#rollout-name")).to_have_text("test", timeout=5000)
            card = page.locator("#experiment-card")
            # the page asked GET /experiments and got none
            await expect(card).to_have_attribute("data-state", "none", timeout=5000)
            await expect(card).to_be_hidden()
            await expect(page.locator("#exp-metrics tbody tr")).to_have_count(0)
            await expect(page.locator("#status")).to_have_text("progressing")
    finally:
        await admin.stop()
    assert problems == []
