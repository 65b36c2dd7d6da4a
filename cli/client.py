"""A small client of the operator API for the CLI: one session, clear errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from cli.config import ConfigError, load_endpoints, require
from cli.errors import CliError


class OperatorClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        """Call the API; any non-2xx answer becomes a CliError with the API's own message."""
        url = self._base + path
        try:
            async with self._session.request(method, url, json=body, params=params) as response:
                payload = await response.json(content_type=None)
                if response.status >= 400:
                    message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
                    field = payload.get("field") if isinstance(payload, dict) else None
                    where = f" ({field})" if field else ""
                    raise CliError(
                        f"{method} {path} failed with {response.status}: {message}{where}", payload
                    )
                return payload
        except aiohttp.ClientError as exc:
            raise CliError(f"cannot reach the operator API at {self._base}: {exc}") from exc

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, body=body if body is not None else {})


@contextlib.asynccontextmanager
async def operator_client() -> AsyncIterator[OperatorClient]:
    try:
        endpoints = load_endpoints()
        url = require(endpoints, "FLEETREG_ADMIN_URL")
        token = require(endpoints, "FLEETREG_ADMIN_TOKEN")
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield OperatorClient(session, url)
