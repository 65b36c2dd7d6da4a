"""The console's answers carry Strict-Transport-Security (issue 21): pages, the sign-in
redirect, error pages and static files alike. Sent over http too, where browsers ignore
it (RFC 6797 section 8.1): behind a TLS-terminating proxy the service cannot always tell
the browser's scheme. The operator's JSON API, which no browser navigates, does not."""

from __future__ import annotations

import aiohttp

from tests.support.system import System

ONE_YEAR = "max-age=31536000"  # FLEETREG_CONSOLE_HSTS_SECONDS's default


async def test_every_console_answer_carries_hsts(system: System, session: aiohttp.ClientSession) -> None:
    console = f"{system.operator_url}/console"
    for path, status in (
        ("/sign-in", 200),
        ("/devices", 303),  # no session: off to the sign-in page
        ("/no-such-page", 404),
        ("/static/console.css", 200),
    ):
        async with session.get(console + path, allow_redirects=False) as response:
            assert response.status == status, path
            assert response.headers.get("Strict-Transport-Security") == ONE_YEAR, path
    async with session.get(f"{system.operator_url}/v1/account") as response:
        assert response.status == 401
        assert "Strict-Transport-Security" not in response.headers
