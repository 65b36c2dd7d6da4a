"""The role x route matrix (docs/security.md, "Roles"): every operation of the operator and
bulk APIs' OpenAPI documents names a known least role, and the table in the docs is the one
deploy/tools/role_matrix.py writes from them today."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shared.domain.roles import ROLES

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("role_matrix", ROOT / "deploy" / "tools" / "role_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["role_matrix"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


role_matrix = _tool()


def test_the_tool_ranks_the_roles_as_the_code_does() -> None:
    assert tuple(role_matrix.ROLES) == tuple(str(r) for r in ROLES)


@pytest.mark.parametrize("api", ["operator", "bulk"])
def test_every_operation_names_a_known_role(api: str) -> None:
    document = role_matrix.load(role_matrix.DOCUMENTS[api])
    assert role_matrix.problems(document) == []
    found = role_matrix.operations(api, document)
    assert len(found) >= 9
    # Only the document itself is open to anyone.
    assert [op.path for op in found if op.role == role_matrix.PUBLIC] == ["/openapi.yaml"]


def test_an_operation_without_a_role_or_with_an_unknown_one_is_named() -> None:
    document = {
        "paths": {
            "/v1/things": {
                "get": {"operationId": "listThings"},
                "post": {"operationId": "createThing", "x-fleetreg-role": "superuser"},
                "delete": {"operationId": "dropThings", "x-fleetreg-role": "admin"},
            },
            "/openapi.yaml": {"get": {"operationId": "openapi", "security": []}},
        }
    }
    found = role_matrix.problems(document)
    assert len(found) == 2
    assert found[0].startswith("GET /v1/things") and "None" in found[0]
    assert found[1].startswith("POST /v1/things") and "'superuser'" in found[1]
    with pytest.raises(ValueError, match="POST /v1/things"):
        role_matrix.operations("test", document)


def test_the_matrix_in_docs_security_is_up_to_date() -> None:
    current = role_matrix.SECURITY_DOC.read_text(encoding="utf-8")
    wanted = role_matrix.updated(current, role_matrix.table(role_matrix.every_operation()))
    assert current == wanted, "docs/security.md's role matrix is stale: run make role-matrix"
    assert role_matrix.main(["--check"]) == 0


def test_the_table_says_yes_exactly_from_the_least_role_up() -> None:
    rows = role_matrix.table(role_matrix.every_operation()).splitlines()[2:]
    webhooks = next(r for r in rows if "`createWebhook`" in r)
    assert webhooks.endswith("| **admin** | no | no | yes | yes |")
    devices = next(r for r in rows if "`listDevices`" in r)
    assert devices.endswith("| **viewer** | yes | yes | yes | yes |")
    disable = next(r for r in rows if "`disableDevice`" in r)
    assert disable.endswith("| **operator** | no | yes | yes | yes |")
    assert any(r.startswith("| bulk | PATCH |") and "**admin**" in r for r in rows)


def test_a_stale_or_unmarked_document_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        role_matrix.updated("# no table here\n", "| x |")
    stale = f"intro\n{role_matrix.START}\n| old |\n{role_matrix.END}\nafter\n"
    assert (
        role_matrix.updated(stale, "| new |")
        == f"intro\n{role_matrix.START}\n| new |\n{role_matrix.END}\nafter\n"
    )
