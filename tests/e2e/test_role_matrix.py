"""Every role against every route (docs/security.md, "Roles"), through the running services.

The operations and their least roles are read from the served OpenAPI documents of the
operator and bulk APIs (``x-fleetreg-role``), so an operation added later is covered without
editing this test. With a viewer, an operator and an admin key of one account, each
operation answers 403 exactly when the key's role is below the operation's, and never 403
otherwise (404, 400, 409 are fine: the point is the role gate). Owner-only operations, if
any, are refused to every key (a key is never owner). Also: the hook fields refused to an
operator naming the field, and an operator making an admin key or revoking an admin's."""

from __future__ import annotations

import uuid

import aiohttp
import pytest
import yaml

from shared.domain.roles import KEY_ROLES, Role, at_least
from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e

METHODS = ("get", "head", "post", "put", "patch", "delete")


async def _operations(session: aiohttp.ClientSession, url: str) -> list[tuple[str, str, str]]:
    """(method, path, least role) of each operation that needs a key."""
    async with session.get(f"{url}/openapi.yaml") as response:
        assert response.status == 200
        document = yaml.safe_load(await response.text())
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS or operation.get("security") == []:
                continue
            role = operation.get("x-fleetreg-role")
            assert role in {str(r) for r in Role}, (method, path, role)
            found.append((method.upper(), path, role))
    return found


async def _key(operator: Operator, role: Role) -> Operator:
    issued = await operator.call("POST", "/v1/api-keys", {"label": f"{role} key", "role": role}, expect=201)
    assert (issued["role"], issued["read_only"]) == (role, role == Role.VIEWER)
    return Operator(operator.session, operator.url, issued["api_key"], operator.account_id)


def _concrete(path: str, ids: dict[str, str]) -> str:
    for name in [p.strip("{}") for p in path.split("/") if p.startswith("{")]:
        path = path.replace("{" + name + "}", ids.get(name, str(uuid.uuid4())))
    return path


async def test_every_role_against_every_route(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product()
    # Reads name the account's own objects (a viewer reads them: 200); changes name made-up
    # IDs (404 past the gate, so the account is not changed by a call that passes it).
    own = {"product_id": registration["product_id"], "registration_id": registration["id"]}
    keys = {role: await _key(operator, role) for role in KEY_ROLES}
    operations = {url: await _operations(session, url) for url in (system.operator_url, system.bulk_url)}
    assert sum(len(found) for found in operations.values()) >= 60

    answered: dict[tuple[str, str, str], int] = {}
    for role, holder in keys.items():
        headers = {"Authorization": f"Bearer {holder.api_key}"}
        for url, found in operations.items():
            for method, path, needed in found:
                concrete = _concrete(path, own if method == "GET" else {})
                async with session.request(method, url + concrete, json={}, headers=headers) as response:
                    status = response.status
                    # An export answers CSV; every refusal is JSON.
                    body = await response.json() if response.content_type == "application/json" else {}
                allowed = at_least(role, needed)
                where = (role, method, path, needed, status, body)
                if allowed:
                    assert status not in (401, 403) and status < 500, where
                else:
                    assert status == 403, where
                    read_only = role == Role.VIEWER and method != "GET"  # asked to change something
                    expected_rule = "scope=read-only" if read_only else f"role>={needed}"
                    assert (body["error"], body["rule"]) == ("forbidden", expected_rule), where
                answered[(role, method, path)] = status

    # The table's promises, spot-checked by name as well as by the documents.
    assert answered[(Role.VIEWER, "GET", "/v1/devices")] == 200
    assert answered[(Role.VIEWER, "GET", "/v1/auto-registrations/{registration_id}")] == 200
    assert answered[(Role.VIEWER, "POST", "/v1/api-keys")] == 201  # a viewer makes viewer keys
    assert answered[(Role.VIEWER, "POST", "/v1/products")] == 403
    assert answered[(Role.OPERATOR, "POST", "/v1/products")] == 400  # past the gate: {} has no name
    assert answered[(Role.OPERATOR, "GET", "/v1/webhooks")] == 403
    assert answered[(Role.OPERATOR, "GET", "/v1/auto-registrations/{registration_id}/hook/calls")] == 403
    assert answered[(Role.OPERATOR, "PATCH", "/v1/bulk-registrations/{registration_id}")] == 403
    assert answered[(Role.OPERATOR, "PUT", "/v1/account/issuing-ca")] == 403
    assert answered[(Role.ADMIN, "GET", "/v1/webhooks")] == 200
    assert answered[(Role.ADMIN, "GET", "/v1/auto-registrations/{registration_id}/hook/calls")] == 200
    assert answered[(Role.ADMIN, "PUT", "/v1/account/issuing-ca")] == 400
    # The keys the calls made are each of its maker's role (POST /v1/api-keys with {}).
    made = [k for k in (await operator.call("GET", "/v1/api-keys"))["api_keys"] if k["label"] == ""]
    assert sorted(k["role"] for k in made) == sorted(str(r) for r in KEY_ROLES)


async def test_an_operator_may_not_set_a_hook_and_is_told_which_field(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    registration = await operator.product()
    day_to_day = await _key(operator, Role.OPERATOR)
    admin = await _key(operator, Role.ADMIN)
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"p-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    hook = "http://127.0.0.1:9/hook"

    refused = await day_to_day.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"], "hook_url": hook}, expect=403
    )
    assert (refused["error"], refused["field"], refused["rule"]) == ("forbidden", "hook_url", "role>=admin")
    path = f"/v1/auto-registrations/{registration['id']}"
    for field, value in (("hook_timeout_ms", 500), ("hook_failure", "open"), ("hook_url", None)):
        refused = await day_to_day.call("PATCH", path, {field: value}, expect=403)
        assert (refused["field"], refused["rule"]) == (field, "role>=admin"), refused
    # Without the hook's fields the same calls are an operator's.
    assert (await day_to_day.call("PATCH", path, {"max_devices": 7}, expect=200))["max_devices"] == 7
    created = await day_to_day.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=201
    )
    assert created["hook_url"] is None
    # The bulk upload's hook fields, before a byte of the file is read.
    headers = {"Authorization": f"Bearer {day_to_day.api_key}", "Content-Type": "text/csv"}
    query = f"product_id={product['id']}&file_name=f.csv&hook_failure=open"
    async with session.post(
        f"{system.bulk_url}/v1/bulk-registrations?{query}", data=b"x", headers=headers
    ) as r:
        body = await r.json()
        assert (r.status, body["field"], body["rule"]) == (403, "hook_failure", "role>=admin"), body
    # An admin sets it; the registration's audit names no operator's change to the hook.
    issued = await admin.call("PATCH", path, {"hook_url": hook}, expect=200)
    assert issued["hook_url"] == hook and issued["hook_secret"].startswith("whsec_")
    # Below admin the hook's URL is its scheme and host only (a path often carries a token).
    for reader in (day_to_day, await _key(operator, Role.VIEWER)):
        assert (await reader.call("GET", path, expect=200))["hook_url"] == "http://127.0.0.1:9/********"
        listed = (await reader.call("GET", "/v1/auto-registrations", expect=200))["auto_registrations"]
        assert hook not in str(listed)
    assert (await admin.call("GET", path, expect=200))["hook_url"] == hook
    trail = await operator.call("GET", f"/v1/audit-events?target_id={registration['id']}&limit=100")
    changes = [e for e in trail["audit_events"] if e["action"] == "auto_registration.hook_changed"]
    assert [e["actor"]["role"] for e in changes] == ["admin"]


async def test_keys_never_above_their_makers_role_and_others_keys_are_an_admins(operator: Operator) -> None:
    day_to_day = await _key(operator, Role.OPERATOR)
    refused = await day_to_day.call("POST", "/v1/api-keys", {"label": "up", "role": "admin"}, expect=403)
    assert (refused["error"], refused["field"]) == ("forbidden", "role"), refused
    assert refused["message"].startswith("an operator cannot create a key with the role admin")
    owner = await day_to_day.call("POST", "/v1/api-keys", {"label": "up", "role": "owner"}, expect=400)
    assert owner["field"] == "role"
    viewer = await _key(operator, Role.VIEWER)
    refused = await viewer.call("POST", "/v1/api-keys", {"label": "up", "role": "operator"}, expect=403)
    assert refused["field"] == "role"

    keys = (await operator.call("GET", "/v1/api-keys"))["api_keys"]
    admin_key = next(k for k in keys if k["label"] == "first key")
    refused = await day_to_day.call("DELETE", f"/v1/api-keys/{admin_key['id']}", expect=403)
    assert (refused["field"], refused["rule"]) == ("key_id", "role>=admin"), refused
    assert refused["message"].startswith("an operator revokes only its own keys")
    # Its own keys of its role or lower it revokes: one it made, and itself.
    own = await day_to_day.call("POST", "/v1/api-keys", {"label": "ci", "read_only": True}, expect=201)
    await day_to_day.call("DELETE", f"/v1/api-keys/{own['id']}", expect=200)
    # A viewer revokes only its own keys (a leaked dashboard key is ended by its holder):
    # another's is refused, its own (itself) is not.
    refused = await viewer.call("DELETE", f"/v1/api-keys/{admin_key['id']}", expect=403)
    assert (refused["field"], refused["rule"]) == ("key_id", "role>=admin"), refused
    mine = next(k for k in keys if k["label"] == "viewer key")
    await viewer.call("DELETE", f"/v1/api-keys/{mine['id']}", expect=200)
    await viewer.call("GET", "/v1/account", expect=401)
    # An admin revokes anyone's.
    theirs = next(k for k in keys if k["label"] == "operator key")
    await operator.call("DELETE", f"/v1/api-keys/{theirs['id']}", expect=200)
    await day_to_day.call("GET", "/v1/account", expect=401)
    listed = {k["label"]: k for k in (await operator.call("GET", "/v1/api-keys"))["api_keys"]}
    assert listed["first key"]["revoked_at"] is None and listed["ci"]["revoked_at"] is not None
