"""Bulk ingestion benchmark: a large CSV (default 1,000,000 rows, about 60 MB) uploaded,
validated and published against the running system, with the ingestion service's
peak memory. The baseline, measured in the same run, is Python's csv module reading
the same file locally: the irreducible cost of looking at every row once."""

from __future__ import annotations

import asyncio
import csv
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from cli.client import operator_client
from cli.commands.bulk import BULK_URL, CHUNK

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
        "upload_and_validate_s": round(upload_s, 2),
        "publish_s": round(publish_s, 2),
        "upload_rows_per_s": round(rows / upload_s),
        "publish_rows_per_s": round(rows / publish_s),
        "upload_to_baseline_ratio": round(upload_s / baseline_s, 2),
        "ingestion_rss_before_mb": round(rss_before / 1024, 1),
        "ingestion_peak_rss_mb": round(peak_kb / 1024, 1),
        "published": state["published"],
        "conflicts": state["conflicts"],
    }
