"""Device search, counts and export through the running operator API and CLI (issue 13):
over 10,000 bulk-registered devices, filters, sorts, keyset paging and the total agree with
direct registry queries, and the CSV and JSON-lines exports are the listing; bad input is a
400 naming the parameter; a read-only key may search and export; another account's devices
never appear."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from shared.db.pool import Pool
from tests.e2e.test_cli import fleetreg
from tests.support.api import Operator
from tests.support.bulk import HEADER, bulk_product, publish_and_wait, upload
from tests.support.system import System

FLEET = 10_000


async def _get(session: aiohttp.ClientSession, operator: Operator, path: str, query: dict[str, str]) -> Any:
    headers = {"Authorization": f"Bearer {operator.api_key}"}
    async with session.get(f"{operator.url}{path}?{urlencode(query)}", headers=headers) as response:
        body = await response.read()
        return response.status, response.headers, body


async def _list_all(
    session: aiohttp.ClientSession, operator: Operator, query: dict[str, str], limit: int = 1000
) -> tuple[list[dict[str, Any]], list[tuple[int, bool]]]:
    """Every page of a search: the devices, and (total, total_exact) of each page."""
    found: list[dict[str, Any]] = []
    totals: list[tuple[int, bool]] = []
    after: str | None = None
    while True:
        params = {**query, "limit": str(limit), **({"after": after} if after else {})}
        status, _, body = await _get(session, operator, "/v1/devices", params)
        assert status == 200, body
        page = json.loads(body)
        found.extend(page["devices"])
        totals.append((page["total"], page["total_exact"]))
        after = page["next_after"]
        if after is None:
            return found, totals


async def _fleet(session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool) -> str:
    """FLEET devices of one bulk registration with categories, then a variety of lifecycle
    steps, times and disabled devices (as registrations and heartbeats would leave them);
    returns the hardware-ID tag."""
    tag = uuid.uuid4().hex[:6]
    lines = [HEADER]
    for i in range(FLEET):
        name = f"{'Kiosk' if i % 3 == 0 else 'kiosk' if i % 3 == 1 else 'Gate'} {i % 400}"
        lines.append(f"key-{tag}-{i},{tag}{i:06x},{name},site-{i % 7},batch_{i % 3}")
    product_id = await bulk_product(operator)
    body = ("\r\n".join(lines) + "\r\n").encode()
    status, registration = await upload(session, system.bulk_url, operator, product_id, body)
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    now = datetime.now(UTC)
    await pool.execute(
        """UPDATE devices SET
               lifecycle = CASE WHEN n % 4 = 0 THEN 'preregistered' WHEN n % 4 = 1 THEN 'registered'
                                ELSE 'provisioned' END,
               registered_at = CASE WHEN n % 4 <> 0 THEN $2::timestamptz - (n % 50) * interval '1 minute' END,
               -- seen 0-2 or 10-19 minutes ago: far from the 5-minute online TTL while the test runs
               last_seen_at = CASE WHEN n % 4 >= 2 THEN $2::timestamptz - (CASE WHEN n % 20 < 10 THEN n % 3
                                                                   ELSE n % 20 END) * interval '1 minute' END,
               disabled = n % 41 = 0
           FROM (SELECT id AS device_id, row_number() OVER (ORDER BY hardware_id) AS n
                   FROM devices WHERE account_id = $1) AS numbered
           WHERE devices.id = numbered.device_id""",
        operator.account_id,
        now,
    )
    return tag


async def test_search_count_paging_and_export_agree_with_the_registry(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    tag = await _fleet(session, system, operator, pool)
    now = datetime.now(UTC)
    since = (now - timedelta(minutes=10)).isoformat()
    account = operator.account_id
    # (query, the same search written directly in SQL on the registry: $1 is the account)
    cases: list[tuple[dict[str, str], str, list[Any]]] = [
        ({}, "SELECT id::text FROM devices WHERE account_id = $1 ORDER BY id", []),
        (
            {"category_a": "site-3", "sort": "hardware_id"},
            """SELECT id::text FROM devices WHERE account_id = $1 AND category_a = 'site-3'
               ORDER BY lower(hardware_id) COLLATE "C", id""",
            [],
        ),
        (
            {"name_prefix": "KIOSK 1", "category_b": "batch_1", "sort": "name", "order": "desc"},
            """SELECT id::text FROM devices WHERE account_id = $1 AND lower(name) LIKE 'kiosk 1%'
               AND category_b = 'batch_1' ORDER BY lower(name) COLLATE "C" DESC, id DESC""",
            [],
        ),
        (
            {"hardware_id_prefix": f"{tag.upper()}001", "sort": "created_at", "order": "desc"},
            """SELECT id::text FROM devices WHERE account_id = $1 AND lower(hardware_id) LIKE $2 || '001%'
               ORDER BY created_at DESC, id DESC""",
            [tag],
        ),
        (
            {"state": "online", "sort": "last_seen_at", "order": "desc"},
            """SELECT id::text FROM devices WHERE account_id = $1 AND NOT disabled
               AND lifecycle = 'provisioned' AND last_seen_at > now() - interval '300 seconds'
               ORDER BY last_seen_at DESC, id DESC""",
            [],
        ),
        (
            {"registered_since": since, "lifecycle": "registered", "sort": "registered_at"},
            """SELECT id::text FROM devices WHERE account_id = $1 AND registered_at >= $2::timestamptz
               AND lifecycle = 'registered' ORDER BY registered_at, id""",
            [now - timedelta(minutes=10)],
        ),
        (
            {"state": "disabled", "seen_before": now.isoformat()},
            """SELECT id::text FROM devices WHERE account_id = $1 AND disabled
               AND last_seen_at < $2::timestamptz ORDER BY id""",
            [now],
        ),
    ]
    for query, sql, args in cases:
        expected = [r["id"] for r in await pool.fetch(sql, account, *args)]
        assert len(expected) > 0, query  # every case matches something: agreement is not vacuous
        found, totals = await _list_all(session, operator, query)
        assert [d["id"] for d in found] == expected, query
        assert totals[0] == (len(expected), True), query  # at most FLEETREG_COUNT_EXACT_MAX: exact
        assert len(set(totals)) == 1  # every page counts the same search
    # the whole fleet is exactly the threshold: still exact; a smaller page size pages the same
    everything, totals = await _list_all(session, operator, {"sort": "name"}, limit=777)
    assert len(everything) == FLEET and totals[0] == (FLEET, True)
    assert len({d["id"] for d in everything}) == FLEET
    # a cursor of one sort is refused by another
    status, _, body = await _get(session, operator, "/v1/devices", {"sort": "name", "limit": "5"})
    cursor = json.loads(body)["next_after"]
    status, _, body = await _get(session, operator, "/v1/devices", {"sort": "hardware_id", "after": cursor})
    assert (status, json.loads(body)["field"], json.loads(body)["rule"]) == (400, "after", "cursor")

    # The exports are the listing: same devices, order and fields.
    listed, _ = await _list_all(session, operator, {"category_a": "site-2", "sort": "hardware_id"})
    status, headers, body = await _get(
        session, operator, "/v1/devices/export", {"category_a": "site-2", "sort": "hardware_id"}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == 'attachment; filename="devices.csv"'
    assert (headers["Cache-Control"], headers["X-Content-Type-Options"]) == ("no-store", "nosniff")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    assert [r["id"] for r in rows] == [d["id"] for d in listed]
    for row, device in zip(rows, listed, strict=True):
        for column, value in row.items():
            shown = device[column]
            assert value == (
                "" if shown is None else str(shown).lower() if isinstance(shown, bool) else shown
            )
    status, headers, body = await _get(session, operator, "/v1/devices/export", {"format": "jsonl"})
    assert status == 200 and headers["Content-Type"].startswith("application/jsonl")
    exported = [json.loads(line) for line in body.decode().splitlines()]
    by_id, _ = await _list_all(session, operator, {})
    assert len(exported) == FLEET
    assert exported == by_id

    # The CLI's export: the same file, its progress on stderr.
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "site-2.csv"
        code, out, err = await fleetreg(
            operator,
            system,
            "devices",
            "export",
            "--format",
            "csv",
            "--category-a",
            "site-2",
            "--sort",
            "hardware_id",
            "--output",
            str(target),
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["devices"] == len(listed)
        assert "exporting" in err
        assert [r["id"] for r in csv.DictReader(io.StringIO(target.read_text(), newline=""))] == [
            d["id"] for d in listed
        ]
        assert not (Path(folder) / "site-2.csv.partial").exists()


async def test_the_cli_lists_with_filters_categories_and_the_total(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    tag = uuid.uuid4().hex[:6]
    lines = [HEADER, *(f"k{tag}{i},{tag}{i:04x},Unit {i},north,rack {i % 2}" for i in range(30))]
    product_id = await bulk_product(operator)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, ("\r\n".join(lines) + "\r\n").encode()
    )
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    code, out, err = await fleetreg(
        operator,
        system,
        "devices",
        "list",
        "--category-b",
        "rack 1",
        "--sort",
        "name",
        "--limit",
        "4",
        "--json",
    )
    assert code == 0, err
    listed = json.loads(out)
    assert (listed["total"], listed["total_exact"], len(listed["devices"])) == (15, True, 4)
    assert all(d["category_b"] == "rack 1" for d in listed["devices"])
    code, out, err = await fleetreg(operator, system, "devices", "list", "--category-a", "north")
    assert code == 0, err
    assert "category a" in out and "north" in out and "30 device(s) shown of 30 matching" in out
    code, out, err = await fleetreg(operator, system, "devices", "show", listed["devices"][0]["id"])
    assert code == 0, err
    assert "category_b" in out and "rack 1" in out
    code, _, err = await fleetreg(operator, system, "devices", "list", "--seen-since", "last tuesday")
    assert code != 0 and "seen_since" in err


BAD_QUERIES: list[tuple[str, str]] = [
    ("category_c=x", "category_c"),
    ("sort=password", "sort"),
    ("sort=name%3B%20DROP%20TABLE%20devices", "sort"),
    ("order=sideways", "order"),
    ("state=asleep", "state"),
    ("lifecycle=online", "lifecycle"),
    ("product_id=1%20OR%201%3D1", "product_id"),
    ("registration_id=%00", "registration_id"),
    ("hardware_id_prefix=ab%25", "hardware_id_prefix"),
    ("hardware_id_prefix=%00", "hardware_id_prefix"),
    ("name_prefix=%C3%A9t%C3%A9", "name_prefix"),
    ("name_prefix=" + "a" * 200, "name_prefix"),
    ("category_a=a%00b", "category_a"),
    ("category_a=" + "x" * 101, "category_a"),
    ("registered_since=yesterday", "registered_since"),
    ("seen_before=9999-12-31T23:59:59-05:00", "seen_before"),
    ("seen_since=2026-13-01", "seen_since"),
]
LIST_ONLY: list[tuple[str, str]] = [
    ("limit=0", "limit"),
    ("limit=99999999999999999999999", "limit"),
    ("limit=ten", "limit"),
    ("after=zzz", "after"),
    ("sort=name&after=zzz", "after"),
    ("sort=name&after=" + "A" * 600, "after"),
    (
        "sort=hardware_id&after=eyJzIjoibmFtZSIsIm8iOiJhc2MiLCJrIjoiYSIsImkiOiIwMDAwMDAwMC0wMDAwLTAwMDAtMDAwMC0wMDAwMDAwMDAwMDAifQ",
        "after",
    ),
    ("format=csv", "format"),
]
EXPORT_ONLY: list[tuple[str, str]] = [("format=xml", "format"), ("limit=10", "limit"), ("after=x", "after")]


async def test_bad_search_input_is_a_400_naming_the_parameter(operator: Operator) -> None:
    for path, cases in (
        ("/v1/devices", BAD_QUERIES + LIST_ONLY),
        ("/v1/devices/export", BAD_QUERIES + EXPORT_ONLY),
    ):
        for query, field in cases:
            headers = {"Authorization": f"Bearer {operator.api_key}"}
            async with operator.session.get(f"{operator.url}{path}?{query}", headers=headers) as response:
                body = await response.json()
                assert response.status == 400, (path, query, body)
                assert body["field"] == field and body["error"] == "invalid_input", (path, query, body)


async def test_a_read_only_key_searches_and_exports_and_another_account_sees_nothing(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    from tests.support.api import new_operator

    tag = uuid.uuid4().hex[:6]
    lines = [HEADER, *(f"k{tag}{i},{tag}{i:04x},Unit {i},east,," for i in range(12))]
    product_id = await bulk_product(operator)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, ("\r\n".join(lines) + "\r\n").encode()
    )
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    issued = await operator.call("POST", "/v1/api-keys", {"label": "auditor", "read_only": True}, expect=201)
    reader = Operator(session, operator.url, issued["api_key"], operator.account_id)
    found, totals = await _list_all(
        session, reader, {"hardware_id_prefix": tag, "sort": "hardware_id"}, limit=5
    )
    assert len(found) == 12 and totals[0] == (12, True)
    status, _, body = await _get(
        session, reader, "/v1/devices/export", {"format": "jsonl", "category_a": "east"}
    )
    assert status == 200 and len(body.splitlines()) == 12

    stranger = await new_operator(session, pool, system.operator_url)
    for query in ({"hardware_id": f"{tag}0000"}, {"hardware_id_prefix": tag}, {"category_a": "east"}):
        theirs, totals = await _list_all(session, stranger, query)
        assert theirs == [] and totals[0] == (0, True)
    status, _, body = await _get(
        session, stranger, "/v1/devices/export", {"format": "csv", "hardware_id_prefix": tag}
    )
    assert status == 200 and body.decode().splitlines()[1:] == []
    mine = found[0]
    status, _, body = await _get(
        session,
        stranger,
        "/v1/devices",
        {"registration_id": mine["registration_id"], "product_id": mine["product_id"]},
    )
    assert status == 200 and json.loads(body)["devices"] == []


async def test_above_the_threshold_the_total_is_an_estimate_flagged_as_such(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    """An operator instance with FLEETREG_COUNT_EXACT_MAX=10: 30 matching devices are
    counted as an estimate of at least 11, flagged ``total_exact: false``; 10 are exact."""
    tag = uuid.uuid4().hex[:6]
    lines = [
        HEADER,
        *(f"k{tag}{i},{tag}{i:04x},Unit {i},{'west' if i < 10 else 'south'},," for i in range(30)),
    ]
    product_id = await bulk_product(operator)
    status, registration = await upload(
        session, system.bulk_url, operator, product_id, ("\r\n".join(lines) + "\r\n").encode()
    )
    assert status == 201, registration
    await publish_and_wait(session, system.bulk_url, operator, registration["id"])
    small = await system.add_instance("operator", {"FLEETREG_COUNT_EXACT_MAX": "10"})
    try:
        counted = Operator(session, small.url, operator.api_key, operator.account_id)
        found, totals = await _list_all(session, counted, {"hardware_id_prefix": tag}, limit=7)
        assert len(found) == 30
        total, exact = totals[0]
        assert exact is False and total >= 11
        _, totals = await _list_all(session, counted, {"hardware_id_prefix": tag, "category_a": "west"})
        assert totals[0] == (10, True)
    finally:  # an instance of this test's own: stopped here, not left to the session
        small.stop()
        system.extra.remove(small)
