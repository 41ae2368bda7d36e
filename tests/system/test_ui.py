"""The status page (``/ui/``) and the report, in a real browser: headless Chromium (the distribution's) driven by
Playwright, against a daemon polling the simulator's demo rollout — a ScaleupCluster job, a node pool that sells
out, and one more node whose failure reason is hostile HTML.

Screenshots of the page and of a report go to ``.artifacts/`` (``$CCE_MONITOR_ARTIFACTS``); the README shows a
pair of them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page

from monitor.config import config_from
from monitor.sim import Simulator
from monitor.sim.demo import plan_demo
from monitor.testing import RunningDaemon, running_daemon
from monitor.ui.report import parse_events, render_report
from tests.conftest import ARTIFACTS, SimFactory

pytestmark = pytest.mark.timeout(120)

API_TOKEN = "page-token-for-tests"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">quota & "so on"'
ROLLOUT = "demo"


@dataclass
class Demo:
    sim: Simulator
    daemon: RunningDaemon
    session: aiohttp.ClientSession
    events_path: Path
    hostile_job: str

    async def api(self, path: str, *, token: str | None = API_TOKEN) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.daemon.base + path, headers=headers) as resp:
            return resp.status, orjson.loads(await resp.read())

    async def rollout(self) -> dict[str, Any]:
        status, body = await self.api(f"/v1/rollouts/{ROLLOUT}")
        assert status == 200, body
        return dict(body["rollout"])

    async def until_ended(self) -> dict[str, Any]:
        async with asyncio.timeout(60):
            while not (summary := await self.rollout())["ended"]:
                await asyncio.sleep(0.2)
        return summary


@pytest.fixture
async def demo(sim_factory: SimFactory, tmp_path: Path) -> AsyncIterator[Demo]:
    sim, endpoint = await sim_factory(seed=7, job_duration=6.0)
    planned = plan_demo(sim, scaleup=8, nodes=6)
    hostile = sim.add_job("CreateNode", fail=HOSTILE, duration=2.0)
    events_path = tmp_path / "events.jsonl"
    config = config_from(
        {
            "endpoint": endpoint,
            "project_id": sim.config.project_id,
            "polling": {"rate": 100, "interval": 0.3, "min_interval": 0.1, "max_interval": 0.5, "job_timeout": 90},
            "sinks": [{"type": "file", "path": str(events_path)}],
            "state": {"path": str(tmp_path / "state.db")},
            "api": {"listen": "127.0.0.1:0", "token": API_TOKEN},
            "rollouts": {"interval": 0.3},
            "shutdown_deadline": 4,
        },
        source="test",
    )
    env = {"CCE_AUTH_TOKEN": sim.config.token}
    async with running_daemon(config, env=env) as daemon, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        body = {"job_ids": [*planned.job_ids, hostile], "rollout": ROLLOUT}
        async with session.post(f"{daemon.base}/v1/jobs", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
        for cluster, pool, target in planned.pools:
            body = {"cluster_id": cluster, "nodepool_id": pool, "target": target, "rollout": ROLLOUT}
            async with session.post(f"{daemon.base}/v1/nodepools", json=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
        yield Demo(sim, daemon, session, events_path, hostile)


class Console:
    """Every console error and uncaught page error of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")


async def open_page(browser: Browser, demo: Demo, *, token: str | None = API_TOKEN) -> tuple[Page, Console]:
    """The page, logged in with ``token`` through its form (``None``: left at the form)."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    console = Console(page)
    await page.goto(demo.daemon.base + "/ui/")
    await page.locator("#login").wait_for(state="visible")
    if token is not None:
        await page.fill("#token", token)
        await page.click("#login button")
        await page.locator("#main").wait_for(state="visible")
    return page, console


async def page_counts(page: Page) -> dict[str, int]:
    """The rollout's progress bar as drawn: state -> count."""
    parts = page.locator(f'.rollout[data-rollout="{ROLLOUT}"] .bar span')
    found: dict[str, int] = {}
    for i in range(await parts.count()):
        part = parts.nth(i)
        found[str(await part.get_attribute("data-state"))] = int(await part.get_attribute("data-count") or 0)
    return found


async def test_the_page_shows_the_rollout_live_with_its_timeline(browser: Browser, demo: Demo) -> None:
    page, console = await open_page(browser, demo)
    line = page.locator(f'.rollout[data-rollout="{ROLLOUT}"] .line')
    await line.wait_for()
    assert "finished" in (await line.text_content() or "") or "nodes" in (await line.text_content() or "")
    # It changes without a reload: the stream (or the periodic reread) brings every change in.
    summary = await demo.until_ended()
    await page.wait_for_function(
        "name => [...document.querySelectorAll('.rollout')].some("
        "r => r.dataset.rollout === name && r.querySelector('.line').textContent.includes('took'))",
        arg=ROLLOUT,
        timeout=20_000,
    )
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1, "the page never reloaded"
    assert await page_counts(page) == {k: v for k, v in summary["counts"].items() if v}, "what the API reports"
    assert await page.locator("#live").text_content() == "live"

    # The timeline: one row per node (and the one-node job), failures marked, details on click.
    rows = page.locator("#timeline svg g.row")
    await page.wait_for_function(f"document.querySelectorAll('#timeline svg g.row').length === {summary['total']}")
    assert await rows.count() == summary["total"]
    failed = page.locator("#timeline svg g.row.failed")
    assert await failed.count() == summary["failed_count"] == len(summary["failed"])
    await page.locator(f'#timeline g.row[data-key="{demo.hostile_job}"]').click()
    detail = page.locator("#detail")
    await detail.wait_for(state="visible")
    assert HOSTILE in (await detail.text_content() or ""), "the reason is shown as text"

    # The node pool, and the recent failures with the hostile reason as text.
    pool_row = page.locator("#pools tbody tr").first
    assert "SoldOut" in (await pool_row.text_content() or "")
    failures = page.locator("#failures tbody")
    await page.wait_for_function("document.querySelector('#failures tbody').textContent.includes('onerror')")
    assert HOSTILE in (await failures.text_content() or "")

    # Nothing it showed ran: no injected element, no script of the reason's.
    assert await page.evaluate("window.__pwned === undefined")
    assert await page.locator("#failures img, #detail img, #failures script, #timeline script").count() == 0
    assert console.errors == []
    shown = await page.content()
    assert API_TOKEN not in shown and demo.sim.config.token not in shown, "no secret on the page"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "ui-page.png"), full_page=True)
    await page.close()


async def test_a_report_from_the_file_sink_reads_without_scripts(browser: Browser, demo: Demo, tmp_path: Path) -> None:
    summary = await demo.until_ended()
    async with asyncio.timeout(10):  # the file sink writes the final digest too
        while b"rollout.finished" not in demo.events_path.read_bytes():
            await asyncio.sleep(0.1)
    read = parse_events(demo.events_path.read_bytes().splitlines())
    assert read.skipped == 0
    html = render_report(read, rollout=ROLLOUT, source="events.jsonl")
    assert "<script" not in html.replace("&lt;script", ""), "no script of its own, none of the reason's"
    assert demo.sim.config.token not in html and API_TOKEN not in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "nothing loaded from elsewhere"
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    console = Console(page)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(path.as_uri())
    assert await page.locator("svg.timeline g.row").count() == summary["total"]
    assert await page.locator("svg.timeline g.row.failed").count() == summary["failed_count"]
    text = await page.locator("body").text_content() or ""
    assert f"{summary['counts']['Active']}/{summary['total']} nodes Active" in text
    assert HOSTILE in text, "the hostile reason is shown as text"
    assert requests == [path.as_uri()], "self-contained: nothing else is fetched"
    assert console.errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)
    await context.close()


async def test_without_the_token_the_page_shows_no_data(browser: Browser, demo: Demo) -> None:
    page, console = await open_page(browser, demo, token=None)
    assert await page.locator("#main").is_hidden()
    assert "needs its API token" in (await page.locator("#login-why").text_content() or "")
    # The data routes refuse the browser without the token (the page's own files load for anyone).
    status = await page.evaluate("fetch('/v1/rollouts').then(r => r.status)")
    assert status == 401
    assert await page.evaluate("fetch('/v1/events/stream').then(r => r.status)") == 401
    assert (await demo.api("/v1/rollouts/demo/timeline", token=None))[0] == 401
    # A wrong token is refused, and said so.
    await page.fill("#token", "not-the-token")
    await page.click("#login button")
    await page.wait_for_function("document.querySelector('#login-why').textContent.includes('refused')")
    assert await page.locator("#main").is_hidden()
    assert await page.locator(".rollout").count() == 0
    # The right one: kept in the tab's session storage, never in the URL.
    await page.fill("#token", API_TOKEN)
    await page.click("#login button")
    await page.locator(f'.rollout[data-rollout="{ROLLOUT}"]').wait_for()
    assert await page.evaluate("sessionStorage.getItem('cce-monitor-token')") == API_TOKEN
    assert await page.evaluate("localStorage.length") == 0
    assert API_TOKEN not in page.url
    assert await page.evaluate("document.cookie") == ""
    # The refused fetches above log console errors of the browser's own ("401 Unauthorized"), nothing else.
    assert all("401" in e for e in console.errors), console.errors
    await page.close()


async def test_the_event_stream_carries_events_as_they_happen(demo: Demo) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    seen: list[dict[str, Any]] = []
    async with demo.session.get(f"{demo.daemon.base}/v1/events/stream", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async with asyncio.timeout(30):
            event_type = None
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event_type = line.removeprefix("event: ")
                elif line.startswith("data: ") and event_type:
                    seen.append(orjson.loads(line.removeprefix("data: ")))
                    assert seen[-1]["type"] == event_type
                if any(e["type"] == "rollout.progress" for e in seen) and len(seen) >= 5:
                    break
    assert {e["rollout"] for e in seen if e.get("rollout")} == {ROLLOUT}
    status, body = await demo.api("/v1/events/stream?bad=1")
    assert (status, body["error"]) == (400, "unknown query parameter 'bad'; use rollout")
