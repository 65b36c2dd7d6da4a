"""``run_fleet`` against a small fake device API on a local port that fails calls the
way a restarting intake does (reset connections, 503 with Retry-After, 429, 500): every
device still ends provisioned, retries are counted by kind, and a device facing a
permanent fault gives up at its deadline. Time is a fake clock (no real waiting); no
broker or database is needed."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cli.simulate import RunOptions, Summary, plan_fleet, run_fleet
from tests.support.fake_time import FakeTime

CODE = "2513F28C-13AD-BEBE-7329-D70C2F5F34A6"
FAULTS = ("reset", "503", "429", "500")  # the first calls of each route fail, in this order


@dataclass
class FakeDeviceApi:
    """The native device API's happy path: a registration is pending, then ready on its
    first poll; one file per device. ``faults[route]`` is the list of faults the next
    calls of that route meet first."""

    faults: dict[str, list[str]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    keys: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    devices: dict[str, str] = field(default_factory=dict)  # idempotency key -> device ID
    requests: dict[str, dict[str, str]] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)

    @web.middleware
    async def inject(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.name or "?"
        self.calls[route] += 1
        pending = self.faults.get(route)
        fault = pending.pop(0) if pending else None
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()  # never reaches the device: the connection is gone
        if fault == "503":
            return web.json_response({"error": "unavailable"}, status=503, headers={"Retry-After": "5"})
        if fault == "429":
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "3"})
        if fault == "500":
            return web.Response(status=500, text="<html>oops</html>")
        return await handler(request)

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers["Idempotency-Key"]
        hardware_id = body["hardware_id"]
        self.keys[hardware_id].add(key)
        device_id = self.devices.setdefault(key, str(uuid.uuid4()))
        request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
        self.requests[request_id] = {"device_id": device_id, "hardware_id": hardware_id}
        return web.json_response(
            {"status": "pending", "request_id": request_id}, status=202, headers={"Retry-After": "1"}
        )

    async def poll(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        known = self.requests[request_id]
        device_id, hardware_id = known["device_id"], known["hardware_id"]
        return web.json_response(
            {
                "status": "ready",
                "request_id": request_id,
                "device_id": device_id,
                "hardware_id": hardware_id,
                "claimed_hardware_id": hardware_id,
                "clone": False,
                "manifest_url": f"/v1/devices/{device_id}/manifest",
                "device_secret": f"secret-{device_id}",
            }
        )

    @staticmethod
    def _file(device_id: str) -> bytes:
        return f"# provisioning\n#begin\n{device_id}\n".encode()

    async def manifest(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        hardware_id = next(r["hardware_id"] for r in self.requests.values() if r["device_id"] == device_id)
        content = self._file(device_id)
        entry = {
            "url": f"/v1/devices/{device_id}/files/ssh",
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "provisioning_id": device_id,
        }
        return web.json_response({"device_id": device_id, "hardware_id": hardware_id, "files": [entry]})

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file(request.match_info["device_id"]))

    async def ready(self, request: web.Request) -> web.Response:
        self.confirmed.add(request.match_info["device_id"])
        return web.json_response({"status": "accepted"}, status=202)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.inject])
        app.router.add_post("/v1/registrations", self.register, name="register")
        app.router.add_get("/v1/registrations/{request_id}", self.poll, name="poll")
        app.router.add_get("/v1/devices/{device_id}/manifest", self.manifest, name="manifest")
        app.router.add_get("/v1/devices/{device_id}/files/{service}", self.file, name="file")
        app.router.add_post("/v1/devices/{device_id}/ready", self.ready, name="ready")
        return app


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[FakeDeviceApi], Awaitable[str]]]:
    servers: list[TestServer] = []

    async def start(api: FakeDeviceApi) -> str:
        server = TestServer(api.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def _run(url: str, devices: int, time_: FakeTime, deadline_s: float, lost: float = 0.0) -> Summary:
    plan = plan_fleet(CODE, devices, clone_rate=0.0, lost_response_rate=lost, seed=3)
    options = RunOptions(
        request_timeout_s=5.0, deadline_s=deadline_s, max_backoff_s=4.0, clock=time_.clock, sleep=time_.sleep
    )
    return await run_fleet(plan, url, concurrency=4, options=options)


async def test_every_device_is_provisioned_through_resets_503s_429s_and_500s(
    serve: Callable[[FakeDeviceApi], Awaitable[str]],
) -> None:
    routes = ("register", "poll", "manifest", "file", "ready")
    api = FakeDeviceApi(faults={route: list(FAULTS) for route in routes})
    time_ = FakeTime()
    summary = await _run(await serve(api), devices=12, time_=time_, deadline_s=100_000.0, lost=0.25)

    assert (summary.provisioned, summary.errors, summary.error_kinds) == (12, 0, {})
    assert len(api.confirmed) == 12
    # One retry per injected fault, counted by kind: each of the five routes met each fault
    # once. aiohttp itself sends a GET again, once, when its kept-alive connection turns out
    # closed, so only the two POSTs' resets (register, ready) are sure to reach the device.
    kinds = dict(summary.retry_kinds)
    assert 2 <= kinds.pop("connection") <= 5
    assert kinds == {"http_503": 5, "http_429": 5, "http_500": 5}
    assert summary.retries == sum(summary.retry_kinds.values())
    assert 1 <= summary.devices_retried <= 12
    assert all(summary.time_to_provisioned_s[p] is not None for p in ("p50", "p95", "p99"))
    # Retry-After was honoured: some waits were at least the 5 s and 3 s asked for.
    assert sum(1 for wait in time_.waits if wait >= 5.0) >= 5
    # Every send of a device's registration, retries included, carried its one key: one device each.
    assert all(len(keys) == 1 for keys in api.keys.values()) and len(api.keys) == 12
    assert len(api.devices) == 12


async def test_a_device_facing_a_permanent_500_gives_up_at_its_deadline(
    serve: Callable[[FakeDeviceApi], Awaitable[str]],
) -> None:
    api = FakeDeviceApi(faults={"register": ["500"] * 10_000})
    time_ = FakeTime()
    summary = await _run(await serve(api), devices=1, time_=time_, deadline_s=60.0)

    assert (summary.provisioned, summary.errors, summary.error_kinds) == (0, 1, {"http_5xx": 1})
    assert summary.retry_kinds == {"http_500": api.calls["register"] - 1}
    assert api.calls["register"] > 5  # it kept trying...
    assert time_.now < 60.0  # ...and started no call at or after its deadline
    assert summary.time_to_provisioned_s == {"p50": None, "p95": None, "p99": None}


async def test_a_refusal_is_final(serve: Callable[[FakeDeviceApi], Awaitable[str]]) -> None:
    api = FakeDeviceApi()

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"status": "refused", "reason": "blocked"}, status=403)

    api.register = refuse  # type: ignore[method-assign]  # this fake API refuses every device
    time_ = FakeTime()
    summary = await _run(await serve(api), devices=2, time_=time_, deadline_s=60.0)
    assert summary.error_kinds == {"refused": 2}
    assert summary.retries == 0 and time_.waits == []
