"""A small client of the operator and bulk APIs for the CLI: one session, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from cli.config import ConfigError, load_endpoints, require
from cli.errors import CliError

MAX_THROTTLED_RETRIES = 5
MAX_THROTTLE_WAIT_S = 300


def _retry_after(header: str | None) -> int:
    """Seconds from a Retry-After header (RFC 9110: delay-seconds); 1 when absent or odd."""
    try:
        return max(1, int(header or "1"))
    except ValueError:
        return 1


class OperatorClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call the API; any non-2xx answer becomes a CliError with the API's own message
        (and the API's JSON body as the error's document, for --json).

        A 429 is waited out (its ``Retry-After``, said on stderr) and the call made
        again, up to MAX_THROTTLED_RETRIES times; a streamed upload (``data``) cannot
        be sent twice, so its 429 is reported instead.
        """
        attempt = 0
        while True:
            status, payload, retry_after = await self._once(method, path, body, params, data, headers)
            if status != 429 or data is not None or attempt >= MAX_THROTTLED_RETRIES:
                break
            attempt += 1
            wait = min(retry_after, MAX_THROTTLE_WAIT_S)
            print(
                f"fleetreg: the API is throttling these calls (429); retrying in {wait} s "
                f"({attempt}/{MAX_THROTTLED_RETRIES})",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(wait)
        if status >= 400:
            message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
            field = payload.get("field") if isinstance(payload, dict) else None
            where = f" ({field})" if field else ""
            raise CliError(f"{method} {path} failed with {status}: {message}{where}", payload)
        return payload

    async def _once(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        data: Any,
        headers: dict[str, str] | None,
    ) -> tuple[int, Any, int]:
        url = self._base + path
        try:
            async with self._session.request(
                method, url, json=body, params=params, data=data, headers=headers
            ) as response:
                payload = await response.json(content_type=None)
                return response.status, payload, _retry_after(response.headers.get("Retry-After"))
        except aiohttp.ClientError as exc:
            raise CliError(f"cannot reach the API at {self._base}: {exc}") from exc

    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[bytes]:
        """A GET whose body is streamed: its chunks as they arrive. A non-2xx answer is a
        CliError with the API's message; a body cut short (the server failed midway) is a
        CliError too, never a silently short download."""
        try:
            async with self._session.get(self._base + path, params=params) as response:
                if response.status >= 400:
                    payload = await response.json(content_type=None)
                    message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
                    raise CliError(f"GET {path} failed with {response.status}: {message}", payload)
                async for chunk in response.content.iter_chunked(64 * 1024):
                    yield chunk
        except aiohttp.ClientError as exc:
            raise CliError(f"GET {path} did not complete: {exc}") from exc

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.call("POST", path, body=body if body is not None else {})

    async def put(self, path: str, body: Any) -> Any:
        return await self.call("PUT", path, body=body)

    async def patch(self, path: str, body: Any) -> Any:
        return await self.call("PATCH", path, body=body)

    async def delete(self, path: str) -> Any:
        return await self.call("DELETE", path)


@contextlib.asynccontextmanager
async def operator_client(url_variable: str = "FLEETREG_ADMIN_URL") -> AsyncIterator[OperatorClient]:
    """A client of the operator API (or, with FLEETREG_BULK_URL, of the bulk ingestion API)."""
    try:
        endpoints = load_endpoints()
        url = require(endpoints, url_variable)
        token = require(endpoints, "FLEETREG_ADMIN_TOKEN")
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        yield OperatorClient(session, url)
