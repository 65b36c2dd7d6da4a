"""The bulk API under generated files (hypothesis, a bounded number of examples): any
bytes get a 4xx or a 201, never a 5xx; a generated valid file is accepted and its rows
are stored exactly as written; nothing of a rejected file is stored."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.db.pool import Pool
from tests.support.api import Operator
from tests.support.bulk import bulk_product
from tests.support.system import System

pytestmark = pytest.mark.e2e

COLUMNS = ("REGISTRATION_KEY", "HARDWARE_ID", "DEVICE_NAME", "CATEGORY_A", "CATEGORY_B")
SETTINGS = settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
names = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.", max_size=40
).map(str.strip)
categories = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ,\"'", max_size=30).map(str.strip)
rows = st.lists(st.tuples(names, categories, categories), min_size=1, max_size=20)


def upload(url: str, key: str, product_id: str, body: bytes) -> requests.Response:
    return requests.post(
        f"{url}/v1/bulk-registrations",
        params={"product_id": product_id, "file_name": "generated.csv"},
        data=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


async def test_generated_files_never_get_a_server_error(system: System, operator: Operator) -> None:
    product_id = await bulk_product(operator)

    @SETTINGS
    @given(st.binary(max_size=3000) | st.text(max_size=1000).map(str.encode))
    def check(body: bytes) -> None:
        answer = upload(
            system.bulk_url,
            operator.api_key,
            product_id,
            b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME\r\n" + body,
        )
        assert answer.status_code < 500, answer.text
        assert answer.status_code in (201, 400, 413, 422), answer.text

    await asyncio.to_thread(check)


async def test_a_generated_valid_file_is_stored_exactly(
    system: System, operator: Operator, pool: Pool
) -> None:
    product_id = await bulk_product(operator)

    @SETTINGS
    @given(rows)
    def check(generated: list[tuple[str, str, str]]) -> None:
        written = [(uuid.uuid4().hex, uuid.uuid4().hex[:12], name, a, b) for name, a, b in generated]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        writer.writerows(written)
        answer = upload(system.bulk_url, operator.api_key, product_id, out.getvalue().encode())
        assert answer.status_code == 201, answer.text
        registration = answer.json()
        stored = asyncio.run_coroutine_threadsafe(
            pool.fetch(
                "SELECT hardware_id, name, category_a, category_b FROM bulk_rows"
                " WHERE registration_id = $1 ORDER BY line",
                registration["id"],
            ),
            loop,
        ).result(timeout=30)
        assert [tuple(r) for r in stored] == [(h, n or h, a, b) for _, h, n, a, b in written]
        assert registration["rows"] == len(written)

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(check)
