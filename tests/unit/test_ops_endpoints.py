"""The operations port: its settings, the routes on it and not on the service's app, and
the shared result that keeps readiness and the console's pipeline health to one
computation a second (shared/cache.py). No I/O: a stepped clock, mocked requests."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.intake.settings import IntakeSettings
from shared.cache import SharedResult
from shared.errors import TooManyRequests
from shared.http import READINESS, READINESS_PROBE, base_app, ops_app
from shared.settings import Env, HttpSettings, SettingsError, load
from shared.throttle import Throttle, ThrottleSettings

REQUIRED = {
    "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    "DATABASE_URL": "postgresql://u:pw@h/db",
    "FLEETREG_SECRET_KEY": "k" * 40,
}


def http(environ: dict[str, str], service: str = "dedup", default_port: int = 18082) -> HttpSettings:
    def factory(env: Env) -> HttpSettings:
        return HttpSettings.from_env(env, "FLEETREG_HTTP", default_port, service=service)

    return load(factory, environ)


# ------------------------------------------------------------------------- settings ----
def test_the_ops_port_is_the_service_port_plus_100_unless_set() -> None:
    assert http({}).ops_port == 18182
    assert http({"FLEETREG_HTTP_PORT": "9000"}).ops_port == 9100
    assert http({"FLEETREG_DEDUP_OPS_PORT": "9999"}).ops_port == 9999
    # another service's variable is not this one's
    assert http({"FLEETREG_INTAKE_OPS_PORT": "9999"}).ops_port == 18182
    assert http({"FLEETREG_HTTP_PORT": "0"}).ops_port == 0  # an ephemeral port, as the API's


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FLEETREG_DEDUP_OPS_PORT": "18082"}, "FLEETREG_DEDUP_OPS_PORT=18082 is the service's own port"),
        ({"FLEETREG_DEDUP_OPS_PORT": "70000"}, "FLEETREG_DEDUP_OPS_PORT=70000 is not a TCP port"),
        ({"FLEETREG_HTTP_PORT": "65500"}, "FLEETREG_DEDUP_OPS_PORT=65600 is not a TCP port"),
        ({"FLEETREG_DEDUP_OPS_PORT": "ops"}, "FLEETREG_DEDUP_OPS_PORT='ops' is not a whole number"),
    ],
)
def test_a_bad_ops_port_is_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        http(environ)


def test_the_intake_ops_port_may_not_be_its_https_port() -> None:
    environ = {
        **REQUIRED,
        "FLEETREG_TLS_CERT": "/c.pem",
        "FLEETREG_TLS_KEY": "/k.pem",
        "FLEETREG_COMPAT_PORT": "18180",
    }
    with pytest.raises(SettingsError, match="FLEETREG_INTAKE_OPS_PORT=18180 is also FLEETREG_COMPAT_PORT"):
        load(IntakeSettings.from_env, environ)
    assert load(IntakeSettings.from_env, {**environ, "FLEETREG_COMPAT_PORT": "18443"}).http.ops_port == 18180


# --------------------------------------------------------------------------- routes ----
OPS_PATHS = ("/healthz", "/readyz", "/metrics")


def _resolves(app: web.Application, path: str) -> bool:
    return any(
        route.method == "GET" and route.resource is not None and route.resource.canonical == path
        for route in app.router.routes()
    )


def test_health_readiness_and_metrics_are_on_the_ops_app_only() -> None:
    app = base_app("dedup")
    ops = ops_app(app)
    for path in OPS_PATHS:
        assert _resolves(ops, path), path
        assert not _resolves(app, path), f"{path} is still on the public app"
    # nothing else is reachable there (add_get adds each path's HEAD too)
    assert {r.resource.canonical for r in ops.router.routes() if r.resource} == set(OPS_PATHS)


async def _readyz(ops: web.Application) -> tuple[int, Any]:
    import orjson

    handler = next(r.handler for r in ops.router.routes() if r.resource and r.resource.canonical == "/readyz")
    response = await handler(make_mocked_request("GET", "/readyz", app=ops))
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    return response.status, orjson.loads(response.body)


async def test_readyz_asks_the_database_once_for_any_number_of_probes() -> None:
    app = base_app("dedup")
    queries = 0

    async def database() -> bool:
        nonlocal queries
        queries += 1
        await asyncio.sleep(0)
        return True

    app[READINESS]["consumer"] = True
    app[READINESS_PROBE] = database
    ops = ops_app(app)
    answers = await asyncio.gather(*(_readyz(ops) for _ in range(500)))
    assert queries == 1
    assert {status for status, _ in answers} == {200}
    assert answers[0][1] == {"ready": True, "parts": {"consumer": True, "database": True}}
    # A component's own flag is read live, not from the cache: a stopped consumer shows at once.
    app[READINESS]["consumer"] = False
    status, body = await _readyz(ops)
    assert (status, body["parts"]) == (503, {"consumer": False, "database": True})
    assert queries == 1


async def test_a_failing_database_probe_is_not_ready_and_not_a_500() -> None:
    app = base_app("dedup")

    async def database() -> bool:
        raise OSError("connection refused")

    app[READINESS]["pool"] = True
    app[READINESS_PROBE] = database
    status, body = await _readyz(ops_app(app))
    assert (status, body) == (503, {"ready": False, "parts": {"pool": True, "database": False}})


async def test_a_database_that_stops_answering_is_not_ready_rather_than_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blackholed registry: the probe's query never returns (the driver gives up after
    30 s). /readyz answers 503 after READINESS_TIMEOUT_SECONDS instead of holding every
    probe until then."""
    monkeypatch.setattr("shared.http.READINESS_TIMEOUT_SECONDS", 0.05)
    app = base_app("dedup")
    driver_gave_up = asyncio.Event()

    async def database() -> bool:
        try:
            await asyncio.Event().wait()  # never answers
        finally:
            # Cancelling a query on a silent connection lasts until the driver gives up.
            await driver_gave_up.wait()
        return True

    app[READINESS]["pool"] = True
    app[READINESS_PROBE] = database
    status, body = await asyncio.wait_for(_readyz(ops_app(app)), timeout=10)
    assert (status, body) == (503, {"ready": False, "parts": {"pool": True, "database": False}})
    driver_gave_up.set()
    await asyncio.sleep(0.01)  # the abandoned query ends


# -------------------------------------------------------------------- shared result ----
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(result: Callable[[int], Any] = lambda n: n) -> tuple[Callable[[], Any], list[int]]:
    calls: list[int] = []

    async def compute() -> Any:
        calls.append(len(calls) + 1)
        await asyncio.sleep(0.01)  # long enough for every concurrent caller to arrive
        return result(len(calls))

    return compute, calls


async def test_concurrent_callers_share_one_computation() -> None:
    compute, calls = counting()
    shared = SharedResult(compute, 1.0, Clock())
    assert await asyncio.gather(*(shared.get() for _ in range(1000))) == [1] * 1000
    assert calls == [1]


async def test_the_result_is_kept_for_its_period_then_computed_again() -> None:
    clock = Clock()
    compute, calls = counting()
    shared = SharedResult(compute, 1.0, clock)
    assert await shared.get() == 1
    clock.now += 0.99
    assert await shared.get() == 1
    clock.now += 0.02
    assert await shared.get() == 2
    assert calls == [1, 2]


async def test_none_is_a_result_like_any_other() -> None:
    compute, calls = counting(lambda _: None)
    shared = SharedResult(compute, 1.0, Clock())
    assert await shared.get() is None
    assert await shared.get() is None
    assert calls == [1]


async def test_a_failed_computation_is_not_kept() -> None:
    failures = iter([RuntimeError("down"), None])

    async def compute() -> str:
        failure = next(failures)
        if failure is not None:
            raise failure
        return "up"

    shared = SharedResult(compute, 1.0, Clock())
    with pytest.raises(RuntimeError, match="down"):
        await shared.get()
    assert await shared.get() == "up"


async def test_a_cancelled_caller_does_not_cancel_the_others_computation() -> None:
    compute, calls = counting()
    shared = SharedResult(compute, 1.0, Clock())
    impatient = asyncio.create_task(shared.get())
    patient = asyncio.create_task(shared.get())
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == 1
    assert impatient.cancelled()
    assert calls == [1]


def test_a_negative_period_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        SharedResult(functools.partial(asyncio.sleep, 0), -1.0)


# ------------------------------------------------------------------ console sessions ----
async def test_a_console_key_past_its_rate_is_refused_and_remembered_until_its_window_frees() -> None:
    throttle = Throttle(
        ThrottleSettings.from_env(Env({"FLEETREG_LIMIT_REQUESTS_PER_KEY": "5/minute"})), "test"
    )
    for _ in range(5):
        await throttle.check_console_key("key-one")
    assert throttle.console_key_wait("key-one") is None  # at the limit, not past it
    with pytest.raises(TooManyRequests) as raised:
        await throttle.check_console_key("key-one")
    assert raised.value.rule == "requests_per_key" and raised.value.retry_after >= 1
    # the console refuses the key's sessions from memory until the window frees a request
    wait = throttle.console_key_wait("key-one")
    assert wait is not None and 1 <= wait <= 60
    # another key's sessions, and the same key's own API calls, are counted apart
    assert throttle.console_key_wait("key-two") is None
    await throttle.check_console_key("key-two")
    await throttle.check_key("key-one")
