"""The console of a compose stack in Debian's chromium (as tests/e2e/console does): sign in with
an API key, read the devices page, keep the session cookie across a restart."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from playwright.async_api import Page, async_playwright, expect

from tests.e2e.console.conftest import chromium_path


@asynccontextmanager
async def _page(cookies: list[Any] | None = None) -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
        )
        context = await browser.new_context()
        if cookies:
            await context.add_cookies(cookies)
        page = await context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            await browser.close()


async def _sign_in(page: Page, url: str, api_key: str) -> None:
    await page.goto(f"{url}/console/sign-in")
    await page.get_by_label("API key").fill(api_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def console_devices_total(url: str, api_key: str) -> int:
    """Sign in and load the devices page; the total it shows ("1,234 devices")."""
    async with _page() as page:
        await _sign_in(page, url, api_key)
        await page.goto(f"{url}/console/devices")
        await expect(page.locator("tbody tr").first).to_be_visible()
        text = await page.locator("#device-total").inner_text()
        return int(re.sub(r"[^0-9]", "", text))


async def signed_in_cookie(url: str, api_key: str) -> list[Any]:
    """The cookies of a signed-in console session."""
    async with _page() as page:
        await _sign_in(page, url, api_key)
        return list(await page.context.cookies())


async def still_signed_in(url: str, cookies: list[Any]) -> bool:
    """Whether the devices page opens with these cookies (no redirect to the sign-in page)."""
    async with _page(cookies) as page:
        await page.goto(f"{url}/console/devices")
        return (
            "/console/sign-in" not in page.url
            and await page.get_by_role("button", name="Sign out").count() == 1
        )
