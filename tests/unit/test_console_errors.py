"""The console's error pages: what a browser gets when the registry is away for a moment."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.operator.console.app import create_console, html_errors
from services.operator.settings import ConsoleSettings


async def test_the_registry_unreachable_is_a_503_page_with_retry_after() -> None:
    console = create_console(ConsoleSettings())
    request = make_mocked_request("GET", "/console/devices", app=console)

    async def unreachable(request: web.Request) -> web.StreamResponse:
        raise ConnectionRefusedError("connect call failed ('127.0.0.1', 15432)")

    response = await html_errors(request, unreachable)

    assert isinstance(response, web.Response) and response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert response.content_type == "text/html"
    assert "unreachable for a moment" in (response.text or "")
    assert "15432" not in (response.text or "")  # the driver's words stay in the log
