"""The operator API's routes, handlers and views, each alone: a route is a top-level
function that authenticates, calls one handler and answers with a view; handlers apply
the domain's rules to the repositories' records; views shape JSON (no database here)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from unittest import mock

import pytest
from aiohttp import HttpVersion10, web
from aiohttp.test_utils import make_mocked_request

from services.operator import exports
from services.operator.exports import EXPORT_RETRY_AFTER_S, ExportSlots
from services.operator.handlers import devices as device_handlers
from services.operator.handlers import products as product_handlers
from services.operator.resources import RESOURCES, Resources
from services.operator.routes import devices as device_routes
from services.operator.routes import products as product_routes
from services.operator.settings import OperatorSettings
from services.operator.views import devices as device_views
from services.operator.views import products as product_views
from shared import http
from shared.db import devices
from shared.db.devices import Device
from shared.db.pool import Pool
from shared.db.products import Product, ProductService
from shared.domain.accounts import Account
from shared.domain.devices import online_cutoff
from shared.errors import TooManyRequests
from shared.settings import DatabaseSettings, HttpSettings, Secret

OPERATOR = Path(exports.__file__).parent
SETTINGS = OperatorSettings(
    http=HttpSettings(host="127.0.0.1", port=0),
    database=DatabaseSettings(url=Secret("postgresql://x@localhost/x"), pool_min=1, pool_max=1),
    online_ttl_s=300,
    page_limit_max=1000,
    log_level="INFO",
)
ACCOUNT = Account("a0000000-0000-4000-8000-000000000000", "acme")
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PRODUCT_ID = "b0000000-0000-4000-8000-000000000000"


def product(status: str = "locked") -> Product:
    return Product(
        id=PRODUCT_ID,
        name="gateway",
        status="locked" if status == "locked" else "new",
        product_code="PC1" if status == "locked" else None,
        registration_kind=None,
        created_at=NOW,
        bulk_identification_code="CODE1" if status == "locked" else None,
        services=(
            ProductService(
                id="c0000000-0000-4000-8000-00000000000a",
                position=0,
                name="bulk",
                service_type="rmt3",
                type_code=35,
                port=65535,
                enabled=True,
                is_bulk_service=True,
            ),
        ),
    )


def _fleet(pool: Pool) -> device_handlers.Fleet:
    return device_handlers.Fleet(pool, ACCOUNT, online_ttl_s=300)


def request(method: str, path: str, **match_info: str) -> web.Request:
    app = web.Application()
    app[RESOURCES] = Resources(SETTINGS, pool=object())  # type: ignore[arg-type]
    return make_mocked_request(
        method, path, app=app, match_info=match_info, headers={"Authorization": "Bearer k"}
    )


async def test_a_route_is_testable_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    async def account_for(
        key: str, pool: object, *, write: bool = False, role: object = None, request: object = None
    ) -> Account:
        assert key == "k"
        return ACCOUNT

    calls: list[tuple[Any, ...]] = []

    async def get_product(pool: object, account: Account, product_id: str) -> Product:
        calls.append((account, product_id))
        return product()

    monkeypatch.setattr(http, "account_for", account_for)
    monkeypatch.setattr(product_handlers, "get_product", get_product)
    response = await product_routes.get_product(
        request("GET", f"/v1/products/{PRODUCT_ID}", product_id=PRODUCT_ID)
    )
    assert response.status == 200
    assert calls == [(ACCOUNT, PRODUCT_ID)]
    assert response.text is not None
    assert json.loads(response.text) == {
        "id": PRODUCT_ID,
        "name": "gateway",
        "status": "locked",
        "registration_kind": None,
        "created_at": NOW.isoformat(),
        "services": [
            {
                "provisioning_id": "C0000000-0000-4000-8000-00000000000A",
                "name": "bulk",
                "type": "rmt3",
                "type_code": 35,
                "port": 65535,
                "enabled": True,
                "bulk_service": True,
            }
        ],
        "bulk_identification_code": "CODE1",
        "product_code": "PC1",
    }


def test_a_new_product_shows_no_codes() -> None:
    shown = product_views.product(product("new"))
    assert "bulk_identification_code" not in shown
    assert "product_code" not in shown


def device(device_id: str, *, last_seen_at: datetime | None, disabled: bool = False) -> Device:
    return Device(
        id=device_id,
        hardware_id="HW",
        claimed_hardware_id="HW",
        name="",
        category_a="",
        category_b="",
        lifecycle="provisioned",
        disabled=disabled,
        product_id=PRODUCT_ID,
        registration_id="d0000000-0000-4000-8000-000000000000",
        created_at=NOW - timedelta(days=1),
        registered_at=None,
        provisioned_at=None,
        last_seen_at=last_seen_at,
        credential_generation=1,
    )


async def test_the_device_listing_filters_and_shows_at_one_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}
    found = [
        device("1", last_seen_at=NOW - timedelta(seconds=299)),
        device("2", last_seen_at=NOW - timedelta(seconds=300)),
        device("3", last_seen_at=NOW, disabled=True),
    ]

    async def search_devices(pool: object, account_id: str, search: Any, **kwargs: Any) -> list[Device]:
        asked.update(kwargs, search=search)
        return found

    async def count_devices(pool: object, account_id: str, search: Any, **kwargs: Any) -> devices.DeviceCount:
        assert kwargs["online_cutoff"] == asked["online_cutoff"]  # the page and its count at one moment
        return devices.DeviceCount(12, exact=True)

    monkeypatch.setattr(devices, "search_devices", search_devices)
    monkeypatch.setattr(devices, "count_devices", count_devices)
    page = await device_handlers.list_devices(
        device_handlers.Fleet(cast(Pool, object()), ACCOUNT, online_ttl_s=300, now=NOW),
        {"state": "offline", "limit": "3"},
        page_limit_max=1000,
        count_exact_max=10_000,
    )
    assert asked["online_cutoff"] == online_cutoff(NOW, 300) == NOW - timedelta(seconds=300)
    assert (asked["search"].state, asked["limit"]) == ("offline", 3)
    assert [(d.device.id, d.state, d.online) for d in page.devices] == [
        ("1", "online", True),
        ("2", "offline", False),
        ("3", "disabled", False),
    ]
    assert (page.total, page.total_exact) == (12, True)
    assert page.next_after == "3"
    shown = device_views.device_page(page)
    assert [(d["state"], d["online"], d["last_seen_at"]) for d in shown["devices"]] == [  # type: ignore[attr-defined]
        ("online", True, (NOW - timedelta(seconds=299)).isoformat()),
        ("offline", False, (NOW - timedelta(seconds=300)).isoformat()),
        ("disabled", False, NOW.isoformat()),
    ]


async def test_an_export_beyond_the_instances_limit_is_a_429_before_it_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each export holds a database connection for its length: with every slot taken, one
    more is refused at once (429, Retry-After, the limit named) and reads nothing."""

    from shared.errors import TooManyRequests

    async def account_for(
        key: str, pool: object, *, write: bool = False, role: object = None, request: object = None
    ) -> Account:
        assert write is False  # a read-only key may export
        return ACCOUNT

    def export_devices(*args: object, **kwargs: object) -> object:
        raise AssertionError("nothing is read for a refused export")

    monkeypatch.setattr(http, "account_for", account_for)
    monkeypatch.setattr(device_handlers, "export_devices", export_devices)
    app = web.Application()
    slots = ExportSlots(SETTINGS.exports_max)
    held = contextlib.ExitStack()
    for n in range(SETTINGS.exports_max):
        held.enter_context(slots.take(f"another-account-{n}"))
    app[RESOURCES] = Resources(SETTINGS, pool=object(), export_slots=slots)  # type: ignore[arg-type]
    refused = make_mocked_request(
        "GET", "/v1/devices/export?format=csv", app=app, headers={"Authorization": "Bearer k"}
    )
    with pytest.raises(TooManyRequests) as caught:
        await device_routes.export_devices(refused)
    assert caught.value.rule == f"exports_max={SETTINGS.exports_max}"
    assert caught.value.headers() == {"Retry-After": str(EXPORT_RETRY_AFTER_S)}
    held.close()


def test_an_account_runs_one_export_at_a_time_and_a_finished_one_frees_its_slot() -> None:
    slots = ExportSlots(limit=3)
    with slots.take("a"):
        with pytest.raises(TooManyRequests) as caught, slots.take("a"):
            pass
        assert caught.value.rule == "exports_per_account=1"
        with slots.take("b"), slots.take("c"):
            with pytest.raises(TooManyRequests) as full, slots.take("d"):
                pass
            assert full.value.rule == "exports_max=3"
    with slots.take("a"), slots.take("d"):  # every slot was given back, even after the refusals
        pass


async def test_an_export_whose_client_stops_reading_is_ended_and_its_connection_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write waits while the client's buffers are full; past stall_seconds without a byte
    taken from the transport's buffer the export ends, the snapshot is released (the context manager exits) and the connection is closed."""
    released = []

    @contextlib.asynccontextmanager
    async def export_devices(*args: object, **kwargs: object) -> Any:
        async def batches() -> Any:
            yield []

        try:
            yield batches
        finally:
            released.append(True)

    async def never_drains(self: web.StreamResponse, data: bytes) -> None:
        await asyncio.Event().wait()

    async def prepared(self: web.StreamResponse, request: web.Request) -> None:
        return None

    monkeypatch.setattr(device_handlers, "export_devices", export_devices)
    monkeypatch.setattr(web.StreamResponse, "write", never_drains)
    monkeypatch.setattr(web.StreamResponse, "prepare", prepared)
    transport = mock.Mock()
    transport.get_write_buffer_size.return_value = 70_000  # what waits for the client, never taken
    transport.get_extra_info.return_value = None  # no socket: the buffer alone
    request = make_mocked_request("GET", "/v1/devices/export", transport=transport)
    never_read = cast(Pool, None)  # export_devices, the only user of the pool, is replaced above

    # (without the stall limit the export would wait forever: the outer bound makes that a failure)
    await asyncio.wait_for(exports.stream(request, _fleet(never_read), {}, "csv", stall_seconds=0.05), 10)

    assert released == [True]
    transport.close.assert_called_once()


async def test_a_write_the_client_takes_slowly_is_not_cut_however_long_it_lasts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 22: the stall limit is progress, not the time one write takes. A write lasting
    eight times stall_seconds while the client takes a few bytes at a time completes."""
    transport = mock.Mock()
    transport.get_extra_info.return_value = None
    transport.get_write_buffer_size.return_value = 100_000

    async def slowly_taken() -> None:
        for _ in range(40):  # 0.4 s, a few bytes taken every 10 ms
            await asyncio.sleep(0.01)
            transport.get_write_buffer_size.return_value -= 10

    await exports._unstalled(slowly_taken(), transport, stall_seconds=0.05)

    async def never_taken() -> None:
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(exports._unstalled(never_taken(), transport, stall_seconds=0.05), 5)


async def test_an_http_1_0_export_that_would_not_match_its_counted_length_is_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over HTTP/1.0 the export's length is counted on a first reading of the snapshot. A
    second reading that came out longer would be cut at the length by aiohttp, a short
    export looking whole: it is cut before the length instead, the connection closed."""
    readings = iter([[b"ab"], [b"abc"]])  # what each reading renders: 2 bytes, then 3

    @contextlib.asynccontextmanager
    async def export_devices(*args: object, **kwargs: object) -> Any:
        async def read() -> Any:
            for piece in next(readings):
                yield piece

        yield read

    written: list[bytes] = []

    async def write(self: web.StreamResponse, data: bytes) -> None:
        written.append(data)

    async def prepared(self: web.StreamResponse, request: web.Request) -> None:
        return None

    monkeypatch.setattr(device_handlers, "export_devices", export_devices)
    monkeypatch.setattr(device_views, "export_header", lambda chosen: b"")
    monkeypatch.setattr(device_views, "export_lines", lambda batch, chosen: batch)
    monkeypatch.setattr(web.StreamResponse, "write", write)
    monkeypatch.setattr(web.StreamResponse, "prepare", prepared)
    transport = mock.Mock()
    transport.get_extra_info.return_value = None
    transport.get_write_buffer_size.return_value = 0
    request = make_mocked_request("GET", "/v1/devices/export", version=HttpVersion10, transport=transport)

    response = await exports.stream(request, _fleet(cast(Pool, None)), {}, "csv", stall_seconds=1)

    assert response.content_length == 2 and b"".join(written) == b""  # nothing past the length
    transport.close.assert_called_once()
