"""People (issue 28) through the running services: invitations shown once and accepted once
(the console's handler), the owner of an ownerless account, roles on the people routes,
another account's people not found, bad input named, removal ending a person's key at once
on two operator instances and the bulk API, the invitation link never in a log, and the CLI.

Every answer of these routes is checked against the OpenAPI document by the fuzzing test
(tests/e2e/test_openapi_fuzz.py); here the shapes the CLI and the console rely on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.operator.handlers import users as people
from shared.db import accounts
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.errors import NotFound
from tests.e2e.test_cli import fleetreg
from tests.support.api import Operator, new_operator
from tests.support.system import LOGS, System

pytestmark = pytest.mark.e2e

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"  # a stand-in PHC string


def _email(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}@example.com"


async def _invite(operator: Operator, email: str, role: str, expect: int = 201) -> dict[str, Any]:
    answer: dict[str, Any] = await operator.call(
        "POST", "/v1/users", {"email": email, "role": role}, expect=expect
    )
    return answer


def _token(invitation_url: str) -> str:
    return invitation_url.rsplit("/", 1)[1]


async def _keyed(operator: Operator, role: str) -> Operator:
    issued = await operator.call("POST", "/v1/api-keys", {"label": role, "role": role}, expect=201)
    return Operator(operator.session, operator.url, issued["api_key"], operator.account_id)


async def test_an_invitation_is_listed_accepted_once_and_the_person_listed(
    system: System, operator: Operator, pool: Pool
) -> None:
    email = _email("Ada").replace("example.com", "Example.COM")
    issued = await operator.call(
        "POST", "/v1/users", {"email": email, "role": "operator", "expires_in_hours": 24}, expect=201
    )
    assert issued["email"] == email.replace("Example.COM", "example.com")  # normalised
    assert issued["role"] == "operator"
    assert issued["invited_by"] == {"user_email": None, "api_key_label": "first key"}
    # FLEETREG_CONSOLE_URL unset: the address the request came to.
    assert issued["invitation_url"].startswith(f"{system.operator_url}/console/invitations/")
    token = _token(issued["invitation_url"])

    listed = await operator.call("GET", "/v1/users", expect=200)
    assert listed["users"] == []
    [pending] = listed["invitations"]
    assert pending == {k: issued[k] for k in pending}
    assert token not in json.dumps(listed)

    # The console's page reads it without consuming; its form accepts it, once.
    found = await people.invitation_for(pool, token)
    assert found is not None and found.id == issued["id"]
    assert await people.invitation_for(pool, token) is not None
    user = await people.accept_invitation(pool, token, password_hash=HASH)
    with pytest.raises(NotFound, match="no open invitation"):
        await people.accept_invitation(pool, token, password_hash=HASH)

    listed = await operator.call("GET", "/v1/users", expect=200)
    assert listed["invitations"] == []
    assert listed["users"] == [
        {
            "id": user.id,
            "email": issued["email"],
            "role": "operator",
            "created_at": listed["users"][0]["created_at"],
            "password": True,
            "totp_enrolled": False,
            "sso_linked": False,
        }
    ]
    audit = await operator.call("GET", "/v1/audit-events?limit=10", expect=200)
    actions = {e["action"]: e for e in audit["audit_events"]}
    assert actions["user.invited"]["actor"]["service_account"] == "default"
    assert actions["user.invited"]["changes"]["email"] == issued["email"]
    assert actions["user.joined"]["actor"]["user_id"] == user.id

    # A revoked invitation is refused, and gone from the list.
    other = await _invite(operator, _email("bob"), "viewer")
    await operator.call("DELETE", f"/v1/invitations/{other['id']}", expect=200)
    await operator.call("DELETE", f"/v1/invitations/{other['id']}", expect=404)
    assert await people.invitation_for(pool, _token(other["invitation_url"])) is None
    assert (await operator.call("GET", "/v1/users", expect=200))["invitations"] == []


async def test_an_ownerless_account_gets_its_first_owner_then_keys_cannot_touch_owners(
    operator: Operator, pool: Pool
) -> None:
    first = await _invite(operator, _email("owner"), "owner")  # the account has no owner yet
    owner = await people.accept_invitation(pool, _token(first["invitation_url"]), sso_subject="sub-1")
    assert owner.role == "owner"

    # An admin key (a key is never an owner) now grants, changes and removes no owner.
    refused = await _invite(operator, _email("second-owner"), "owner", expect=403)
    assert refused["rule"] == "role>=owner"
    for method, body in (("PATCH", {"role": "admin"}), ("DELETE", None)):
        answer = await operator.call(method, f"/v1/users/{owner.id}", body, expect=403)
        assert answer["rule"] == "role>=owner"
    helper = await people.accept_invitation(
        pool,
        _token((await _invite(operator, _email("helper"), "viewer"))["invitation_url"]),
        password_hash=HASH,
    )
    assert (await operator.call("PATCH", f"/v1/users/{helper.id}", {"role": "owner"}, expect=403))[
        "rule"
    ] == "role>=owner"
    changed = await operator.call("PATCH", f"/v1/users/{helper.id}", {"role": "admin"}, expect=200)
    assert changed["role"] == "admin"
    # The last owner is still the owner (its 409 is reached by an owner's session: the
    # repository's test demotes two owners in parallel).
    roles = {u["id"]: u["role"] for u in (await operator.call("GET", "/v1/users"))["users"]}
    assert roles == {owner.id: "owner", helper.id: "admin"}
    removed = await operator.call("DELETE", f"/v1/users/{helper.id}", expect=200)
    assert removed == {
        "removed": helper.id,
        "email": helper.email,
        "api_keys_revoked": 0,
        "sessions_ended": 0,
    }


async def test_below_admin_the_people_routes_are_refused(operator: Operator) -> None:
    target = f"/v1/users/{uuid.uuid4()}"
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/v1/users", None),
        ("POST", "/v1/users", {"email": _email("x"), "role": "viewer"}),
        ("PATCH", target, {"role": "viewer"}),
        ("DELETE", target, None),
        ("DELETE", f"/v1/invitations/{uuid.uuid4()}", None),
        ("GET", "/v1/service-accounts", None),
        ("POST", "/v1/service-accounts", {"name": "ci", "role": "viewer"}),
        ("DELETE", f"/v1/service-accounts/{uuid.uuid4()}", None),
        ("POST", f"/v1/service-accounts/{uuid.uuid4()}/api-keys", {}),
    ]
    for role in ("operator", "viewer"):
        caller = await _keyed(operator, role)
        for method, path, body in calls:
            answer = await caller.call(method, path, body, expect=403)
            # A viewer asked to change something is told it is read-only; otherwise the role it lacks.
            rule = "scope=read-only" if role == "viewer" and method != "GET" else "role>=admin"
            assert (answer["error"], answer["rule"]) == ("forbidden", rule), (role, method, path)
    assert (await operator.call("GET", "/v1/users", expect=200))["invitations"] == []


async def test_another_accounts_people_and_service_accounts_are_not_found(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool
) -> None:
    invitation = await _invite(operator, _email("mine"), "viewer")
    user = await people.accept_invitation(
        pool,
        _token((await _invite(operator, _email("joined"), "viewer"))["invitation_url"]),
        password_hash=HASH,
    )
    robot = await operator.call(
        "POST", "/v1/service-accounts", {"name": "robot", "role": "viewer"}, expect=201
    )
    stranger = await new_operator(session, pool, system.operator_url)
    await stranger.call("PATCH", f"/v1/users/{user.id}", {"role": "admin"}, expect=404)
    await stranger.call("DELETE", f"/v1/users/{user.id}", expect=404)
    await stranger.call("DELETE", f"/v1/invitations/{invitation['id']}", expect=404)
    await stranger.call("DELETE", f"/v1/service-accounts/{robot['id']}", expect=404)
    await stranger.call("POST", f"/v1/service-accounts/{robot['id']}/api-keys", {}, expect=404)
    await stranger.call("PATCH", "/v1/users/not-an-id", {"role": "admin"}, expect=404)
    assert (await stranger.call("GET", "/v1/users", expect=200)) == {"users": [], "invitations": []}
    names = [s["name"] for s in (await stranger.call("GET", "/v1/service-accounts"))["service_accounts"]]
    assert names == ["default"]
    # Nothing of the first account changed.
    listed = await operator.call("GET", "/v1/users", expect=200)
    assert [u["role"] for u in listed["users"]] == ["viewer"] and len(listed["invitations"]) == 1


@pytest.mark.parametrize(
    ("path", "method", "body", "field"),
    [
        ("/v1/users", "POST", {"email": "ada\u0000@example.com", "role": "viewer"}, "email"),
        ("/v1/users", "POST", {"email": 5, "role": "viewer"}, "email"),
        ("/v1/users", "POST", {"email": ["a@example.com"], "role": "viewer"}, "email"),
        ("/v1/users", "POST", {"email": "a" * 300 + "@example.com", "role": "viewer"}, "email"),
        ("/v1/users", "POST", {"email": "not an address", "role": "viewer"}, "email"),
        ("/v1/users", "POST", {"role": "viewer"}, "email"),
        ("/v1/users", "POST", {"email": "ada@example.com", "role": 7}, "role"),
        ("/v1/users", "POST", {"email": "ada@example.com", "role": "root"}, "role"),
        ("/v1/users", "POST", {"email": "ada@example.com", "role": "vie\u0000wer"}, "role"),
        (
            "/v1/users",
            "POST",
            {"email": "ada@example.com", "role": "viewer", "expires_in_hours": "1"},
            "expires_in_hours",
        ),
        (
            "/v1/users",
            "POST",
            {"email": "ada@example.com", "role": "viewer", "expires_in_hours": 721},
            "expires_in_hours",
        ),
        ("/v1/users", "POST", {"email": "ada@example.com", "role": "viewer", "admin": True}, "admin"),
        ("/v1/users/{user}", "PATCH", {"role": None}, "role"),
        ("/v1/users/{user}", "PATCH", {}, "role"),
        ("/v1/service-accounts", "POST", {"name": "ci\u0000", "role": "viewer"}, "name"),
        ("/v1/service-accounts", "POST", {"name": 3, "role": "viewer"}, "name"),
        ("/v1/service-accounts", "POST", {"name": "x" * 65, "role": "viewer"}, "name"),
        ("/v1/service-accounts", "POST", {"name": "ci", "role": "owner"}, "role"),
        ("/v1/service-accounts/{robot}/api-keys", "POST", {"label": "a\u0000b"}, "label"),
        ("/v1/service-accounts/{robot}/api-keys", "POST", {"label": 1}, "label"),
        ("/v1/service-accounts/{robot}/api-keys", "POST", {"role": "owner"}, "role"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    operator: Operator, pool: Pool, path: str, method: str, body: dict[str, Any], field: str
) -> None:
    user = await people.accept_invitation(
        pool,
        _token((await _invite(operator, _email("target"), "viewer"))["invitation_url"]),
        password_hash=HASH,
    )
    robot = await operator.call(
        "POST", "/v1/service-accounts", {"name": "robot", "role": "viewer"}, expect=201
    )
    concrete = path.replace("{user}", user.id).replace("{robot}", robot["id"])
    answer = await operator.call(method, concrete, body, expect=400)
    assert (answer["error"], answer["field"]) == ("invalid_input", field), answer
    listed = await operator.call("GET", "/v1/users", expect=200)
    assert [(u["id"], u["role"]) for u in listed["users"]] == [(user.id, "viewer")] and not listed[
        "invitations"
    ]
    assert (await operator.call("GET", "/v1/service-accounts"))["service_accounts"][1]["active_api_keys"] == 0


async def test_removal_ends_a_personal_key_at_once_on_every_instance_and_the_bulk_api(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool
) -> None:
    user = await people.accept_invitation(
        pool,
        _token((await _invite(operator, _email("leaver"), "admin"))["invitation_url"]),
        password_hash=HASH,
    )
    account = Account(operator.account_id, "", role=user.role, user_id=user.id, user_email=user.email)
    personal = await accounts.create_api_key(pool, account, "laptop")
    headers = {"Authorization": f"Bearer {personal.key}"}

    async with system.instance("operator") as second:
        urls = [
            f"{system.operator_url}/v1/account",
            f"{second.url}/v1/account",
            f"{system.bulk_url}/v1/bulk-registrations",
        ]

        async def statuses() -> list[int]:
            found = []
            for url in urls:
                async with session.get(url, headers=headers) as response:
                    found.append(response.status)
            return found

        assert await statuses() == [200, 200, 200]
        keys = (await operator.call("GET", "/v1/api-keys", expect=200))["api_keys"]
        assert {k["label"]: k["user_email"] for k in keys}["laptop"] == user.email
        removed = await operator.call("DELETE", f"/v1/users/{user.id}", expect=200)
        assert removed["api_keys_revoked"] == 1
        # The very next request, on either instance and on the bulk API, is refused: no wait.
        assert await statuses() == [401, 401, 401]
    audit = await operator.call("GET", "/v1/audit-events?action=user.removed", expect=200)
    [event] = audit["audit_events"]
    assert event["changes"]["api_keys_revoked"] == 1 and event["target_id"] == user.id


async def test_a_person_below_admin_sees_and_revokes_only_their_own_keys(
    operator: Operator, pool: Pool
) -> None:
    user = await people.accept_invitation(
        pool,
        _token((await _invite(operator, _email("op"), "operator"))["invitation_url"]),
        password_hash=HASH,
    )
    account = Account(operator.account_id, "", role=user.role, user_id=user.id, user_email=user.email)
    mine = await accounts.create_api_key(pool, account, "mine")
    person = Operator(operator.session, operator.url, mine.key, operator.account_id)
    second = await person.call("POST", "/v1/api-keys", {"label": "second", "role": "viewer"}, expect=201)
    listed = (await person.call("GET", "/v1/api-keys", expect=200))["api_keys"]
    assert {k["label"] for k in listed} == {"mine", "second"}
    first_key = next(
        k for k in (await operator.call("GET", "/v1/api-keys"))["api_keys"] if k["label"] == "first key"
    )
    refused = await person.call("DELETE", f"/v1/api-keys/{first_key['id']}", expect=403)
    assert refused["rule"] == "role>=admin"
    viewer = Operator(operator.session, operator.url, second["api_key"], operator.account_id)
    assert [k["label"] for k in (await viewer.call("GET", "/v1/api-keys"))["api_keys"]] == ["second"]
    await viewer.call("DELETE", f"/v1/api-keys/{second['id']}", expect=200)  # a viewer ends its own key
    await viewer.call("GET", "/v1/api-keys", expect=401)


async def test_service_accounts_and_their_keys(operator: Operator) -> None:
    created = await operator.call(
        "POST", "/v1/service-accounts", {"name": "ci", "role": "operator"}, expect=201
    )
    assert (created["name"], created["role"], created["active_api_keys"]) == ("ci", "operator", 0)
    await operator.call("POST", "/v1/service-accounts", {"name": "ci", "role": "viewer"}, expect=409)
    issued = await operator.call(
        "POST", f"/v1/service-accounts/{created['id']}/api-keys", {"label": "deploys"}, expect=201
    )
    assert (issued["role"], issued["service_account"]) == ("operator", "ci")
    refused = await operator.call(
        "POST", f"/v1/service-accounts/{created['id']}/api-keys", {"role": "admin"}, expect=403
    )
    assert refused["rule"] == "at-most=operator"
    robot = Operator(operator.session, operator.url, issued["api_key"], operator.account_id)
    await robot.call("GET", "/v1/products", expect=200)
    await robot.call("GET", "/v1/service-accounts", expect=403)
    removed = await operator.call("DELETE", f"/v1/service-accounts/{created['id']}", expect=200)
    assert removed == {"removed": created["id"], "api_keys_revoked": 1}
    await robot.call("GET", "/v1/products", expect=401)


async def test_an_invitation_link_never_reaches_a_log(system: System, operator: Operator, pool: Pool) -> None:
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    tokens = []
    for role in ("viewer", "admin"):
        issued = await _invite(operator, _email("secret"), role)
        tokens.append(_token(issued["invitation_url"]))
    # Its error paths too: an invitation of the address again, a bad body, a token accepted twice.
    await operator.call("POST", "/v1/users", {"email": 5, "role": tokens[0]}, expect=400)
    await people.accept_invitation(pool, tokens[1], password_hash=HASH)
    with pytest.raises(NotFound, match="no open invitation"):
        await people.accept_invitation(pool, tokens[1], password_hash=HASH)
    await operator.call("GET", "/v1/users", expect=200)
    written = "".join(_read_from(path, offsets.get(path, 0)) for path in LOGS.glob("*.log"))
    for token in tokens:
        assert token not in written and token[:16] not in written


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


async def _fleetreg_json(operator: Operator, system: System, *args: str) -> Any:
    code, out, err = await fleetreg(operator, system, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_the_users_and_service_accounts_commands(
    system: System, operator: Operator, pool: Pool
) -> None:
    email = _email("cli")
    invited = await _fleetreg_json(
        operator, system, "users", "invite", "--email", email, "--role", "operator"
    )
    assert invited["email"] == email and invited["invitation_url"].startswith(system.operator_url)
    code, out, _ = await fleetreg(operator, system, "users", "list")
    assert code == 0 and "invited by" in out and email in out and "1 open invitation(s)" in out
    assert _token(invited["invitation_url"]) not in out
    user = await people.accept_invitation(pool, _token(invited["invitation_url"]), password_hash=HASH)
    listed = await _fleetreg_json(operator, system, "users", "list")
    assert [(u["id"], u["role"]) for u in listed["users"]] == [(user.id, "operator")]
    code, out, _ = await fleetreg(operator, system, "users", "list")
    assert "id" in out and "sign-in" in out and "password" in out and "1 user(s)" in out
    updated = await _fleetreg_json(operator, system, "users", "update", user.id, "--role", "viewer")
    assert updated["role"] == "viewer"
    code, out, err = await fleetreg(operator, system, "users", "remove", user.id)
    assert code == 1 and "--yes" in err  # no terminal to confirm on
    code, out, _ = await fleetreg(operator, system, "users", "remove", user.id, "--yes")
    assert code == 0 and f"removed {email}" in out
    code, _, err = await fleetreg(operator, system, "users", "invite", "--email", "nope", "--role", "viewer")
    assert code == 1 and "(email)" in err

    created = await _fleetreg_json(
        operator, system, "service-accounts", "create", "--name", "ci", "--role", "viewer"
    )
    key = await _fleetreg_json(
        operator, system, "service-accounts", "create-key", created["id"], "--label", "x"
    )
    assert (key["service_account"], key["role"]) == ("ci", "viewer")
    code, out, _ = await fleetreg(operator, system, "service-accounts", "list")
    assert (
        code == 0 and "active keys" in out and "default" in out and "ci" in out and key["api_key"] not in out
    )
    removed = await _fleetreg_json(operator, system, "service-accounts", "remove", created["id"], "--yes")
    assert removed == {"removed": created["id"], "api_keys_revoked": 1}
