"""An account's single sign-on configuration through the running services (issue 28): an
admin's only, the client secret never answered or logged, a domain belonging to one
account, bad input named, and the fleetreg sso command."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.db.pool import Pool
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.support.api import Operator, new_operator
from tests.support.system import LOGS, System

pytestmark = pytest.mark.e2e

SECRET = "client-secret-" + uuid.uuid4().hex


def _body(domain: str, **change: object) -> dict[str, Any]:
    return {
        "issuer": "https://login.example.com/realms/fleet",
        "client_id": "fleetreg-console",
        "client_secret": SECRET,
        "allowed_domains": [domain],
        "group_roles": {"fleet-admins": "admin", "fleet-operators": "operator"},
    } | change


async def _keyed(operator: Operator, role: str) -> Operator:
    issued = await operator.call("POST", "/v1/api-keys", {"label": role, "role": role}, expect=201)
    return Operator(operator.session, operator.url, issued["api_key"], operator.account_id)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


async def test_an_admin_sets_changes_and_removes_it_and_the_secret_never_shows(
    system: System, operator: Operator
) -> None:
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    domain = f"{uuid.uuid4().hex[:8]}.example"

    created = await operator.call("PUT", "/v1/sso", _body(domain), expect=201)
    kept = await operator.call(
        "PUT",
        "/v1/sso",
        {k: v for k, v in _body(domain, required=True).items() if k != "client_secret"},
        expect=200,
    )
    shown = await operator.call("GET", "/v1/sso", expect=200)
    audited = await operator.call("GET", "/v1/audit-events?action=sso.configured", expect=200)
    await operator.call("DELETE", "/v1/sso", expect=200)
    await operator.call("GET", "/v1/sso", expect=404)

    assert created["client_secret"] == "set" and created["allowed_domains"] == [domain]
    assert created["redirect_uri"].endswith("/console/sso/callback")
    assert (kept["required"], shown["required"], shown["group_roles"]["fleet-operators"]) == (
        True,
        True,
        "operator",
    )
    assert [e["changes"]["client_secret"] for e in audited["audit_events"]] == ["kept", "set"]
    everything = str([created, kept, shown, audited])
    written = "".join(_read_from(path, offsets.get(path, 0)) for path in LOGS.glob("*.log"))
    assert SECRET not in everything and SECRET not in written


async def test_below_admin_it_is_refused_and_a_domain_is_one_accounts(
    system: System, operator: Operator, pool: Pool
) -> None:
    domain = f"{uuid.uuid4().hex[:8]}.example"
    await operator.call("PUT", "/v1/sso", _body(domain), expect=201)
    for role in ("operator", "viewer"):
        below = await _keyed(operator, role)
        for method, body in (("GET", None), ("PUT", _body(domain)), ("DELETE", None)):
            refused = await below.call(method, "/v1/sso", body, expect=403)
            assert refused["error"] == "forbidden"
    other = await new_operator(operator.session, pool, system.operator_url)

    taken = await other.call("PUT", "/v1/sso", _body(domain.upper()), expect=409)

    assert taken["field"] == "allowed_domains"
    await other.call("GET", "/v1/sso", expect=404)  # nothing half-written


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"issuer": "not a url"}, "issuer"),
        ({"allowed_domains": ["\0.example"]}, "allowed_domains"),
        ({"group_roles": {"x": "owner"}}, "group_roles.x"),
        ({"required": "yes"}, "required"),
        ({"client_id": 42}, "client_id"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    operator: Operator, change: dict[str, Any], field: str
) -> None:
    refused = await operator.call("PUT", "/v1/sso", _body("example.org") | change, expect=400)

    assert refused["field"] == field
    assert SECRET not in str(refused)


async def test_the_sso_command(system: System, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    domain = f"{uuid.uuid4().hex[:8]}.example"
    monkeypatch.setenv("FLEETREG_SSO_CLIENT_SECRET", SECRET)
    args = ["sso", "set", "--issuer", "https://login.example.com/realms/fleet", "--client-id", "console"]

    made = await fleetreg_json(
        operator,
        system,
        *args,
        "--domain",
        domain,
        "--group-role",
        "fleet-admins=admin",
        "--default-role",
        "viewer",
    )
    code, table, _ = await fleetreg(operator, system, "sso", "show")
    monkeypatch.delenv("FLEETREG_SSO_CLIENT_SECRET")
    code_kept, _, _ = await fleetreg(operator, system, *args, "--domain", domain)
    code_bad, _, err = await fleetreg(operator, system, *args, "--domain", domain, "--group-role", "nogroup")
    removed = await fleetreg_json(operator, system, "sso", "remove")

    assert (made["group_roles"], made["default_role"], made["client_secret"]) == (
        {"fleet-admins": "admin"},
        "viewer",
        "set",
    )
    assert code == 0 and domain in table and "redirect URI" in table and SECRET not in table
    assert code_kept == 0  # a change without the secret keeps the stored one
    assert code_bad == 1 and "GROUP=ROLE" in err
    assert removed == {"removed": "sso"}
