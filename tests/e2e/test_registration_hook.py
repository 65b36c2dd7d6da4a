"""The registration hook's configuration end to end (docs/registration-hook.md): set on an
auto registration through the API and the CLI, its signing secret shown once and sealed
at rest, its URL held to the webhooks' rules, its settings checked with clear 400s."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from shared.db.pool import Pool
from shared.domain import hooks, webhooks
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.support.api import Operator
from tests.support.hooks import log_offsets, log_text_since, sealed_secret
from tests.support.system import TEST_SECRET_KEY, System

HOOK = "http://127.0.0.1:9/approve?token=receiver-token"


async def _locked_product(operator: Operator) -> str:
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"p-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    product_id: str = product["id"]
    return product_id


async def test_a_hook_is_set_shown_once_changed_and_removed(operator: Operator, pool: Pool) -> None:
    product_id = await _locked_product(operator)
    created = await operator.call(
        "POST",
        "/v1/auto-registrations",
        {"product_id": product_id, "hook_url": HOOK, "hook_timeout_ms": 750, "hook_failure": "open"},
        expect=201,
    )
    assert (created["hook_url"], created["hook_timeout_ms"], created["hook_failure"]) == (HOOK, 750, "open")
    secret = created["hook_secret"]
    assert secret.startswith("whsec_")
    # Sealed at rest for this registration, as a webhook's secret is (its own purpose).
    sealed = await sealed_secret(pool, created["id"])
    assert sealed is not None and secret.encode() not in sealed
    box = webhooks.SecretBox(TEST_SECRET_KEY.encode(), hooks.HOOK_SECRETS)
    assert box.open(created["id"], sealed) == secret
    with pytest.raises(ValueError):  # not a webhook secret
        webhooks.SecretBox(TEST_SECRET_KEY.encode()).open(created["id"], sealed)

    shown = await operator.call("GET", f"/v1/auto-registrations/{created['id']}", expect=200)
    listed = await operator.call("GET", "/v1/auto-registrations", expect=200)
    assert "hook_secret" not in shown and secret not in str(listed)
    assert shown == {k: v for k, v in created.items() if k != "hook_secret"} | {
        "updated_at": shown["updated_at"]
    }

    # The policy alone: the URL and its secret are kept, no new secret shown.
    changed = await operator.call(
        "PATCH", f"/v1/auto-registrations/{created['id']}", {"hook_failure": "closed"}, expect=200
    )
    assert (changed["hook_url"], changed["hook_failure"], "hook_secret" in changed) == (HOOK, "closed", False)
    assert await sealed_secret(pool, created["id"]) == sealed
    # A new URL: a new secret, shown once.
    moved = await operator.call(
        "PATCH",
        f"/v1/auto-registrations/{created['id']}",
        {"hook_url": "http://127.0.0.1:9/v2", "max_devices": 10},
        expect=200,
    )
    assert moved["hook_secret"].startswith("whsec_") and moved["hook_secret"] != secret
    assert (moved["hook_url"], moved["max_devices"], moved["hook_timeout_ms"]) == (
        "http://127.0.0.1:9/v2",
        10,
        750,
    )
    removed = await operator.call(
        "PATCH", f"/v1/auto-registrations/{created['id']}", {"hook_url": None}, expect=200
    )
    assert removed["hook_url"] is None and "hook_secret" not in removed
    assert await sealed_secret(pool, created["id"]) is None


async def test_a_registration_without_a_hook_shows_none(operator: Operator) -> None:
    registration = await operator.product()
    assert (registration["hook_url"], registration["hook_timeout_ms"], registration["hook_failure"]) == (
        None,
        2000,
        "closed",
    )
    assert "hook_secret" not in registration


async def test_a_read_only_key_sees_the_hooks_host_only(operator: Operator) -> None:
    product_id = await _locked_product(operator)
    created = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product_id, "hook_url": HOOK}, expect=201
    )
    key = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    reader = Operator(operator.session, operator.url, key["api_key"], operator.account_id)
    shown = await reader.call("GET", f"/v1/auto-registrations/{created['id']}", expect=200)
    assert shown["hook_url"] == "http://127.0.0.1:9/********"
    await reader.call("PATCH", f"/v1/auto-registrations/{created['id']}", {"hook_url": None}, expect=403)


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"hook_url": 5}, "hook_url", "type=string"),
        ({"hook_url": "ftp://127.0.0.1/"}, "hook_url", "scheme=http,https"),
        ({"hook_url": "http://user:pw@127.0.0.1/"}, "hook_url", "no-userinfo"),
        ({"hook_url": "http://127.0.0.1/" + "a" * 3000}, "hook_url", "max_length=2048"),
        ({"hook_url": "http://no-such-host.invalid/"}, "hook_url", "resolvable-host"),
        ({"hook_url": HOOK, "hook_timeout_ms": 49}, "hook_timeout_ms", "range=50..10000"),
        ({"hook_url": HOOK, "hook_timeout_ms": 10_001}, "hook_timeout_ms", "range=50..10000"),
        ({"hook_url": HOOK, "hook_timeout_ms": "100"}, "hook_timeout_ms", "range=50..10000"),
        ({"hook_url": HOOK, "hook_failure": "maybe"}, "hook_failure", "enum=closed,open"),
        ({"hook_timeout_ms": 100}, "hook_url", "required"),
    ],
)
async def test_bad_hook_settings_are_refused_naming_the_field(
    operator: Operator, body: dict[str, Any], field: str, rule: str
) -> None:
    product_id = await _locked_product(operator)
    answer = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product_id, **body}, expect=400
    )
    assert (answer["error"], answer["field"], answer["rule"]) == ("invalid_input", field, rule), answer
    assert field in answer["message"]
    # The same refusal on a change of a registration without a hook (a timeout alone too:
    # it would be stored silently and inherited by a URL set later).
    registration = await operator.product()
    path = f"/v1/auto-registrations/{registration['id']}"
    changed = await operator.call("PATCH", path, body, expect=400)
    assert (changed["field"], changed["rule"]) == (field, rule)
    shown = await operator.call("GET", path, expect=200)
    assert (shown["hook_url"], shown["hook_timeout_ms"]) == (None, 2000)


async def test_a_hook_on_a_private_address_is_refused_where_the_setting_is_off(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    public_only = await system.add_instance("operator", {"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "false"})
    guarded = Operator(session, public_only.url, operator.api_key, operator.account_id)
    product_id = await _locked_product(operator)
    for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/", "http://localhost/hook"):
        answer = await guarded.call(
            "POST", "/v1/auto-registrations", {"product_id": product_id, "hook_url": url}, expect=400
        )
        assert (answer["field"], answer["rule"]) == ("hook_url", "public-address"), url
    registration = await operator.product()
    answer = await guarded.call(
        "PATCH", f"/v1/auto-registrations/{registration['id']}", {"hook_url": "http://10.0.0.7/"}, expect=400
    )
    assert (answer["field"], answer["rule"]) == ("hook_url", "public-address")
    shown = await operator.call("GET", f"/v1/auto-registrations/{registration['id']}", expect=200)
    assert shown["hook_url"] is None


async def test_the_auto_command_takes_the_hooks_flags(system: System, operator: Operator) -> None:
    product_id = await _locked_product(operator)
    code, out, err = await fleetreg(
        operator,
        system,
        "auto",
        "create",
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
    changed = await fleetreg_json(
        operator, system, "auto", "update", created["id"], "--hook-timeout-ms", "60"
    )
    assert (changed["hook_timeout_ms"], "hook_secret" in changed) == (60, False)
    removed = await fleetreg_json(operator, system, "auto", "update", created["id"], "--no-hook")
    assert not any(k.startswith("hook") for k in removed)  # as a registration that never had one
    code, _, err = await fleetreg(operator, system, "auto", "update", created["id"], "--hook-timeout-ms", "5")
    assert code == 1 and "hook_timeout_ms" in err and err.count("\n") == 1
    code, _, err = await fleetreg(operator, system, "auto", "update", created["id"])
    assert code == 2 and "--max-devices" in err


async def test_the_hook_secret_is_never_logged(system: System, operator: Operator) -> None:
    offsets = log_offsets()
    product_id = await _locked_product(operator)
    created = await fleetreg_json(
        operator, system, "auto", "create", "--product", product_id, "--hook-url", HOOK
    )
    moved = await operator.call(
        "PATCH", f"/v1/auto-registrations/{created['id']}", {"hook_url": HOOK + "&v=2"}, expect=200
    )
    # A refused change that echoes the secret back in a field the API does not take.
    await operator.call(
        "PATCH", f"/v1/auto-registrations/{created['id']}", {"hook_secret": moved["hook_secret"]}, expect=400
    )
    text = log_text_since(offsets)
    for secret in (created["hook_secret"], moved["hook_secret"]):
        assert secret[:16] not in text


async def test_a_timeout_or_policy_without_a_hook_is_refused_and_changes_nothing(operator: Operator) -> None:
    """As at creation: a timeout or policy for a hook that is not there would be stored
    silently and inherited by a URL set later; refused (rule ``required``), and the quota
    given beside it is not changed either."""
    registration = await operator.product()
    path = f"/v1/auto-registrations/{registration['id']}"
    answer = await operator.call("PATCH", path, {"hook_failure": "open", "max_devices": 7}, expect=400)
    assert (answer["field"], answer["rule"]) == ("hook_url", "required"), answer
    shown = await operator.call("GET", path, expect=200)
    assert (shown["hook_failure"], shown["max_devices"]) == ("closed", registration["max_devices"])
