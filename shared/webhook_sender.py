"""Sending one signed webhook request, safely: http(s) only, every address the host
resolves to checked before connecting (again on every new connection, so a DNS answer
changed since the webhook was created, DNS rebinding, is caught), no redirects followed,
no proxy from the environment, a total timeout, and at most a few KiB of the answer read.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from shared.domain.webhooks import address_refusal, checked_url, name_refusal
from shared.errors import InvalidInput

MAX_RESPONSE_BYTES = 4096  # read from an answer and then dropped: only its status matters
USER_AGENT = "fleetreg-webhooks/1"


class RefusedAddress(OSError):
    """The host resolves to an address webhooks may not call (aiohttp reports an OSError
    of its resolver as a connection error naming it)."""


class CheckedResolver(AbstractResolver):
    """The system resolver, refusing a host when any of its addresses is refused
    (:func:`shared.domain.webhooks.address_refusal`): the connection is made only to the
    addresses checked here."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            if address_refusal(result["host"], allow_private=self._allow_private) is not None:
                # Not which address: the attempt's error is shown to the operator API.
                raise RefusedAddress(name_refusal(host))
        return found

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the HTTP status, or None and why there was none."""

    http_status: int | None
    error: str
    latency_ms: float

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


class Sender:
    """POSTs webhook bodies through one connection pool (opened by the notifier's resources)."""

    def __init__(self, *, allow_private: bool, timeout_s: float, concurrency: int) -> None:
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._concurrency = concurrency

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._allow_private),
            use_dns_cache=False,  # every new connection resolves and checks again
            limit=self._concurrency,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            trust_env=False,  # never through a proxy named by the environment
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, url: str, body: str, headers: dict[str, str]) -> Answer:
        """One attempt; never raises for anything the endpoint or the network does."""
        started = time.perf_counter()

        def took() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            _, target = checked_url(url)
        except InvalidInput as exc:
            return Answer(None, f"refused: {exc.message}", took())
        literal = target.literal
        if literal is not None:  # an address in the URL: aiohttp does not ask the resolver
            refusal = address_refusal(str(literal), allow_private=self._allow_private)
            if refusal is not None:
                return Answer(None, f"refused: {refusal}", took())
        if self._session is None:
            raise RuntimeError("the sender is not open")
        request: dict[str, Any] = {
            "data": body.encode(),
            "headers": {**headers, "Content-Type": "application/json"},
            "allow_redirects": False,
        }
        try:
            async with self._session.post(url, **request) as response:
                status = response.status
                await response.content.read(MAX_RESPONSE_BYTES)  # bounded; the rest is dropped
            return Answer(status, "", took())
        except TimeoutError:
            return Answer(None, f"timed out after {self._timeout.total:g} s", took())
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, RefusedAddress) or (
                isinstance(exc, aiohttp.ClientConnectorDNSError) and not self._allow_private
            ):
                # A name that no longer resolves and one that now resolves to a refused
                # address fail alike, as at creation (shared.domain.webhooks.name_refusal).
                return Answer(None, f"refused: {name_refusal(target.host)}", took())
            return Answer(None, f"cannot connect: {_short(cause)}", took())
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Answer(None, f"{type(exc).__name__}: {_short(exc)}", took())


def _short(error: BaseException) -> str:
    return str(error)[:300] or type(error).__name__
