"""Bad bulk uploads: each rejected whole with every bad row named (line, column, value,
reason), and the registry exactly as before."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.api import Operator, register
from tests.support.bulk import HEADER, bulk_call, bulk_product, csv_rows, csv_text, upload
from tests.support.system import System

Snapshot = Callable[[], Awaitable[tuple[Any, ...]]]


@pytest.fixture
def registry_of(pool: Pool, operator: Operator) -> Snapshot:
    """Everything an upload could have written for this test's account."""

    async def snapshot() -> tuple[Any, ...]:
        account = operator.account_id
        return (
            await pool.fetchval("SELECT count(*) FROM devices WHERE account_id = $1", account),
            await pool.fetchval(
                "SELECT count(*) FROM registrations WHERE account_id = $1 AND kind = 'bulk'", account
            ),
            await pool.fetchval(
                "SELECT count(*) FROM bulk_rows b JOIN registrations r ON r.id = b.registration_id "
                "WHERE r.account_id = $1",
                account,
            ),
            await pool.fetchval(
                "SELECT registration_kind FROM products WHERE account_id = $1 LIMIT 1", account
            ),
        )

    return snapshot


def _text(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


CASES: list[tuple[str, bytes, int, list[tuple[int, str, str]]]] = [
    (
        "wrong column order",
        _text("HARDWARE_ID,REGISTRATION_KEY,DEVICE_NAME,CATEGORY_A,CATEGORY_B", "a,b,c,,"),
        422,
        [(1, "", "wrong order")],
    ),
    (
        "missing column",
        _text("REGISTRATION_KEY,DEVICE_NAME", "k,n"),
        422,
        [(1, "", "missing column HARDWARE_ID")],
    ),
    ("too many fields", _text(HEADER, "k1,aa01,n,,", "k2,aa02,n,,,extra"), 422, [(3, "", "6 fields")]),
    (
        "unterminated quote",
        _text(HEADER, "k1,aa01,n,,", 'k2,"aa02,n,,'),
        422,
        [(3, "", "unterminated quote")],
    ),
    ("non-ascii", _text(HEADER, "k1,aa01,Caf\u00e9,,"), 422, [(2, "DEVICE_NAME", "only ASCII")]),
    ("empty file", b"", 422, [(1, "", "empty")]),
    ("header only", _text(HEADER), 422, [(2, "", "no data rows")]),
    ("binary file", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 422, [(1, "", "")]),
    (
        "duplicate in the file",
        _text(HEADER, "k1,aa01,n,,", "k2,aa02,n,,", "k3,aa01,n,,"),
        422,
        [(4, "HARDWARE_ID", "also on line 2")],
    ),
    (
        "formula in a name",
        _text(HEADER, "k1,aa01,=HYPERLINK(x),,", "k2,aa02,@SUM(1),,", "k3,aa03,+1,,"),
        422,
        [(2, "DEVICE_NAME", "formula"), (3, "DEVICE_NAME", "formula"), (4, "DEVICE_NAME", "formula")],
    ),
    (
        "bad hardware id and key",
        _text(HEADER, "k 1,aa:01,n,,"),
        422,
        [(2, "REGISTRATION_KEY", "without spaces"), (2, "HARDWARE_ID", "ASCII letters")],
    ),
    (
        "over the row limit",
        _text(HEADER, *(f"k{i},{i:08x},n,," for i in range(20001))),
        413,
        [(20002, "", "row limit")],
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_a_bad_file_is_rejected_whole_and_changes_nothing(
    system: System,
    session: aiohttp.ClientSession,
    operator: Operator,
    registry_of: Snapshot,
    case: str,
    body: bytes,
    status: int,
    expected: list[tuple[int, str, str]],
) -> None:
    product_id = await bulk_product(operator)
    before = await registry_of()
    answer_status, answer = await upload(session, system.bulk_url, operator, product_id, body)
    assert answer_status == status, answer
    assert answer["errors_total"] == len(expected)
    got = [(e["line"], e["column"], e["reason"]) for e in answer["errors"]]
    for (line, column, reason_part), (got_line, got_column, got_reason) in zip(expected, got, strict=True):
        assert (got_line, got_column) == (line, column), got
        assert reason_part in got_reason, got
    assert "nothing was stored" in answer["message"]
    assert await registry_of() == before


async def test_a_file_over_the_size_limit_is_refused_with_the_limit_named(
    system: System, session: aiohttp.ClientSession, operator: Operator, registry_of: Snapshot
) -> None:
    product_id = await bulk_product(operator)
    before = await registry_of()
    big = csv_text(csv_rows(40000)).encode()  # about 1.5 MB; the e2e limit is 1 MiB
    status, answer = await upload(session, system.bulk_url, operator, product_id, big)
    assert status == 413
    assert answer["rule"] == f"max_bytes={1024 * 1024}"
    assert await registry_of() == before


async def test_a_hardware_id_already_in_the_account_is_rejected_at_upload(
    system: System, session: aiohttp.ClientSession, operator: Operator, registry_of: Snapshot
) -> None:
    auto = await operator.product()
    assert (
        await register(session, system.device_url, auto["bulk_identification_code"], "cafe0001")
    ).status == 200
    product_id = await bulk_product(operator)
    before = await registry_of()
    status, answer = await upload(
        session, system.bulk_url, operator, product_id, _text(HEADER, "k1,cafe0002,n,,", "k2,cafe0001,n,,")
    )
    assert status == 422
    assert [(e["line"], e["value"], e["reason"]) for e in answer["errors"]] == [
        (3, "cafe0001", "hardware ID already registered in this account")
    ]
    assert await registry_of() == before


async def test_every_bad_row_is_listed_not_only_the_first(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    lines = [HEADER] + [f"k{i},aa{i:04d},{'=x' if i % 2 else 'ok'},," for i in range(50)]
    status, answer = await upload(session, system.bulk_url, operator, product_id, _text(*lines))
    assert status == 422
    assert answer["errors_total"] == 25
    assert [e["line"] for e in answer["errors"]] == list(range(3, 52, 2))


async def test_the_bulk_api_needs_an_api_key(system: System, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{system.bulk_url}/v1/bulk-registrations") as response:
        assert response.status == 401


async def test_publishing_twice_or_an_unknown_registration(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    status, _ = await bulk_call(
        session,
        system.bulk_url,
        operator,
        "POST",
        "/v1/bulk-registrations/00000000-0000-0000-0000-000000000000/publish",
    )
    assert status == 404
