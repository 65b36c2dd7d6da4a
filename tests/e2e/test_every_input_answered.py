"""Inputs that once reached Postgres or Python unchecked and ended in a 500 (issue
"Every input answered"): each is now a 4xx naming the field, or the protocol's own
refusal, and whitespace around identifiers is trimmed on the device APIs too."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

import aiohttp
import pytest

from tests.support.api import Operator, provision, register
from tests.support.system import LOGS, System

pytestmark = pytest.mark.e2e


def auth(operator: Operator) -> dict[str, str]:
    return {"Authorization": f"Bearer {operator.api_key}"}


@pytest.mark.parametrize("wrong", [{}, [], 7, None, True])
async def test_a_service_type_of_a_wrong_json_type_is_a_400(operator: Operator, wrong: Any) -> None:
    body = {"name": "p", "services": [{"type": wrong, "port": 22}]}
    answer = await operator.call("POST", "/v1/products", body, expect=400)
    assert answer["field"] == "services[0].type"
    product = await operator.call("POST", "/v1/products", {"name": "q"}, expect=201)
    answer = await operator.call(
        "POST", f"/v1/products/{product['id']}/services", {"type": wrong, "port": 22}, expect=400
    )
    assert answer["field"] == "type"  # the body's own field, not "services[0].type"


@pytest.mark.parametrize("name", ["a\u0000b", "tab\there", "line\nbreak"])
async def test_a_product_name_with_control_characters_is_a_400(operator: Operator, name: str) -> None:
    answer = await operator.call("POST", "/v1/products", {"name": name}, expect=400)
    assert answer["field"] == "name"


@pytest.mark.parametrize("value", ["%00", "a%00b", "%E2%80%AE", "x" * 65])
async def test_a_hardware_id_filter_is_checked_like_a_hardware_id(
    operator: Operator, session: aiohttp.ClientSession, value: str
) -> None:
    async with session.get(f"{operator.url}/v1/devices?hardware_id={value}", headers=auth(operator)) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "hardware_id"


@pytest.mark.parametrize("file_name", ["a%00b", "invoice%E2%80%AEvsc.csv", "x" * 256, "bell%07.csv"])
async def test_an_upload_file_name_is_checked(
    system: System, operator: Operator, session: aiohttp.ClientSession, file_name: str
) -> None:
    product = await operator.call("POST", "/v1/products", {"name": "bulk-p"}, expect=201)
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    url = f"{system.bulk_url}/v1/bulk-registrations?product_id={product['id']}&file_name={file_name}"
    body = b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME\r\nk1k1k1k1k1k1,aa01,one\r\n"
    async with session.post(url, data=body, headers=auth(operator)) as r:
        assert r.status == 400, await r.text()
        assert (await r.json())["field"] == "file_name"
    listed = await operator.call("GET", "/v1/devices?limit=10", expect=200)
    assert listed["devices"] == []


async def test_a_hardware_id_read_from_a_file_is_the_same_device(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = uuid.uuid4().hex[:12]
    first = await register(
        session, system.device_url, " " + code.lower() + "\n", h + "\n", cpu_id="c", mac="m"
    )
    assert first.status == 200 and first.body["hardware_id"] == h
    again = await register(
        session, system.device_url, code, h, secret=first.body["device_secret"], cpu_id="c", mac="m"
    )
    assert again.body["device_id"] == first.body["device_id"] and again.body["decision"] == "same"
    assert [d["hardware_id"] for d in await operator.devices()] == [h]


@pytest.mark.parametrize("odd", ["f" * 36, "-" * 36, "%00", "a%00b", "%E2%80%AE" * 3])
async def test_odd_provisioning_ids_get_the_protocol_s_refusal(
    system: System, session: aiohttp.ClientSession, odd: str
) -> None:
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))
    base = system.compat_url
    async with session.get(f"{base}/project/provisioning/download/{odd}", ssl=ctx) as r:
        assert r.status == 404
    async with session.get(f"{base}/bulk/registration/configuration/{odd}/h/", ssl=ctx) as r:
        assert r.status == 200 and '"status":"false"' in await r.text()
    body = {"project_id": odd.replace("%00", "\u0000"), "hardware_id": "h", "registration_key": "k"}
    async with session.post(f"{base}/bulk/registration/register", json=body, ssl=ctx) as r:
        assert r.status == 200 and '"status":"false"' in await r.text()


async def test_a_nul_in_the_reference_client_s_os_label_is_dropped(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    ctx = ssl.create_default_context(cafile=str(system.tls_ca))
    info = {"BulkIdentificationCode": code, "HardwareId": "nul-os", "CPUId": "c", "OSLabel": "Rasp\u0000bian"}
    async with session.post(
        f"{system.compat_url}/bulk/registration/device/information/", json=info, ssl=ctx
    ) as r:
        assert r.status == 200 and '"status":"true"' in await r.text()


async def test_a_never_issued_request_id_is_unknown_at_once(
    system: System, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{system.device_url}/v1/registrations/{uuid.uuid4()}") as r:
        assert r.status == 400  # not even a request ID's form (version 7)
    async with session.get(f"{system.device_url}/v1/registrations/01ffffff-ffff-7fff-bfff-ffffffffffff") as r:
        assert r.status == 404 and (await r.json())["status"] == "unknown"


async def test_a_clone_of_a_64_character_hardware_id_keeps_working_as_h_1(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    stem = uuid.uuid4().hex * 2  # 64 characters, the limit
    await register(session, system.device_url, code, stem, cpu_id="original", mac="m0")
    clone = await register(session, system.device_url, code, stem, cpu_id="clone", mac="m1")
    assert clone.status == 200 and clone.body["hardware_id"] == f"{stem}-1"
    # The clone adopts H-1 and boots again with it and its secret: the same device, served.
    again = await register(
        session,
        system.device_url,
        code,
        f"{stem}-1",
        cpu_id="clone",
        mac="m1",
        secret=clone.body["device_secret"],
    )
    assert again.status == 200 and again.body["device_id"] == clone.body["device_id"]
    assert again.body["decision"] == "same"
    await provision(session, system.device_url, again.body)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/devices?category_c=x",
        "/v1/devices?sort_by=",
        "/v1/registration-decisions?hardware_id=h",
        "/v1/security-alerts?state=x",
    ],
)
async def test_an_unknown_query_parameter_is_a_400_naming_it(operator: Operator, path: str) -> None:
    """Ignored, a filter the listing does not know would return everything."""
    answer = await operator.call("GET", path, expect=400)
    assert answer["field"] == path.split("?")[1].split("=")[0]
    assert answer["rule"] == "known_parameters"


async def test_a_claimed_length_over_the_upload_limit_is_refused_before_the_body(
    system: System, operator: Operator
) -> None:
    """The e2e system's limit is 1 MiB; a client announcing 10 MiB gets 413 at once, without
    sending (and without the service reading) the body."""
    from urllib.parse import urlsplit

    product = await operator.call("POST", "/v1/products", {"name": "big"}, expect=201)
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    parts = urlsplit(system.bulk_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"POST /v1/bulk-registrations?product_id={product['id']} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {operator.api_key}\r\nContent-Length: {10 * 1024 * 1024}\r\n\r\n".encode()
        + b"REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME\r\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), timeout=10)
    writer.close()
    assert status.split()[1] == b"413"


async def test_one_answer_lists_format_errors_and_whole_file_problems_together(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    """A file with a format error, a hardware ID listed twice and one already in the
    account: all of them in one answer, counted in errors_total, nothing stored."""
    from tests.support.bulk import HEADER, bulk_product, upload

    product_id = await bulk_product(operator)
    taken = uuid.uuid4().hex[:12]
    ok_body = f"{HEADER}\r\nkey-{taken},{taken},Taken,,\r\n".encode()
    status, _ = await upload(session, system.bulk_url, operator, product_id, ok_body)
    assert status == 201  # configured, not published: its hardware IDs are taken
    twice = uuid.uuid4().hex[:12]
    body = (
        f"{HEADER}\r\n"
        f"k-bad-1,has:colon,Bad,,\r\n"  # line 2: format error
        f"k-dup-1,{twice},One,,\r\n"  # line 3
        f"k-dup-2,{twice},Two,,\r\n"  # line 4: listed twice
        f"k-taken,{taken},Again,,\r\n"  # line 5: in another upload not yet published
    ).encode()
    status, answer = await upload(session, system.bulk_url, operator, product_id, body)
    assert status == 422, answer
    lines = sorted({e["line"] for e in answer["errors"]})
    assert lines[0] == 2 and 4 in lines and 5 in lines, answer["errors"]
    assert answer["errors_total"] == len(answer["errors"]) >= 3


async def test_one_key_on_many_rows_is_refused_per_row_and_weak_keys_are_warned(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    from tests.support.bulk import HEADER, bulk_product, upload

    product_id = await bulk_product(operator)
    tag = uuid.uuid4().hex[:6]
    body = f"{HEADER}\r\nsame-key-123,{tag}01,a,,\r\nsame-key-123,{tag}02,b,,\r\nsame-key-123,{tag}03,c,,\r\n"
    status, answer = await upload(session, system.bulk_url, operator, product_id, body.encode())
    assert status == 422
    assert [(e["line"], e["column"], e["value"]) for e in answer["errors"]] == [
        (3, "REGISTRATION_KEY", ""),
        (4, "REGISTRATION_KEY", ""),
    ]
    assert "every device needs a key of its own" in answer["errors"][0]["reason"]
    weak = f"{HEADER}\r\nshort,{tag}04,d,,\r\n{tag}05abcdef,{tag}05abcdef,e,,\r\n9f3a1c77d0e2b4a8,{tag}06,f,,\r\n"
    status, answer = await upload(session, system.bulk_url, operator, product_id, weak.encode())
    assert status == 201
    assert answer["warnings_total"] == 2
    assert [w["line"] for w in answer["warnings"]] == [2, 3]


async def test_two_cases_of_one_hardware_id_are_one_id_everywhere(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    from tests.support.bulk import HEADER, bulk_product, upload

    code = (await operator.product())["bulk_identification_code"]
    upper = uuid.uuid4().hex[:12].upper()
    first = await register(session, system.device_url, code, upper, cpu_id="a", mac="a")
    second = await register(session, system.device_url, code, upper.lower(), cpu_id="b", mac="b")
    assert first.body["hardware_id"] == upper
    assert second.body["clone"] is True and second.body["hardware_id"] == f"{upper}-1"
    found = await operator.devices(hardware_id=upper.lower())
    assert [d["hardware_id"] for d in found] == [upper]

    product_id = await bulk_product(operator)
    h = uuid.uuid4().hex[:12]
    body = f"{HEADER}\r\nkey-aaaaaaaa1,{h},a,,\r\nkey-aaaaaaaa2,{h.upper()},b,,\r\n"
    status, answer = await upload(session, system.bulk_url, operator, product_id, body.encode())
    assert status == 422
    assert [(e["line"], e["reason"]) for e in answer["errors"]] == [
        (3, "duplicate hardware ID: also on line 2")
    ]


async def test_a_nul_in_a_key_label_or_a_device_path_id_is_a_4xx(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    answer = await operator.call("POST", "/v1/api-keys", {"label": "ops\u0000bot"}, expect=400)
    assert answer["field"] == "label"
    for path in ("/v1/devices/%00/manifest", "/v1/devices/a%00b/files/x", "/v1/registrations/%00"):
        async with session.get(system.device_url + path, headers={"Authorization": "Bearer x"}) as r:
            assert 400 <= r.status < 500, (path, r.status)
    async with session.get(f"{operator.url}/v1/devices/%00", headers=auth(operator)) as r:
        assert r.status == 404


async def test_a_bulk_claim_in_another_case_with_a_padded_key_is_the_listed_device(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    from tests.support.bulk import HEADER, bulk_product, publish_and_wait, upload

    product_id = await bulk_product(operator)
    h = uuid.uuid4().hex[:12].upper()
    key = f"key-{uuid.uuid4().hex[:12]}"
    status, uploaded = await upload(
        session, system.bulk_url, operator, product_id, f"{HEADER}\r\n{key},{h},d,,\r\n".encode()
    )
    assert status == 201
    await publish_and_wait(session, system.bulk_url, operator, uploaded["id"])
    product = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    answer = await register(
        session,
        system.device_url,
        product["bulk_identification_code"],
        h.lower(),
        registration_key=f" {key}\n",
    )
    assert answer.status == 200, answer.body
    assert (
        answer.body["hardware_id"] == h and answer.body["clone"] is False and answer.body["decision"] == "new"
    )


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "x-unknown"])
async def test_a_compressed_or_mislabelled_body_is_a_415_on_every_api(
    system: System, operator: Operator, session: aiohttp.ClientSession, coding: str
) -> None:
    """Found by an outsider attack: an uncompressed body labelled gzip was a 500 (aiohttp's
    decompressor failed inside its parser) with a traceback in the log, and br or zstd a
    plain-text 400 before authentication. No API takes a compressed body: 415, as JSON."""
    calls = [
        (system.device_url + "/v1/registrations", {}),
        (system.operator_url + "/v1/products", auth(operator)),
        (system.bulk_url + "/v1/bulk-registrations?product_id=" + str(uuid.uuid4()), auth(operator)),
    ]
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    for url, headers in calls:
        sent = {**headers, "Content-Encoding": coding, "Content-Type": "application/json"}
        async with session.post(url, data=b'{"name": "x"}', headers=sent) as answer:
            assert answer.status == 415, (url, answer.status, await answer.text())
            assert (await answer.json())["field"] == "Content-Encoding"
    logged = "".join(path.read_text(errors="replace")[offsets.get(path, 0) :] for path in LOGS.glob("*.log"))
    assert "Unhandled exception" not in logged and "Traceback" not in logged


@pytest.mark.parametrize(
    "path",
    [
        "/v1/devices?limit=1&limit=2",
        "/v1/devices?state=online&state=offline",
        "/v1/audit-events?action=product.created&action=product.locked",
        "/v1/devices/export?format=csv&format=jsonl",
        "/v1/audit-events?since=2026-12-01T00:00:00%00",
        "/v1/audit-events?until=2026-12-01T00:00:00%0A",
    ],
)
async def test_a_repeated_parameter_or_a_control_character_in_a_time_is_a_400(
    operator: Operator, session: aiohttp.ClientSession, system: System, path: str
) -> None:
    """Found by an outsider attack: the first of two values won, silently, and a time with
    a trailing NUL was taken."""
    async with session.get(system.operator_url + path, headers=auth(operator)) as answer:
        assert answer.status == 400, await answer.text()
        assert (await answer.json())["error"] == "invalid_input"


async def test_the_bulk_listing_refuses_parameters_it_would_ignore(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    async with session.get(system.bulk_url + "/v1/bulk-registrations?limit=-1", headers=auth(operator)) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "limit"
