"""The fleetreg command against the running system: stable JSON shapes, readable
tables, exit codes and one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from tests.support.api import Operator
from tests.support.bulk import HEADER, csv_rows, csv_text
from tests.support.system import ROOT, System


async def fleetreg(operator: Operator, system: System, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "FLEETREG_ENDPOINTS_FILE": "/nonexistent",  # only what this test gives
        "FLEETREG_ADMIN_URL": system.operator_url,
        "FLEETREG_ADMIN_TOKEN": operator.api_key,
        "FLEETREG_DEVICE_URL": system.device_url,
        "FLEETREG_BULK_URL": system.bulk_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,  # no terminal to confirm on, as in a script
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def fleetreg_json(operator: Operator, system: System, *args: str) -> Any:
    code, out, err = await fleetreg(operator, system, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_product_auto_and_devices_commands(system: System, operator: Operator) -> None:
    product = await fleetreg_json(
        operator,
        system,
        "product",
        "create",
        "--name",
        "gateway",
        "--service",
        "ssh:22",
        "--service",
        "web:80:disabled",
    )
    assert product["status"] == "new"
    assert [(s["type"], s["port"], s["enabled"]) for s in product["services"]] == [
        ("rmt3", 65535, True),
        ("ssh", 22, True),
        ("web", 80, False),
    ]
    locked = await fleetreg_json(operator, system, "product", "lock", product["id"])
    assert locked["status"] == "locked"
    assert len(locked["bulk_identification_code"]) == 36 and len(locked["product_code"]) == 36
    assert locked["bulk_identification_code"] != locked["product_code"]
    listed = await fleetreg_json(operator, system, "product", "list")
    assert [p["id"] for p in listed["products"]] == [product["id"]]

    auto = await fleetreg_json(operator, system, "auto", "create", "--product", product["id"])
    assert set(auto) == {
        "id",
        "product_id",
        "status",
        "bulk_identification_code",
        "max_devices",
        "attestation",
        "device_count",
    }
    assert (auto["status"], auto["bulk_identification_code"]) == (
        "active",
        locked["bulk_identification_code"],
    )
    paused = await fleetreg_json(operator, system, "auto", "pause", auto["id"])
    assert paused["status"] == "paused"
    resumed = await fleetreg_json(operator, system, "auto", "resume", auto["id"])
    assert resumed["status"] == "active"
    rotated = await fleetreg_json(operator, system, "auto", "rotate-code", auto["id"])
    assert rotated["bulk_identification_code"] != auto["bulk_identification_code"]

    summary = await fleetreg_json(
        operator,
        system,
        "simulate",
        "--devices",
        "40",
        "--clone-rate",
        "0.25",
        "--concurrency",
        "10",
        "--code",
        rotated["bulk_identification_code"],
        "--seed",
        "7",
    )
    assert (summary["devices"], summary["provisioned"], summary["errors"]) == (40, 40, 0)
    assert summary["clones_detected"] == 10
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["throughput_per_s"] > 0
    assert summary["retries"] == sum(summary["retry_kinds"].values())
    assert summary["devices_retried"] <= 40
    assert set(summary["time_to_provisioned_s"]) == {"p50", "p95", "p99"}
    assert 0 < summary["time_to_provisioned_s"]["p50"] <= summary["time_to_provisioned_s"]["p99"]

    devices = (await fleetreg_json(operator, system, "devices", "list"))["devices"]
    assert len(devices) == 40
    assert {"id", "hardware_id", "name", "state", "product_id"} <= set(devices[0])
    assert len(set(d["hardware_id"] for d in devices)) == 40
    limited = (await fleetreg_json(operator, system, "devices", "list", "--limit", "3"))["devices"]
    assert [d["id"] for d in limited] == sorted(d["id"] for d in devices)[:3]
    one = devices[0]
    found = await fleetreg_json(operator, system, "devices", "list", "--hardware-id", one["hardware_id"])
    assert [d["id"] for d in found["devices"]] == [one["id"]]

    disabled = await fleetreg_json(operator, system, "devices", "disable", one["id"])
    assert disabled["devices"][0]["state"] == "disabled"
    assert [
        d["id"]
        for d in (await fleetreg_json(operator, system, "devices", "list", "--state", "disabled"))["devices"]
    ] == [one["id"]]
    other = devices[1]
    reset = await fleetreg_json(operator, system, "devices", "reset", other["id"])
    assert reset["devices"][0]["lifecycle"] == "preregistered"
    shown = await fleetreg_json(operator, system, "devices", "show", other["id"])
    assert [e["kind"] for e in shown["history"]][-1] == "reset"

    code, out, _ = await fleetreg(operator, system, "devices", "list")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "id",
        "hardware",
        "id",
        "name",
        "state",
        "category",
        "a",
        "category",
        "b",
        "product",
    ]
    assert "40 device(s)" in out


async def test_errors_exit_non_zero_with_one_line(system: System, operator: Operator) -> None:
    code, out, err = await fleetreg(
        operator, system, "product", "lock", "00000000-0000-0000-0000-000000000000"
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and "404" in err and "no product" in err
    code, _, err = await fleetreg(operator, system, "product", "create", "--name", "x", "--service", "ssh")
    assert code == 1 and "TYPE:PORT" in err
    # An ID is checked before any call (it goes into URL paths): a usage error naming it.
    code, _, err = await fleetreg(operator, system, "auto", "create", "--product", "nope")
    assert code == 2 and "argument --product: 'nope' is not an ID" in err
    code, _, err = await fleetreg(operator, system, "auto", "pause", "../api-keys?label=x")
    assert code == 2 and "is not an ID" in err
    keys = (await operator.call("GET", "/v1/api-keys", expect=200))["api_keys"]
    assert [k["label"] for k in keys].count("x") == 0


async def test_bulk_upload_publish_show_and_simulate(
    system: System, operator: Operator, tmp_path: Any
) -> None:
    product = await fleetreg_json(
        operator, system, "product", "create", "--name", "sensors", "--service", "tcp:9000"
    )
    await fleetreg_json(operator, system, "product", "lock", product["id"])
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\r\nk1,aa01,=evil(),,\r\nk2,aa01,ok,,\r\n")
    code, out, err = await fleetreg(
        operator, system, "bulk", "upload", str(bad), "--product", product["id"], "--json"
    )
    assert code == 1 and "rejected" in err
    document = json.loads(out)
    assert [(e["line"], e["column"]) for e in document["errors"]] == [(2, "DEVICE_NAME")]
    assert set(document["errors"][0]) == {"line", "column", "value", "reason"}
    code, out, _ = await fleetreg(operator, system, "bulk", "upload", str(bad), "--product", product["id"])
    assert code == 1 and "DEVICE_NAME" in out and "formula" in out  # a readable table of the bad rows
    # More problems than the report lists (FLEETREG_BULK_MAX_REPORTED_ERRORS, 1,000): it says so.
    many = tmp_path / "many.csv"
    many.write_text(HEADER + "\r\n" + "".join(f"k{i:08d},ab{i:06x},=x(),,\r\n" for i in range(1100)))
    code, out, _ = await fleetreg(operator, system, "bulk", "upload", str(many), "--product", product["id"])
    assert code == 1 and "the first 1000 of 1100 problems are shown" in out

    good = tmp_path / "fleet.csv"
    good.write_text(csv_text(csv_rows(30)))
    uploaded = await fleetreg_json(operator, system, "bulk", "upload", str(good), "--product", product["id"])
    assert {"id", "product_id", "status", "rows"} <= set(uploaded)
    assert (uploaded["status"], uploaded["rows"]) == ("configured", 30)
    published = await fleetreg_json(operator, system, "bulk", "publish", uploaded["id"], "--wait")
    assert (published["status"], published["published"]) == ("preregistered", 30)
    shown = await fleetreg_json(operator, system, "bulk", "show", uploaded["id"])
    assert shown["status"] == "preregistered"
    listed = await fleetreg_json(operator, system, "bulk", "list")
    assert [b["id"] for b in listed["bulk_registrations"]] == [uploaded["id"]]
    offline = await fleetreg_json(operator, system, "devices", "list", "--state", "offline")
    assert len(offline["devices"]) == 30

    summary = await fleetreg_json(
        operator, system, "simulate", "--bulk", uploaded["id"], "--csv", str(good), "--concurrency", "10"
    )
    assert (summary["devices"], summary["provisioned"], summary["errors"]) == (30, 30, 0)


async def test_keys_and_audit_commands(system: System, operator: Operator) -> None:
    """A read-only key made with the CLI reads but cannot change anything; the audit trail
    lists the key's creation and revocation with the key that did them."""
    issued = await fleetreg_json(operator, system, "keys", "create", "--label", "grafana", "--read-only")
    assert (issued["label"], issued["read_only"]) == ("grafana", True)
    reader = Operator(operator.session, operator.url, issued["api_key"], operator.account_id)
    code, out, _ = await fleetreg(reader, system, "keys", "list")
    assert code == 0 and "grafana" in out and "read-only" in out and issued["api_key"] not in out
    # Another's key is an admin's to revoke (its own it may: docs/security.md, "Roles").
    listed = (await fleetreg_json(operator, system, "keys", "list"))["api_keys"]
    first = next(k["id"] for k in listed if k["label"] == "first key")
    code, _, err = await fleetreg(reader, system, "keys", "revoke", first)
    assert code == 1 and "403" in err and "admin" in err and len(err.strip().splitlines()) == 1
    # It may make keys of its own role only (docs/security.md, "Roles").
    code, _, err = await fleetreg(reader, system, "keys", "create", "--label", "up", "--role", "operator")
    assert code == 1 and "403" in err and len(err.strip().splitlines()) == 1

    await fleetreg_json(operator, system, "keys", "revoke", issued["id"])
    events = (await fleetreg_json(operator, system, "audit", "list", "--target", issued["id"]))[
        "audit_events"
    ]
    code, table_out, _ = await fleetreg(operator, system, "audit", "list", "--action", "api_key.created")

    assert [e["action"] for e in events] == ["api_key.revoked", "api_key.created"]
    assert {e["api_key_label"] for e in events} == {"first key"}
    assert code == 0 and "api_key.created" in table_out and "grafana" in table_out
    assert "api_key.revoked" not in table_out  # the filter holds
    code, _, err = await fleetreg(operator, system, "audit", "list", "--since", "yesterday")
    assert code == 1 and "since" in err


async def test_the_no_quota_note_is_for_code_attestation_only(system: System, operator: Operator) -> None:
    """'anyone holding the code can register any number of devices' is true of `code` only."""
    for attestation, noted in (("code", True), ("x509", False), ("derived_key", False)):
        product = await fleetreg_json(operator, system, "product", "create", "--name", f"n-{attestation}")
        await fleetreg_json(operator, system, "product", "lock", product["id"])
        code, _, err = await fleetreg(
            operator, system, "auto", "create", "--product", product["id"], "--attestation", attestation
        )
        assert code == 0 and ("no --max-devices" in err) == noted, (attestation, err)
