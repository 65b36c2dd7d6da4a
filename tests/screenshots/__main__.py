"""The README's console screenshots, taken from the running local stack (``make demo``
first): ``.venv/bin/python -m tests.screenshots``.

Signs in with the demo's API key (var/endpoints.env), opens the live view, boots a
simulated storm with ``fleetreg simulate`` while it is open, and saves
docs/console-live.png during the storm and docs/console-devices.png after it. The browser
is Debian's chromium, as in the browser tests (deploy/local/browser.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from playwright.async_api import async_playwright

from cli.config import parse_env_file

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


async def take(devices: int, storm_seconds: float) -> None:
    env = parse_env_file(ROOT / "var" / "endpoints.env")
    console = env["FLEETREG_ADMIN_URL"] + "/console"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=os.environ.get("FLEETREG_CHROMIUM", "/usr/bin/chromium"),
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
        )
        page = await (await browser.new_context(viewport={"width": 1366, "height": 860})).new_page()
        await page.goto(f"{console}/sign-in")
        await page.get_by_label("API key").fill(env["FLEETREG_ADMIN_TOKEN"])
        await page.get_by_role("button", name="Sign in").click()
        await page.goto(f"{console}/live")
        storm = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv" / "bin" / "fleetreg"), "simulate", "--devices", str(devices),
            "--concurrency", "50", "--clone-rate", "0.05",
            stdout=asyncio.subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        await asyncio.sleep(storm_seconds)
        await page.screenshot(path=str(DOCS / "console-live.png"), full_page=True)
        await storm.wait()
        await page.goto(f"{console}/devices?sort=registered_at&order=desc")
        await page.screenshot(path=str(DOCS / "console-devices.png"), full_page=False)
        await browser.close()
    print(f"wrote {DOCS / 'console-live.png'} and {DOCS / 'console-devices.png'}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=2000, help="devices of the storm (2000)")
    parser.add_argument("--storm-seconds", type=float, default=8.0, help="when the live view is taken (8)")
    args = parser.parse_args()
    asyncio.run(take(args.devices, args.storm_seconds))


if __name__ == "__main__":
    main()
