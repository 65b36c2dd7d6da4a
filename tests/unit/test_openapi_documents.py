"""Each HTTP API's served OpenAPI document names exactly the routes its app serves
(read with PyYAML; Schemathesis checks the answers against it in
tests/e2e/test_openapi_fuzz.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from aiohttp import web

from services.ingestion.app import create_app as ingestion_app
from services.ingestion.settings import IngestionSettings
from services.intake.app import create_app as intake_app
from services.intake.settings import IntakeSettings
from services.operator.app import create_app as operator_app
from services.operator.settings import OperatorSettings
from shared.settings import load

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    "DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "FLEETREG_SECRET_KEY": "x" * 40,
}
METHODS = {"get", "post", "put", "patch", "delete"}


def routes(app: web.Application, prefix: str = "", exclude: str | None = None) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or not path.startswith(prefix) or (exclude and path.startswith(exclude)):
            continue
        found.add((route.method.lower(), path.removeprefix(prefix) or "/"))
    return found


def documented(path: str) -> set[tuple[str, str]]:
    document = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1")
    return {(m, p) for p, item in document["paths"].items() for m in item if m in METHODS}


@pytest.mark.parametrize(
    ("document", "app", "prefix", "exclude"),
    [
        ("services/intake/openapi.yaml", "intake", "", "/apv/v27"),
        ("services/intake/compat/openapi.yaml", "intake", "/apv/v27", None),
        ("services/operator/openapi.yaml", "operator", "", "/console"),  # HTML: docs/console.md
        ("services/ingestion/openapi.yaml", "ingestion", "", None),
    ],
)
def test_the_document_names_exactly_the_served_routes(
    document: str, app: str, prefix: str, exclude: str | None
) -> None:
    built = {
        "intake": lambda: intake_app(load(IntakeSettings.from_env, ENV)),
        "operator": lambda: operator_app(load(OperatorSettings.from_env, ENV)),
        "ingestion": lambda: ingestion_app(load(IngestionSettings.from_env, ENV)),
    }[app]()
    served = routes(built, prefix, exclude)
    if prefix:
        served.discard(("get", "/openapi.yaml"))
        assert ("get", f"{prefix}/openapi.yaml") in routes(built)
    assert served == documented(document) - ({("get", "/openapi.yaml")} if prefix else set())
