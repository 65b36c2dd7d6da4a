"""Bulk ingestion benchmark: a large CSV (default 1,000,000 rows, about 60 MB) uploaded,
validated and published against the running system, with the ingestion service's
peak memory. Two baselines are measured in the same run (the machine is shared and
noisy; only ratios to them compare across runs):

* Python's csv module reading the same file locally: the cost of looking at every
  row once;
* Postgres ``COPY`` (asyncpg ``copy_records_to_table``) of the same rows, read with
  csv.reader, into a scratch table made ``LIKE devices`` (its columns, defaults,
  generated column and indexes, among them the unique one on the account and the
  lower-cased hardware ID): the cost of writing every row once. Its time includes
  the local csv.reader pass, which is reported on its own too.

``validate_ratio_to_baseline`` and ``publish_ratio_to_baseline`` are the COPY
baseline's time divided by fleetreg's (1.0: as fast as one bare COPY)."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from cli.client import operator_client
from cli.commands.bulk import BULK_URL, CHUNK
from cli.config import load_endpoints, require

OUT = Path("var/bench")
PIDFILE = Path("var/run/ingestion.pid")


def make_csv(rows: int) -> Path:
    path = OUT / f"bulk-{rows}.csv"  # new hardware IDs each run: the last run's are registered
    OUT.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:4]
    with path.open("w", encoding="ascii", newline="") as handle:
        handle.write("REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B\r\n")
        for i in range(rows):
            handle.write(f"{secrets.token_hex(8)},{tag}{i:08x},Sensor {i},site-{i % 50},rack-{i % 7}\r\n")
    return path


def _parse_baseline(path: Path) -> float:
    started = time.perf_counter()
    with path.open(newline="") as handle:
        for _ in csv.reader(handle):
            pass
    return time.perf_counter() - started


COPY_COLUMNS = (
    "id",
    "account_id",
    "product_id",
    "registration_id",
    "hardware_id",
    "claimed_hardware_id",
    "name",
    "category_a",
    "category_b",
    "lifecycle",
    "registration_key_digest",
)


def _copy_records(path: Path) -> Any:
    """The file's rows as devices rows, read with csv.reader while COPY consumes them."""
    account, product, registration = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with path.open(newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        for key, hardware_id, name, category_a, category_b in rows:
            yield (
                uuid.uuid4(),
                account,
                product,
                registration,
                hardware_id,
                hardware_id,
                name,
                category_a,
                category_b,
                "preregistered",
                hashlib.sha256(key.encode()).digest(),  # a 32-byte digest, as fleetreg stores
            )


async def _copy_baseline(path: Path) -> float:
    """Seconds to COPY the file's rows into a scratch table shaped like devices."""
    table = f"bench_copy_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(require(load_endpoints(), "DATABASE_URL"))
    try:
        # LIKE ... INCLUDING ALL: columns, defaults, the generated stem column, the
        # primary key and every index (not the foreign keys: no referenced rows here).
        await conn.execute(f"CREATE TABLE {table} (LIKE devices INCLUDING ALL)")
        started = time.perf_counter()
        await conn.copy_records_to_table(table, records=_copy_records(path), columns=COPY_COLUMNS)
        return time.perf_counter() - started
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


def _memory_kb(field: str) -> int:
    pid = PIDFILE.read_text().strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _chunks(path: Path) -> Any:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk


async def run(rows: int) -> dict[str, Any]:
    path = await asyncio.to_thread(make_csv, rows)
    baseline_s = await asyncio.to_thread(_parse_baseline, path)
    copy_s = await _copy_baseline(path)
    rss_before = _memory_kb("VmRSS")
    async with operator_client() as operator:
        product = await operator.post(
            "/v1/products",
            {"name": f"bench-bulk-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        )
        await operator.post(f"/v1/products/{product['id']}/lock")
    async with operator_client(BULK_URL) as bulk:
        started = time.perf_counter()
        uploaded = await bulk.call(
            "POST",
            "/v1/bulk-registrations",
            params={"product_id": product["id"]},
            data=_chunks(path),
            headers={"Content-Type": "text/csv"},
        )
        upload_s = time.perf_counter() - started
        peak_kb = _memory_kb("VmHWM")
        started = time.perf_counter()
        state = await bulk.post(f"/v1/bulk-registrations/{uploaded['id']}/publish")
        while state["status"] != "preregistered":
            await asyncio.sleep(0.5)
            state = await bulk.get(f"/v1/bulk-registrations/{uploaded['id']}")
        publish_s = time.perf_counter() - started
    return {
        "rows": rows,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "baseline_local_csv_parse_s": round(baseline_s, 2),
        "baseline_copy_s": round(copy_s, 2),
        "validate_s": round(upload_s, 2),
        "publish_s": round(publish_s, 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "validate_ratio_to_baseline": round(copy_s / upload_s, 2),
        "publish_ratio_to_baseline": round(copy_s / publish_s, 2),
        "upload_and_validate_s": round(upload_s, 2),
        "upload_rows_per_s": round(rows / upload_s),
        "publish_rows_per_s": round(rows / publish_s),
        "upload_to_baseline_ratio": round(upload_s / baseline_s, 2),
        "ingestion_rss_before_mb": round(rss_before / 1024, 1),
        "ingestion_peak_rss_mb": round(peak_kb / 1024, 1),
        "published": state["published"],
        "conflicts": state["conflicts"],
    }
