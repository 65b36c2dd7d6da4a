"""The console's client of the bulk API (services/ingestion/openapi.yaml).

The console never opens CORS on the bulk API: the browser talks to the console only, and
the operator service forwards uploads, publishes, cancels and the registration hook's
changes, tests and recent calls to the bulk API at ``settings.console.ingestion_url`` with
the session's own API key (sealed in the session at sign-in, see pages/signin.py) or, for a
person's session, a short-lived assertion of who they are (shared.domain.console_assertions),
which the bulk API checks against the live session on every call; so the bulk API applies
the same account scoping, role refusals and limits as for any other client. The key is
never logged and never put in an error message.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import logging
import time
from collections.abc import AsyncIterable, Awaitable
from typing import Any

import aiohttp
from aiohttp import web

from services.operator.console.auth import Operator, SignInRequired
from services.operator.resources import Resources
from shared.domain import console_assertions
from shared.domain.webhooks import CONSOLE_SESSION_KEYS, SecretBox
from shared.errors import DomainError

log = logging.getLogger(__name__)

PATH = "/v1/bulk-registrations"
# A rejection lists at most this many rows (the bulk API's default report limit); the
# count is always the bulk API's total.
ROWS_KEPT = 1000
# Each reported value is already shortened by the bulk API; these bound what we keep of a
# misbehaving answer.
COLUMN_MAX, VALUE_MAX, REASON_MAX = 64, 200, 500


class BulkApiError(DomainError):
    """The bulk API answered 4xx or 5xx. ``status`` is its status; the message is its
    message (never the request, which holds the key); ``errors``/``errors_total`` are the
    rejected file's bad rows (line, column, value, reason) when it listed any."""

    code = "bulk_api"

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
        message = body.get("message")
        text = message if isinstance(message, str) and message else f"the bulk API answered {status}"
        super().__init__(f"Bulk API ({status}): {text}")
        self.status = status
        self.retry_after = retry_after
        self.errors = rows_of(body.get("errors"))
        total = body.get("errors_total")
        self.errors_total = total if isinstance(total, int) and total >= 0 else len(self.errors)

    @property
    def rejected_rows(self) -> bool:
        """A rejected file (422, or 413 past the row limit) with its bad rows listed."""
        return self.status in (413, 422) and bool(self.errors)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after and self.retry_after.isdigit() else {}


class BulkApiUnreachable(DomainError):
    """The bulk API did not answer (down, refusing connections, timed out): 503."""

    status = 503
    code = "bulk_api_unreachable"


def rows_of(found: object) -> list[dict[str, Any]]:
    """The bad rows of a rejection, as plain bounded dicts (anything else is dropped)."""
    if not isinstance(found, list):
        return []
    rows = []
    for row in found[:ROWS_KEPT]:
        if not isinstance(row, dict):
            continue
        line = row.get("line")
        rows.append(
            {
                "line": line if isinstance(line, int) else 0,
                "column": str(row.get("column", ""))[:COLUMN_MAX],
                "value": str(row.get("value", ""))[:VALUE_MAX],
                "reason": str(row.get("reason", ""))[:REASON_MAX],
            }
        )
    return rows


class BulkApi:
    """The bulk API as one signed-in operator: every call carries their credential, the
    session's ``key`` or, for a person, the ``headers`` holding their assertion."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        key: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key is not None else dict(headers or {})

    async def list(self) -> list[dict[str, Any]]:
        """Every bulk registration of the account (``BulkRegistration`` shapes)."""
        answer = await self._call("GET", PATH)
        found = answer.get("bulk_registrations")
        return [b for b in found if isinstance(b, dict)] if isinstance(found, list) else []

    async def show(self, registration_id: str) -> dict[str, Any]:
        """One registration with its conflict rows; BulkApiError 404 when not the account's."""
        return await self._call("GET", f"{PATH}/{registration_id}")

    async def upload(self, product_id: str, file_name: str, body: AsyncIterable[bytes]) -> dict[str, Any]:
        """Stream ``body`` (the CSV, chunk by chunk: never whole in memory) as an upload;
        the configured registration with its ``warnings``, or BulkApiError (422/413 with the
        bad rows, 400, 404, 409, ...)."""
        return await self._call(
            "POST",
            PATH,
            params={"product_id": product_id, "file_name": file_name},
            data=body,
            content_type="text/csv",
        )

    async def publish(self, registration_id: str) -> dict[str, Any]:
        return await self._call("POST", f"{PATH}/{registration_id}/publish")

    async def cancel(self, registration_id: str) -> dict[str, Any]:
        return await self._call("POST", f"{PATH}/{registration_id}/cancel")

    async def update(self, registration_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Set, change or remove the registration hook (``hook_url``, ``hook_timeout_ms``,
        ``hook_failure``); the registration, with ``hook_secret`` when a URL was set."""
        return await self._call("PATCH", f"{PATH}/{registration_id}", json=body)

    async def test_hook(self, registration_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """One test call of the registration hook (``body``: optional ``hardware_id``): the
        HookTest shape; a failure of the hook is an answer, not a BulkApiError."""
        return await self._call("POST", f"{PATH}/{registration_id}/hook/test", json=body)

    async def hook_calls(self, registration_id: str, limit: int) -> builtins.list[dict[str, Any]]:
        """The registration hook's newest ``limit`` calls (HookCall shapes), newest first."""
        answer = await self._call("GET", f"{PATH}/{registration_id}/hook/calls", params={"limit": str(limit)})
        found = answer.get("calls")
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        data: AsyncIterable[bytes] | None = None,
        content_type: str | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        try:
            async with self._http.request(
                method, self._base + path, params=params, data=data, json=json, headers=headers
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    body = {}
                if response.status >= 400:
                    raise BulkApiError(response.status, body, response.headers.get("Retry-After"))
                return body
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            # Logged by kind only: the exception's text may hold the URL, never the key,
            # but we keep the log to what an operator needs.
            log.warning("bulk API unreachable", extra={"error": type(exc).__name__, "method": method})
            raise BulkApiUnreachable(
                "The bulk API is unreachable just now: nothing was sent. Try again in a moment."
            ) from None


async def written(call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """The answer of a form's call of the bulk API: another account's (or a gone)
    registration is the 404 page, an unreachable bulk API the 503 page (not a flash:
    nothing happened and the page says why); any other refusal is raised, to be flashed."""
    try:
        return await call
    except BulkApiUnreachable as exc:
        raise web.HTTPServiceUnavailable(reason=exc.message) from None
    except BulkApiError as exc:
        if exc.status == 404:
            raise web.HTTPNotFound(reason="No such bulk registration in this account") from None
        raise


def bulk_api(resources: Resources, operator: Operator) -> BulkApi:
    """The bulk API with the session's key (unsealed here, kept in memory for this request
    only). SignInRequired when the session holds no key this service can open (signed in
    before FLEETREG_SECRET_KEY was rotated, say)."""
    account = operator.account
    if resources.bulk_http is not None and account.user_id is not None and account.session_id is not None:
        # A person's session holds no key: it forwards who it is, sealed for the bulk API
        # (shared.domain.console_assertions), which checks the session is live per call.
        assertion = console_assertions.issue(
            resources.settings.secret_key.reveal().encode(),
            account_id=account.id,
            user_id=account.user_id,
            role=str(account.role),
            session_id=account.session_id,
            now=time.time(),
        )
        return BulkApi(
            resources.bulk_http,
            resources.settings.console.ingestion_url,
            headers={console_assertions.HEADER: assertion},
        )
    sealed = operator.session.get("sealed_key")
    key_id = operator.account.key_id
    if resources.bulk_http is None or not isinstance(sealed, str) or key_id is None:
        raise SignInRequired("this session cannot reach the bulk API; sign in again", field="session")
    box = SecretBox(resources.settings.secret_key.reveal().encode(), CONSOLE_SESSION_KEYS)
    try:
        key = box.open(key_id, base64.b64decode(sealed, validate=True))
    except (ValueError, binascii.Error):
        raise SignInRequired(
            "this session's key can no longer be opened; sign in again", field="session"
        ) from None
    return BulkApi(resources.bulk_http, resources.settings.console.ingestion_url, key)
