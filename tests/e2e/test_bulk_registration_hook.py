"""A bulk registration's hook end to end (docs/registration-hook.md, "Configuration"): set
with the upload or changed later through the bulk API and the CLI, exactly as an auto
registration's (tests/e2e/test_registration_hook.py): its signing secret shown once and
sealed at rest, its URL held to the webhooks' rules, its settings checked with clear 400s,
another account's registration out of reach, the changes in the audit trail."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from shared.db.pool import Pool
from shared.domain import hooks, webhooks
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.support.api import Operator, new_operator
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait
from tests.support.hooks import log_offsets, log_text_since, sealed_secret
from tests.support.system import TEST_SECRET_KEY, System

HOOK = "http://127.0.0.1:9/approve?token=receiver-token"
PATH = "/v1/bulk-registrations"


class BulkApi:
    """The bulk API as one account's key calls it (JSON answers, their status checked)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str) -> None:
        self.session, self.url, self.api_key = session, url, api_key

    async def upload(self, product_id: str, expect: int, **hook: str) -> Any:
        """Upload a CSV of two new devices for ``product_id``, with ``hook`` settings as
        the query parameters they are."""
        async with self.session.post(
            self.url + PATH,
            params={"product_id": product_id, "file_name": "fleet.csv", **hook},
            data=csv_text(csv_rows(2)).encode(),
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "text/csv"},
        ) as response:
            answer = await response.json()
            assert response.status == expect, (response.status, answer)
            return answer

    async def call(self, method: str, path: str, body: Any = None, *, expect: int) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            answer = await response.json()
            assert response.status == expect, (response.status, answer)
            return answer


def _bulk(session: aiohttp.ClientSession, system: System, operator: Operator) -> BulkApi:
    return BulkApi(session, system.bulk_url, operator.api_key)


async def test_a_hook_is_set_on_upload_shown_once_changed_and_removed(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    api = _bulk(session, system, operator)
    created = await api.upload(
        await bulk_product(operator), 201, hook_url=HOOK, hook_timeout_ms="750", hook_failure="open"
    )
    assert (created["hook_url"], created["hook_timeout_ms"], created["hook_failure"]) == (HOOK, 750, "open")
    secret = created["hook_secret"]
    assert secret.startswith("whsec_")
    # Sealed at rest for this registration, as an auto registration's hook secret is.
    sealed = await sealed_secret(pool, created["id"])
    assert sealed is not None and secret.encode() not in sealed
    assert (
        webhooks.SecretBox(TEST_SECRET_KEY.encode(), hooks.HOOK_SECRETS).open(created["id"], sealed) == secret
    )

    shown = await api.call("GET", f"{PATH}/{created['id']}", expect=200)
    listed = await api.call("GET", PATH, expect=200)
    assert "hook_secret" not in shown and secret not in str(listed)
    assert listed["bulk_registrations"][0]["hook_url"] == HOOK
    upload_only = ("hook_secret", "warnings", "warnings_total")
    assert shown == {k: v for k, v in created.items() if k not in upload_only}

    # The policy alone: the URL and its secret are kept, no new secret shown.
    changed = await api.call("PATCH", f"{PATH}/{created['id']}", {"hook_failure": "closed"}, expect=200)
    assert (changed["hook_url"], changed["hook_failure"], "hook_secret" in changed) == (HOOK, "closed", False)
    assert await sealed_secret(pool, created["id"]) == sealed
    # Published, its devices are the ones that will claim: the hook still changes.
    await publish_and_wait(session, system.bulk_url, operator, created["id"])
    moved = await api.call(
        "PATCH", f"{PATH}/{created['id']}", {"hook_url": "http://127.0.0.1:9/v2"}, expect=200
    )
    assert moved["hook_secret"].startswith("whsec_") and moved["hook_secret"] != secret
    assert (moved["status"], moved["hook_url"], moved["hook_timeout_ms"]) == (
        "preregistered",
        "http://127.0.0.1:9/v2",
        750,
    )
    removed = await api.call("PATCH", f"{PATH}/{created['id']}", {"hook_url": None}, expect=200)
    assert removed["hook_url"] is None and "hook_secret" not in removed
    assert await sealed_secret(pool, created["id"]) is None

    # Audited with the URL's host: never its token, never a secret.
    page = await operator.call("GET", f"/v1/audit-events?target_id={created['id']}", expect=200)
    events = list(reversed(page["audit_events"]))
    assert [e["action"] for e in events] == [
        "bulk.uploaded",
        "bulk.hook_changed",
        "bulk.publish_requested",
        "bulk.hook_changed",
        "bulk.hook_changed",
    ]
    assert (events[0]["changes"]["hook_host"], events[0]["changes"]["hook_secret"]) == ("127.0.0.1", "issued")
    assert events[3]["changes"]["hook_secret"] == "issued"
    assert not any(text in str(page) for text in ("receiver-token", secret, moved["hook_secret"]))


async def test_a_registration_without_a_hook_shows_none(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    created = await _bulk(session, system, operator).upload(await bulk_product(operator), 201)
    assert (created["hook_url"], created["hook_timeout_ms"], created["hook_failure"]) == (
        None,
        2000,
        "closed",
    )
    assert "hook_secret" not in created


async def test_another_accounts_registration_is_out_of_reach_and_a_read_only_key_sees_the_host_only(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    api = _bulk(session, system, operator)
    created = await api.upload(await bulk_product(operator), 201, hook_url=HOOK)
    path = f"{PATH}/{created['id']}"
    stranger = await new_operator(session, pool, system.operator_url)
    other = _bulk(session, system, stranger)
    for body in ({"hook_url": None}, {"hook_url": "http://127.0.0.1:9/theirs"}, {"hook_timeout_ms": 60}):
        await other.call("PATCH", path, body, expect=404)
    await other.call("GET", path, expect=404)
    shown = await api.call("GET", path, expect=200)
    assert (shown["hook_url"], shown["hook_timeout_ms"]) == (HOOK, 2000)
    assert await sealed_secret(pool, created["id"]) is not None

    key = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    reader = BulkApi(session, system.bulk_url, key["api_key"])
    assert (await reader.call("GET", path, expect=200))["hook_url"] == "http://127.0.0.1:9/********"
    listed = await reader.call("GET", PATH, expect=200)
    assert [r["hook_url"] for r in listed["bulk_registrations"]] == ["http://127.0.0.1:9/********"]
    await reader.call("PATCH", path, {"hook_url": None}, expect=403)
    assert (await api.call("GET", path, expect=200))["hook_url"] == HOOK


@pytest.mark.parametrize(
    ("hook", "field", "rule"),
    [
        ({"hook_url": "ftp://127.0.0.1/"}, "hook_url", "scheme=http,https"),
        ({"hook_url": "http://user:pw@127.0.0.1/"}, "hook_url", "no-userinfo"),
        ({"hook_url": "http://no-such-host.invalid/"}, "hook_url", "resolvable-host"),
        ({"hook_url": HOOK, "hook_timeout_ms": 49}, "hook_timeout_ms", "range=50..10000"),
        ({"hook_url": HOOK, "hook_timeout_ms": "soon"}, "hook_timeout_ms", "range=50..10000"),
        ({"hook_url": HOOK, "hook_failure": "maybe"}, "hook_failure", "enum=closed,open"),
        ({"hook_timeout_ms": 100}, "hook_url", "required"),
    ],
)
async def test_bad_hook_settings_are_refused_naming_the_field(
    session: aiohttp.ClientSession,
    system: System,
    operator: Operator,
    hook: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    api = _bulk(session, system, operator)
    product_id = await bulk_product(operator)
    answer = await api.upload(product_id, 400, **{k: str(v) for k, v in hook.items()})
    assert (answer["error"], answer["field"], answer["rule"]) == ("invalid_input", field, rule), answer
    assert field in answer["message"]
    assert (await api.call("GET", PATH, expect=200))["bulk_registrations"] == []  # nothing stored
    # The same refusal on a change of a registration without a hook (a timeout alone too).
    created = await api.upload(product_id, 201)
    path = f"{PATH}/{created['id']}"
    changed = await api.call("PATCH", path, hook, expect=400)
    assert (changed["field"], changed["rule"]) == (field, rule)
    assert (await api.call("GET", path, expect=200))["hook_url"] is None


async def test_a_change_takes_the_hooks_settings_only(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    api = _bulk(session, system, operator)
    created = await api.upload(await bulk_product(operator), 201)
    path = f"{PATH}/{created['id']}"
    unknown = await api.call("PATCH", path, {"file_name": "renamed.csv"}, expect=400)
    assert (unknown["field"], unknown["rule"]) == ("file_name", "known_fields")
    empty = await api.call("PATCH", path, {}, expect=400)
    assert (empty["field"], empty["rule"]) == ("hook_url", "required")
    await api.call("PATCH", f"{PATH}/{uuid.uuid4()}", {"hook_failure": "open"}, expect=404)


async def test_a_hook_on_a_private_address_is_refused_where_the_setting_is_off(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    api = _bulk(session, system, operator)
    created = await api.upload(await bulk_product(operator), 201)
    product_id = await bulk_product(operator)
    async with system.instance("ingestion", {"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "false"}) as public_only:
        guarded = BulkApi(session, public_only.url, operator.api_key)
        for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/", "http://localhost/hook"):
            answer = await guarded.upload(product_id, 400, hook_url=url)
            assert (answer["field"], answer["rule"]) == ("hook_url", "public-address"), url
        answer = await guarded.call(
            "PATCH", f"{PATH}/{created['id']}", {"hook_url": "http://10.0.0.7/"}, expect=400
        )
        assert (answer["field"], answer["rule"]) == ("hook_url", "public-address")
    assert [r["id"] for r in (await api.call("GET", PATH, expect=200))["bulk_registrations"]] == [
        created["id"]
    ]
    assert (await api.call("GET", f"{PATH}/{created['id']}", expect=200))["hook_url"] is None


async def test_the_bulk_command_takes_the_hooks_flags(
    system: System, operator: Operator, tmp_path: Any
) -> None:
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(csv_text(csv_rows(2)))
    product_id = await bulk_product(operator)
    code, out, err = await fleetreg(
        operator,
        system,
        "bulk",
        "upload",
        str(fleet),
        "--product",
        product_id,
        "--hook-url",
        HOOK,
        "--hook-timeout-ms",
        "300",
        "--hook-failure",
        "open",
        "--json",
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["hook_secret"].startswith("whsec_") and "shown once" in err
    assert (created["hook_url"], created["hook_timeout_ms"], created["hook_failure"]) == (HOOK, 300, "open")
    shown = await fleetreg_json(operator, system, "bulk", "show", created["id"])
    assert shown["hook_url"] == HOOK and "hook_secret" not in shown
    changed = await fleetreg_json(
        operator, system, "bulk", "update", created["id"], "--hook-timeout-ms", "60"
    )
    assert (changed["hook_timeout_ms"], "hook_secret" in changed) == (60, False)
    moved = await fleetreg_json(
        operator, system, "bulk", "update", created["id"], "--hook-url", HOOK + "&v=2"
    )
    assert moved["hook_secret"].startswith("whsec_") and moved["hook_secret"] != created["hook_secret"]
    removed = await fleetreg_json(operator, system, "bulk", "update", created["id"], "--no-hook")
    assert not any(k.startswith("hook") for k in removed)  # as a registration that never had one
    code, out, err = await fleetreg(operator, system, "bulk", "update", created["id"], "--hook-url", HOOK)
    assert code == 0 and "hook_url" in out and "hook secret: whsec_" in out, err

    code, _, err = await fleetreg(operator, system, "bulk", "update", created["id"], "--hook-timeout-ms", "5")
    assert code == 1 and "hook_timeout_ms" in err and err.count("\n") == 1
    code, _, err = await fleetreg(operator, system, "bulk", "update", created["id"])
    assert code == 2 and "--hook-url" in err
    stranger_id = str(uuid.uuid4())
    code, _, err = await fleetreg(operator, system, "bulk", "update", stranger_id, "--no-hook")
    assert code == 1 and stranger_id in err
    fleet.write_text(csv_text(csv_rows(2)))  # devices of their own: those above are listed
    plain = await fleetreg_json(
        operator, system, "bulk", "upload", str(fleet), "--product", await bulk_product(operator)
    )
    assert not any(k.startswith("hook") for k in plain)  # the output of an upload without one is unchanged


async def test_the_hook_secret_is_never_logged(
    session: aiohttp.ClientSession, system: System, operator: Operator, tmp_path: Any
) -> None:
    offsets = log_offsets()
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(csv_text(csv_rows(2)))
    created = await fleetreg_json(
        operator,
        system,
        "bulk",
        "upload",
        str(fleet),
        "--product",
        await bulk_product(operator),
        "--hook-url",
        HOOK,
    )
    moved = await fleetreg_json(
        operator, system, "bulk", "update", created["id"], "--hook-url", HOOK + "&v=2"
    )
    # Refused changes that echo the secret back: in a field the API does not take, as a URL.
    api = _bulk(session, system, operator)
    path = f"{PATH}/{created['id']}"
    await api.call("PATCH", path, {"hook_secret": moved["hook_secret"]}, expect=400)
    await api.call("PATCH", path, {"hook_url": moved["hook_secret"]}, expect=400)
    text = log_text_since(offsets)
    for secret in (created["hook_secret"], moved["hook_secret"]):
        assert secret[:16] not in text
