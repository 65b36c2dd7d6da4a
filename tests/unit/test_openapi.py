"""Keeps services/operator/openapi.yaml, the OpenAPI 3.1 description of the operator API, in step
with the code, and every OpenAPI document of the services valid.

The code is the source of truth: the routes the operator app's router holds, which of them ask
for an account API key, the status a success answers with and the choices the handlers accept.
The app is built but never started, so nothing here connects anywhere.

The documents are read with PyYAML (refusing a key written twice, which ``yaml.safe_load``
would drop silently), validated against the OpenAPI 3.1 schema that Schemathesis bundles, and
their references and examples are checked with ``jsonschema`` and ``referencing``.
"""

from __future__ import annotations

import inspect
import json
import re
import socket
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import asyncpg
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012
from schemathesis.specs.openapi.definitions import OPENAPI_31

from services.operator import resources as operator_resources
from services.operator import routes
from services.operator.app import create_app
from services.operator.handlers import auto_inputs, devices, trail
from services.operator.resources import RESOURCES
from services.operator.settings import OperatorSettings
from shared.db.devices import ChangeOutcome
from shared.domain import device_search
from shared.domain.products import BULK_SERVICE_TYPE, SERVICE_TYPES
from shared.errors import Unauthorized
from shared.settings import DatabaseSettings, Env, HttpSettings, Secret
from shared.throttle import UNTHROTTLED_PATHS

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "services" / "operator" / "openapi.yaml"
DOCUMENTS = sorted(ROOT.glob("services/**/openapi*.yaml"))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")  # OpenAPI 3.1's
BEARER = "bearerAuth"
SETTINGS = OperatorSettings(
    http=HttpSettings(host="127.0.0.1", port=0),
    database=DatabaseSettings(url=Secret("postgresql://x@localhost/x"), pool_min=1, pool_max=1),
    online_ttl_s=300,
    page_limit_max=1000,
    log_level="INFO",
)


# --- reading a document -----------------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping: ``yaml.safe_load``
    keeps the last one, so a path or a method written twice would hide the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"{key!r} given twice", node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> dict[str, Any]:
    loaded = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 -- a SafeLoader
    assert isinstance(loaded, dict), "the document is not a mapping"
    return loaded


def uri(path: Path) -> str:
    return f"urn:fleetreg:{path.relative_to(ROOT).as_posix()}"


def registry_of(path: Path, document: dict[str, Any]) -> Registry[Any]:
    """The document as the one resource of a registry, at ``uri(path)``: its references
    (``#/components/...``) and pointers into it are followed by ``referencing``."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(uri(path), resource)


def resolve_in(registry: Registry[Any], path: Path, node: Any) -> Any:
    """``node``, or what its reference points at, following references until there is none."""
    resolver = registry.resolver(uri(path))
    while isinstance(node, dict) and "$ref" in node:
        node = resolver.lookup(node["$ref"]).contents
    return node


def pointer(*parts: str | int) -> str:
    """A JSON pointer fragment: ``#/paths/~1v1~1devices/get``."""
    return "#" + "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


Location = tuple[str | int, ...]


def schema_sites(node: Any, at: Location = ()) -> Iterator[tuple[Location, dict[str, Any]]]:
    """(location, object) of every object that has a ``schema``: media types, parameters and
    headers, wherever they are; the schemas themselves and example values are not walked."""
    if isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_sites(value, (*at, index))
        return
    if not isinstance(node, dict):
        return
    if "schema" in node:
        yield at, node
    for key, value in node.items():
        if key not in ("schema", "example", "examples") and (*at, key) != ("components", "schemas"):
            yield from schema_sites(value, (*at, key))


def example_values(site: dict[str, Any], registry: Registry[Any], path: Path) -> Iterator[Any]:
    """The ``example`` and the values of the ``examples`` given beside a schema."""
    if "example" in site:
        yield site["example"]
    for example in site.get("examples", {}).values():
        example = resolve_in(registry, path, example)
        if "value" in example:
            yield example["value"]


def openapi_problems(path: Path, text: str) -> list[str]:
    """What makes ``text`` not a valid OpenAPI 3.1 document with valid schemas, references and
    examples; an empty list when it is one."""
    try:
        document = load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML as PyYAML reads it: {exc}"]
    try:
        if json.loads(json.dumps(document)) != document:
            return ["a mapping key is not a string (quote a response status: '200')"]
    except (TypeError, ValueError) as exc:
        return [f"not representable in JSON: {exc}"]
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft202012Validator(OPENAPI_31).iter_errors(document)
    ]
    registry = registry_of(path, document)
    resolver = registry.resolver(uri(path))
    for ref in references(document):
        if not ref.startswith("#/"):
            problems.append(f"{ref}: only references into the document itself are used")
            continue
        try:
            resolver.lookup(ref)
        except Unresolvable:
            problems.append(f"{ref}: dangling reference")
    if problems:
        return problems
    schemas: list[tuple[Location, Any]] = [
        (("components", "schemas", name), schema)
        for name, schema in document.get("components", {}).get("schemas", {}).items()
    ]
    schemas += [((*at, "schema"), site["schema"]) for at, site in schema_sites(document)]
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    for at, schema in schemas:
        problems += [f"{pointer(*at)}: {e.message}" for e in meta.iter_errors(schema)]
    if problems:
        return problems
    for at, site in schema_sites(document):
        # By reference into the document, so that the schema's own '#/...' references resolve.
        validator = Draft202012Validator(
            {"$ref": uri(path) + pointer(*at, "schema")},
            registry=registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        for example in example_values(site, registry, path):
            problems += [f"{pointer(*at)} example: {e.message}" for e in validator.iter_errors(example)]
    return problems


@cache
def text_of(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@cache
def document_of(path: Path) -> dict[str, Any]:
    return load(text_of(path))


# --- the operator document and the code -------------------------------------------------------


def document() -> str:
    return text_of(DOCUMENT)


def spec() -> dict[str, Any]:
    return document_of(DOCUMENT)


@cache
def registry() -> Registry[Any]:
    return registry_of(DOCUMENT, spec())


def resolve(node: Any) -> Any:
    return resolve_in(registry(), DOCUMENT, node)


def paths() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = spec()["paths"]
    return found


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path, method, operation) of every documented operation."""
    for path, item in paths().items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def operation(method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = paths()[path][method.lower()]
    return found


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, method, _ in operations()}


def documented_schemes(operation_: dict[str, Any]) -> list[str]:
    """The schemes of the operation's own security, else the document's global one."""
    requirements = operation_.get("security", spec().get("security", []))
    assert all(scopes == [] for requirement in requirements for scopes in requirement.values())
    return [name for requirement in requirements for name in requirement]


def parameters(path: str, method: str) -> list[dict[str, Any]]:
    """The path item's and the operation's parameters, references followed."""
    declared = [*paths()[path].get("parameters", []), *operation(method, path).get("parameters", [])]
    return [resolve(p) for p in declared]


@pytest.fixture(scope="module")
def app() -> web.Application:
    """The operator app as ``create_app`` builds it, with every way to the network refused."""
    attempts: list[str] = []

    def refuse(what: str) -> object:
        def refused(*args: object, **kwargs: object) -> None:
            attempts.append(what)
            raise AssertionError(f"building the router must not do I/O: {what}")

        return refused

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(operator_resources, "open_pool", refuse("open_pool"))
        patch.setattr(asyncpg, "create_pool", refuse("asyncpg.create_pool"))
        patch.setattr(asyncpg, "connect", refuse("asyncpg.connect"))
        patch.setattr(socket.socket, "connect", refuse("socket.connect"))
        patch.setattr(socket, "create_connection", refuse("socket.create_connection"))
        built = create_app(SETTINGS)
        list(built.router.routes())
    assert attempts == []
    return built


def code_routes(app: web.Application) -> dict[tuple[str, str], web.AbstractRoute]:
    """(METHOD, path template) of every route, without the HEAD routes aiohttp adds for GET."""
    found: dict[tuple[str, str], web.AbstractRoute] = {}
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None, f"a route without a resource: {route!r}"
        if route.resource.canonical.startswith("/console"):
            continue  # the console's HTML pages, for browsers: docs/console.md
        found[(route.method, route.resource.canonical)] = route
    return found


def template_names(path: str) -> list[str]:
    return re.findall(r"\{([^{}]+)\}", path)


def mocked_request(app: web.Application, method: str, path: str) -> web.Request:
    """A request for ``path`` with an ID in every path parameter and no Authorization header."""
    params = {name: str(uuid.uuid4()) for name in template_names(path)}
    concrete = path.format(**params)
    return make_mocked_request(method, concrete, app=app, match_info=params)


# --- every OpenAPI document ----------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT / "services").as_posix())
def test_the_document_is_valid_openapi_3_1_with_valid_schemas_references_and_examples(path: Path) -> None:
    assert openapi_problems(path, text_of(path)) == []


def test_the_documents_are_found_and_the_operator_one_has_examples_to_check() -> None:
    assert DOCUMENT in DOCUMENTS and len(DOCUMENTS) >= 4
    examples = [e for _, site in schema_sites(spec()) for e in example_values(site, registry(), DOCUMENT)]
    assert len(examples) >= 7


def replaced(old: str, new: str) -> str:
    assert document().count(old) == 1, f"{old!r} is not in the document exactly once"
    return document().replace(old, new)


@pytest.mark.parametrize(
    ("malformed", "expected"),
    [
        pytest.param(
            lambda: replaced("  /v1/account:\n", "  /openapi.yaml:\n"), "given twice", id="path-twice"
        ),
        pytest.param(
            lambda: replaced("  /v1/products:\n    post:", "  /v1/products:\n    get:"),
            "given twice",
            id="method-twice",
        ),
        pytest.param(
            lambda: replaced("  /openapi.yaml:\n", "  openapi.yaml:\n"),
            "'openapi.yaml'",
            id="path-without-slash",
        ),
        pytest.param(
            lambda: replaced("  /openapi.yaml:\n    get:", "  /openapi.yaml:\n    GET:"),
            "'GET'",
            id="upper-case-method",
        ),
        pytest.param(
            lambda: replaced("      operationId: openapi\n", "      operationID: openapi\n"),
            "operationID",
            id="unknown-key",
        ),
        pytest.param(
            lambda: replaced(
                "        '200':\n          description: The account.",
                "        'gone':\n          description: The account.",
            ),
            "'gone'",
            id="bad-status",
        ),
        pytest.param(
            lambda: replaced(
                "        '200':\n          description: The account.",
                "        200:\n          description: The account.",
            ),
            "not a string",
            id="unquoted-status",
        ),
        pytest.param(lambda: replaced("  /openapi.yaml:\n", "\t/openapi.yaml:\n"), "not YAML", id="tab"),
        pytest.param(
            lambda: document().replace(
                "{$ref: '#/components/schemas/Account'}", "{$ref: '#/components/schemas/Acount'}", 1
            ),
            "dangling reference",
            id="dangling-reference",
        ),
        pytest.param(
            lambda: replaced(
                "              schema: {type: object}\n\n  /v1/account:",
                "              schema: {type: objec}\n\n  /v1/account:",
            ),
            "'objec'",
            id="schema-typo",
        ),
        pytest.param(
            lambda: replaced("example: {max_devices: 500}", "example: {max_devices: 0}"),
            "is less than the minimum of 1",
            id="example-out-of-range",
        ),
        pytest.param(
            lambda: replaced(
                "example: {name: vnc, type: vnc, port: 5900}", "example: {name: vnc, type: vnc, port: '5900'}"
            ),
            "is not of type 'integer'",
            id="example-wrong-type",
        ),
        pytest.param(
            lambda: document().replace(
                "example: {device_ids: [3f0c7a4e-2b1d-4c55-9e61-0a8d2f7b9c10]}",
                "example: {device_ids: [3f0c7a4e-2b1d-4c55-9e61]}",
                1,
            ),
            "is not a 'uuid'",
            id="example-not-a-uuid",
        ),
    ],
)
def test_a_malformed_document_is_refused(malformed: Any, expected: str) -> None:
    """The checks above are not vacuous: each kind of mistake in the operator document is found."""
    problems = openapi_problems(DOCUMENT, malformed())
    assert problems and any(expected in problem for problem in problems), problems


# --- the operator document as a whole -------------------------------------------------------------


def test_the_document_is_openapi_3_1_for_the_operator_api() -> None:
    assert re.fullmatch(r"3\.1\.\d+", spec()["openapi"])
    assert spec()["info"]["title"] == "fleetreg operator API"
    assert spec()["info"]["version"] == "1"


def test_the_bearer_scheme_is_declared() -> None:
    scheme = spec()["components"]["securitySchemes"][BEARER]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"


def test_the_app_is_built_without_starting_it(app: web.Application) -> None:
    """No pool before startup: the routes above came from an app that touched nothing."""
    assert RESOURCES not in app
    assert not app.frozen


def test_openapi_yaml_serves_this_document() -> None:
    assert routes.OPENAPI == DOCUMENT


async def test_the_served_document_is_this_file(app: web.Application) -> None:
    route = code_routes(app)[("GET", "/openapi.yaml")]
    response = await route.handler(mocked_request(app, "GET", "/openapi.yaml"))
    assert isinstance(response, web.Response)
    assert response.text == document()
    assert response.content_type == "application/yaml"


# --- routes -----------------------------------------------------------------------------------------


def test_every_route_is_documented_and_every_documented_route_exists(app: web.Application) -> None:
    in_code = set(code_routes(app))
    in_document = documented_routes()
    assert in_code, "the app has no routes"
    undocumented = sorted(in_code - in_document)
    unserved = sorted(in_document - in_code)
    assert not undocumented and not unserved, (
        f"routes of the code missing from {DOCUMENT.name}: {undocumented}; "
        f"documented routes the code does not serve: {unserved}"
    )


def test_every_v1_operation_needs_the_bearer_scheme() -> None:
    for path, method, operation_ in operations():
        schemes = documented_schemes(operation_)
        if path.startswith("/v1/"):
            assert schemes == [BEARER], f"{method.upper()} {path}: security {schemes}, not [{BEARER}]"
            assert "401" in operation_["responses"], f"{method.upper()} {path} documents no 401"
        else:
            assert schemes == [], f"{method.upper()} {path} is served without authentication"


async def test_the_documented_security_is_what_the_code_asks_for(app: web.Application) -> None:
    """Every route is called without an Authorization header: the authed ones refuse at once,
    before they touch the (absent) database; the others answer."""
    for (method, path), route in sorted(code_routes(app).items()):
        try:
            await route.handler(mocked_request(app, method, path))
        except Unauthorized as exc:
            assert exc.rule == "bearer"
            needs_key = True
        else:
            needs_key = False
        documented = BEARER in documented_schemes(operation(method, path))
        assert needs_key == documented, (
            f"{method} {path}: code needs a key: {needs_key}, document: {documented}"
        )


def test_every_authed_route_documents_the_status_the_code_answers_with(app: web.Application) -> None:
    for (method, path), route in sorted(code_routes(app).items()):
        closure = inspect.getclosurevars(route.handler).nonlocals
        if "status" not in closure:  # not wrapped by authed(...): health, metrics, this document
            continue
        documented = [code for code in operation(method, path)["responses"] if code[0] == "2"]
        assert documented == [str(closure["status"])], (
            f"{method} {path}: code {closure['status']}, doc {documented}"
        )


def test_every_path_parameter_is_declared_and_every_declared_one_is_in_the_path() -> None:
    for path, method, _ in operations():
        names = template_names(path)
        declared = [p for p in parameters(path, method) if p["in"] == "path"]
        where = f"{method.upper()} {path}"
        assert sorted(p["name"] for p in declared) == sorted(names), f"{where}: path parameters {declared}"
        assert all(p.get("required") is True for p in declared), (
            f"{where}: a path parameter must be required: true"
        )
        for p in declared:
            assert resolve(p["schema"]).get("format") == "uuid", f"{where}: {p['name']} is an ID (a UUID)"


def test_every_operation_documents_its_errors_as_error_bodies() -> None:
    for path, method, operation_ in operations():
        responses = operation_["responses"]
        assert any(code.startswith("2") for code in responses), f"{method.upper()} {path}"
        if template_names(path) and path.startswith("/v1/"):
            assert "404" in responses, f"{method.upper()} {path}: an unknown ID is a 404"


# --- choices the handlers accept ------------------------------------------------------------------


def test_the_device_list_query_follows_the_handler() -> None:
    query = {p["name"]: p for p in parameters("/v1/devices", "get")}
    assert set(query) == {*device_search.SEARCH_PARAMETERS, *device_search.PAGE_PARAMETERS}
    assert all(p["in"] == "query" and not p.get("required", False) for p in query.values())
    assert resolve(query["state"]["schema"])["enum"] == list(device_search.DEVICE_STATES)
    assert resolve(query["lifecycle"]["schema"])["enum"] == list(device_search.LIFECYCLES)
    assert resolve(query["sort"]["schema"])["enum"] == list(device_search.SORT_KEYS)
    assert resolve(query["order"]["schema"])["enum"] == list(device_search.ORDERS)
    exported = {p["name"]: p for p in parameters("/v1/devices/export", "get")}
    assert set(exported) == {*device_search.SEARCH_PARAMETERS, "format"}
    assert resolve(exported["format"]["schema"])["enum"] == list(devices.EXPORT_FORMATS)
    environ = {"DATABASE_URL": "postgresql://u@h/db", "FLEETREG_SECRET_KEY": "k" * 32}
    default_max = OperatorSettings.from_env(Env(environ)).page_limit_max
    limit = resolve(query["limit"]["schema"])
    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == (
        "integer",
        1,
        default_max,
        100,
    )


def test_the_service_types_follow_the_code() -> None:
    schemas = spec()["components"]["schemas"]
    assert set(schemas["ServiceInput"]["properties"]["type"]["enum"]) == set(SERVICE_TYPES) - {
        BULK_SERVICE_TYPE
    }
    assert set(schemas["Service"]["properties"]["type"]["enum"]) == set(SERVICE_TYPES)


# --- throttling and the issue 9 operations ---------------------------------------------------------


def test_every_throttled_route_documents_429_with_retry_after(app: web.Application) -> None:
    """The throttle middleware answers 429 on every path but the operational ones."""
    for method, path in sorted(code_routes(app)):
        responses = operation(method, path)["responses"]
        if path in UNTHROTTLED_PATHS:
            assert "429" not in responses, f"{method} {path} is never throttled"
        else:
            assert responses.get("429") == {"$ref": "#/components/responses/TooManyRequests"}, (
                f"{method} {path} documents no 429"
            )
    components = spec()["components"]
    too_many = components["responses"]["TooManyRequests"]
    assert too_many["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert too_many["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "retry_after" in components["schemas"]["Error"]["properties"]


def test_the_batch_outcomes_and_alert_kinds_follow_the_code() -> None:
    schemas = spec()["components"]["schemas"]
    outcome = schemas["BatchResult"]["properties"]["results"]["items"]["properties"]["outcome"]
    assert set(outcome["enum"]) == set(get_args(ChangeOutcome))
    assert schemas["DeviceIdsInput"]["properties"]["device_ids"]["maxItems"] == devices.BATCH_MAX_IDS
    assert schemas["SecurityAlert"]["properties"]["kind"]["enum"] == list(trail.ALERT_KINDS)
    kinds = parameters("/v1/security-alerts", "get")
    assert next(p for p in kinds if p["name"] == "kind")["schema"]["enum"] == list(trail.ALERT_KINDS)
    quota = schemas["AutoRegistrationInput"]["properties"]["max_devices"]
    assert (quota["minimum"], quota["maximum"]) == (1, auto_inputs.MAX_DEVICES_LIMIT)
