"""The console in a real headless browser: Debian's chromium (deploy/local/browser.sh
installs it when missing) driven by Playwright for Python, with ``executable_path``
pointing at it, so no browser is downloaded. Each test gets a fresh browser context (its
own cookies), and leaves a screenshot of its last page under var/test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from shared.db.pool import Pool
from tests.support.api import Operator, new_operator
from tests.support.system import System

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "var" / "test-artifacts"
# Rules whose failures block: axe-core's "serious" and "critical" impacts (WCAG 2 A/AA).
BLOCKING_IMPACTS = ("serious", "critical")


def chromium_path() -> str:
    found = os.environ.get("FLEETREG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail("Debian's chromium is missing: run deploy/local/browser.sh (make test does)")
    return found


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # As root (CI containers) Chromium refuses to start with its sandbox.
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
        )
        yield launched
        await launched.close()


@dataclass
class Console:
    """A browser tab on the console of one account, and that account's API key."""

    page: Page
    url: str
    operator: Operator

    async def open(self, path: str) -> None:
        await self.page.goto(self.url + path)

    async def sign_in(self, key: str | None = None) -> None:
        await self.open("/console/sign-in")
        await self.page.get_by_label("API key").fill(key or self.operator.api_key)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_role("button", name="Sign out")).to_be_visible()

    async def csrf(self) -> str:
        token = await self.page.locator('input[name="csrf_token"]').first.get_attribute("value")
        assert token
        return token

    async def check_accessibility(self) -> None:
        """axe-core finds no serious or critical accessibility violation on the page."""
        results = await Axe().run(self.page)
        blocking = [v for v in results.response["violations"] if v.get("impact") in BLOCKING_IMPACTS]
        assert not blocking, results.generate_report()


NewConsole = Callable[[Operator], Awaitable[Console]]


@pytest.fixture
async def new_console(
    browser: Browser, system: System, request: pytest.FixtureRequest
) -> AsyncIterator[NewConsole]:
    """Open consoles (each a fresh browser context); a screenshot of each one's last page
    is saved as var/test-artifacts/<test>[-n].png."""
    opened: list[Console] = []

    async def open_console(operator: Operator) -> Console:
        context = await browser.new_context(viewport={"width": 1366, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        console = Console(page, system.operator_url, operator)
        opened.append(console)
        return console

    yield open_console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    for n, console in enumerate(opened):
        suffix = f"-{n}" if n else ""
        await console.page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
        await console.page.context.close()


@pytest.fixture
async def console(new_console: NewConsole, operator: Operator) -> Console:
    """A signed-in console of a fresh account."""
    opened = await new_console(operator)
    await opened.sign_in()
    return opened


@pytest.fixture
async def other_operator(session: aiohttp.ClientSession, pool: Pool, system: System) -> Operator:
    """A second account of its own."""
    return await new_operator(session, pool, system.operator_url)
