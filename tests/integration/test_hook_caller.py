"""The registration hook's caller (shared/hook_caller.py) against a real local
HTTP server: the signed request and its body, allow, deny and enrichment read from the
answer, and every failure (garbage, 500, a redirect, a timeout, a refused address, a closed
port) reported as one; the per-hook concurrency bound, and the breaker that fails calls at
once while open and lets a trial through after its pause."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook as Verifier

from shared.domain.hooks import HookAnswer, HookRequest
from shared.domain.webhooks import new_secret
from shared.hook_caller import Hook, HookCaller
from tests.support.system import free_port

pytestmark = pytest.mark.integration

SECRET = new_secret()


def _request(n: int = 1) -> HookRequest:
    return HookRequest(
        call_id=f"msg_call{n}",
        request_id=f"0190c0de-0000-7000-8000-{n:012d}",
        hardware_id="B827EB000001",
        fingerprint="f" * 64,
        decision="new",
        assigned_hardware_id="B827EB000001",
        product_id="11111111-1111-1111-1111-111111111111",
        registration_id="22222222-2222-2222-2222-222222222222",
        attestation="code",
        source="203.0.113.7",
        protocol="native",
    )


@dataclass
class Server:
    """A local hook: /allow enriches, /deny refuses, /garbage, /fail (500), /moved, /slow
    (answers after ``release``), /pause (allows after 0.4 s), every request verified and kept."""

    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    found = Server()

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        # Signed as a Standard Webhooks delivery: the package's own check passes.
        payload = Verifier(SECRET).verify(raw, dict(request.headers))
        found.received.append({"path": request.path, "payload": payload, "headers": dict(request.headers)})
        name = request.match_info["name"]
        if name == "allow":
            return web.json_response(
                {"allow": True, "name": "Line 3 unit", "category_a": "plant-7", "data": {"wifi": "factory"}}
            )
        if name == "deny":
            return web.json_response({"allow": False, "reason": "not in our production records"})
        if name == "garbage":
            return web.Response(text="<html>oops</html>")
        if name == "fail":
            return web.json_response({"allow": True}, status=500)
        if name == "moved":
            raise web.HTTPFound("/allow")
        if name == "pause":
            await asyncio.sleep(0.4)
            return web.json_response({"allow": True})
        if name == "split":
            # One answer in two pieces, the second after a pause: a reader taking what has
            # arrived as the whole body would see half of it.
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"allow": true, ')
            await asyncio.sleep(0.2)
            await response.write(b'"name": "Line 3 unit"}')
            await response.write_eof()
            return response
        if name == "slow":
            found.in_flight += 1
            found.most_in_flight = max(found.most_in_flight, found.in_flight)
            await found.release.wait()
            found.in_flight -= 1
            return web.json_response({"allow": True})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post("/{name}", handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    found.port = free_port()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    found.release.set()
    await runner.cleanup()


@pytest.fixture
async def caller() -> AsyncIterator[HookCaller]:
    opened = HookCaller(allow_private=True, concurrency=2)
    await opened.open()
    yield opened
    await opened.close()


def _hook(url: str, key: str = "reg-1", timeout_ms: int = 2000) -> Hook:
    return Hook(key=key, url=url, secret=SECRET, timeout_ms=timeout_ms)


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("fleetreg_hook_calls_total", {"outcome": outcome}) or 0.0


async def test_an_allow_with_enrichment_is_read_from_a_signed_call(
    server: Server, caller: HookCaller
) -> None:
    before = _count("allow")
    result = await caller.call(_hook(server.url("/allow")), _request())
    assert (result.outcome, result.http_status, result.answered) == ("allow", 200, True)
    assert result.answer == HookAnswer(True, "", "Line 3 unit", "plant-7", "", {"wifi": "factory"})
    assert result.latency_ms > 0
    [got] = server.received
    assert got["headers"]["webhook-id"] == "msg_call1"
    assert got["headers"]["Content-Type"] == "application/json"
    data = got["payload"]["data"]
    assert got["payload"]["type"] == "registration.hook"
    assert {k: data[k] for k in ("request_id", "hardware_id", "fingerprint", "decision", "product_id")} == {
        "request_id": "0190c0de-0000-7000-8000-000000000001",
        "hardware_id": "B827EB000001",
        "fingerprint": "f" * 64,
        "decision": "new",
        "product_id": "11111111-1111-1111-1111-111111111111",
    }
    assert SECRET not in json.dumps(got)  # the secret signs; it never travels
    assert _count("allow") == before + 1


async def test_a_deny_keeps_its_reason(server: Server, caller: HookCaller) -> None:
    result = await caller.call(_hook(server.url("/deny")), _request())
    assert (result.outcome, result.answered) == ("deny", True)
    assert result.answer is not None and result.answer.reason == "not in our production records"


@pytest.mark.parametrize(
    ("path", "outcome", "status"),
    [("/garbage", "malformed", 200), ("/fail", "http_error", 500), ("/moved", "redirect", 302)],
)
async def test_garbage_a_500_and_a_redirect_are_failures(
    server: Server, caller: HookCaller, path: str, outcome: str, status: int
) -> None:
    result = await caller.call(_hook(server.url(path)), _request())
    assert (result.outcome, result.http_status, result.answered, result.answer) == (
        outcome,
        status,
        False,
        None,
    )
    assert [r["path"] for r in server.received] == [path]  # the redirect was not followed


async def test_an_answer_sent_in_pieces_is_read_whole(server: Server, caller: HookCaller) -> None:
    result = await caller.call(_hook(server.url("/split")), _request())
    assert (result.outcome, result.answer) == ("allow", HookAnswer(True, name="Line 3 unit"))


async def test_a_slow_hook_times_out_at_its_timeout(server: Server, caller: HookCaller) -> None:
    result = await caller.call(_hook(server.url("/slow"), timeout_ms=200), _request())
    assert (result.outcome, result.answered) == ("timeout", False)
    assert "200 ms" in result.error


async def test_a_private_address_is_refused_without_the_setting_and_never_reached(server: Server) -> None:
    guarded = HookCaller(allow_private=False)
    await guarded.open()
    try:
        for url in (server.url("/allow"), f"http://localhost:{server.port}/allow"):
            result = await guarded.call(_hook(url), _request())
            assert result.outcome == "refused", (url, result)
    finally:
        await guarded.close()
    assert server.received == []


async def test_a_closed_port_is_a_connection_error(caller: HookCaller) -> None:
    result = await caller.call(_hook(f"http://127.0.0.1:{free_port()}/allow"), _request())
    assert (result.outcome, result.answered) == ("error", False)


async def test_at_most_the_bound_of_one_hooks_calls_are_in_flight_and_another_hook_is_not_held(
    server: Server, caller: HookCaller
) -> None:
    slow = [asyncio.create_task(caller.call(_hook(server.url("/slow")), _request(n))) for n in range(5)]
    while server.in_flight < 2:
        await asyncio.sleep(0.01)
    # Another registration's hook answers while this one's calls hold every slot.
    other = await caller.call(_hook(server.url("/allow"), key="reg-2"), _request(9))
    assert other.outcome == "allow" and not any(t.done() for t in slow)
    await asyncio.sleep(0.2)  # time for a call past the bound to reach the server, were it let
    assert server.in_flight == 2
    server.release.set()
    results = await asyncio.gather(*slow)
    assert [r.outcome for r in results] == ["allow"] * 5
    assert server.most_in_flight == 2


async def test_a_call_finding_no_slot_within_its_timeout_is_busy_and_not_held_against_the_hook(
    server: Server,
) -> None:
    single = HookCaller(allow_private=True, concurrency=1, breaker_failures=1)
    await single.open()
    try:
        held = asyncio.create_task(single.call(_hook(server.url("/slow")), _request(1)))
        while server.in_flight < 1:
            await asyncio.sleep(0.01)
        busy = await single.call(_hook(server.url("/slow"), timeout_ms=100), _request(2))
        assert busy.outcome == "busy"
        assert not single.breaker("reg-1").is_open  # the hook was not called: not its failure
        server.release.set()
        assert (await held).outcome == "allow"
    finally:
        await single.close()


async def test_a_call_that_waited_for_a_slot_still_gives_the_hook_its_whole_timeout(
    server: Server,
) -> None:
    """A burst of calls beyond the hook's concurrency (a redial round after an outage): the
    calls that wait for a slot are not cut short by their wait, so a hook answering within
    its timeout is never failed (and its breaker never opened) by its own queue."""
    single = HookCaller(allow_private=True, concurrency=1, breaker_failures=1)
    await single.open()
    try:
        hook = _hook(server.url("/pause"), timeout_ms=600)  # each answer takes 0.4 s
        results = await asyncio.gather(*(single.call(hook, _request(n)) for n in (1, 2)))
        # The second got its slot 0.4 s into its 0.6 s: its answer, 0.4 s later, still counts.
        assert [r.outcome for r in results] == ["allow", "allow"]
        assert not single.breaker("reg-1").is_open
    finally:
        await single.close()


async def test_the_breaker_fails_calls_at_once_while_open_then_tries_one(server: Server) -> None:
    now = [1000.0]
    guarded = HookCaller(allow_private=True, breaker_failures=2, breaker_open_s=10, clock=lambda: now[0])
    await guarded.open()
    try:
        hook = _hook(server.url("/fail"))
        assert [(await guarded.call(hook, _request(n))).outcome for n in (1, 2)] == ["http_error"] * 2
        opened = REGISTRY.get_sample_value("fleetreg_hook_breakers_open") or 0.0
        assert opened >= 1
        result = await guarded.call(hook, _request(3))
        assert (result.outcome, result.latency_ms) == ("breaker_open", 0.0)
        assert len(server.received) == 2  # the hook was not called
        # Another registration's hook is not affected.
        assert (await guarded.call(_hook(server.url("/allow"), key="reg-2"), _request(4))).outcome == "allow"
        now[0] += 10
        # Half-open: one trial reaches the hook; its success closes the breaker.
        trial = await guarded.call(_hook(server.url("/allow")), _request(5))
        assert trial.outcome == "allow" and not guarded.breaker("reg-1").is_open
        assert (REGISTRY.get_sample_value("fleetreg_hook_breakers_open") or 0.0) == opened - 1
    finally:
        await guarded.close()
