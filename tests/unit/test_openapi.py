"""Keeps services/operator/openapi.yaml, the OpenAPI 3.1 description of the operator API, in step
with the code.

The code is the source of truth: the routes the operator app's router holds, which of them ask
for an account API key, the status a success answers with and the choices the handlers accept.
The app is built but never started, so nothing here connects anywhere.

The route checks use the small line-based reader below, written when PyYAML was not yet a
(dev) dependency; the newer checks at the end read the document with PyYAML. The reader reads
the block layout this document uses (two spaces per level: paths at 2, methods at 4, operation keys at 6) and
raises :class:`LayoutError` on anything else, so that a document it cannot read fails the tests
instead of yielding fewer routes than are there.
"""

from __future__ import annotations

import inspect
import re
import socket
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_args

import asyncpg
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from services.operator import handlers, routes
from services.operator import resources as operator_resources
from services.operator.app import create_app
from services.operator.resources import RESOURCES
from services.operator.settings import OperatorSettings
from shared.db.devices import ChangeOutcome
from shared.domain.products import BULK_SERVICE_TYPE, SERVICE_TYPES
from shared.errors import Unauthorized
from shared.settings import DatabaseSettings, Env, HttpSettings, Secret
from shared.throttle import UNTHROTTLED_PATHS

DOCUMENT = Path(__file__).resolve().parents[2] / "services" / "operator" / "openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")
BEARER = "bearerAuth"
SETTINGS = OperatorSettings(
    http=HttpSettings(host="127.0.0.1", port=0),
    database=DatabaseSettings(url=Secret("postgresql://x@localhost/x"), pool_min=1, pool_max=1),
    online_ttl_seconds=300,
    page_limit_max=1000,
    log_level="INFO",
)


# --- a strict reader of the document's block layout ------------------------------------------


class LayoutError(ValueError):
    """The document is not in the layout the reader understands."""


@dataclass(frozen=True)
class Line:
    number: int
    indent: int
    text: str


@dataclass(frozen=True)
class Parameter:
    name: str
    location: str
    required: bool
    schema: dict[str, str]


@dataclass
class Operation:
    method: str
    security: list[str] | None = None  # None: not declared here, the global security applies
    parameters: list[Parameter] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)


@dataclass
class PathItem:
    path: str
    parameters: list[Parameter] = field(default_factory=list)
    operations: dict[str, Operation] = field(default_factory=dict)


_KEY = re.compile(
    r"""(?P<key>'[^']*'|"[^"]*"|[^\s'"{}\[\]#,&*!|>%@`-][^:]*?|-[^\s:][^:]*?):(?:\s+(?P<value>\S.*))?"""
)
_RESPONSE = re.compile(r"[1-5]\d\d|[1-5]XX|default")
_SECURITY_ITEM = re.compile(r"- (?P<name>[A-Za-z0-9_.-]+): \[\]")


def lines_of(text: str) -> list[Line]:
    """The lines that carry content, with their indentation; blank and comment lines dropped."""
    found = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.rstrip()
        content = stripped.lstrip(" ")
        if not content or content.startswith("#"):
            continue
        if content[0] == "\t" or "\t" in stripped[: len(stripped) - len(content)]:
            raise LayoutError(f"line {number}: tab in the indentation")
        found.append(Line(number, len(stripped) - len(content), content))
    return found


def blocks(lines: list[Line], indent: int) -> list[tuple[Line, list[Line]]]:
    """Split ``lines`` into blocks, each a line at exactly ``indent`` and the deeper lines under it."""
    found: list[tuple[Line, list[Line]]] = []
    for line in lines:
        if line.indent == indent:
            found.append((line, []))
        elif line.indent > indent and found:
            found[-1][1].append(line)
        else:
            raise LayoutError(
                f"line {line.number}: expected indentation {indent}, found {line.indent}: {line.text!r}"
            )
    return found


def key_value(line: Line) -> tuple[str, str | None]:
    """A ``key:`` or ``key: value`` line as (key, value); None when the value is a block below."""
    match = _KEY.fullmatch(line.text)
    if match is None:
        raise LayoutError(f"line {line.number}: not a 'key:' line: {line.text!r}")
    key = match["key"]
    if key[0] in "'\"":
        key = key[1:-1]
    return key, match["value"]


def block_only(line: Line, value: str | None, rest: list[Line]) -> list[Line]:
    if value is not None:
        raise LayoutError(f"line {line.number}: the reader needs a block below, not {value!r}")
    if not rest:
        raise LayoutError(f"line {line.number}: {line.text!r} is empty")
    return rest


def flow_scalars(line: Line, value: str) -> dict[str, str]:
    """A one-line mapping of scalars, ``{a: 1, b: x}``; refuses anything nested."""
    if not (value.startswith("{") and value.endswith("}")) or any(c in value[1:-1] for c in "{}[]'\""):
        raise LayoutError(f"line {line.number}: not a one-line mapping of plain scalars: {value!r}")
    pairs = [part.split(": ") for part in value[1:-1].split(", ")]
    if any(len(pair) != 2 for pair in pairs):
        raise LayoutError(f"line {line.number}: cannot read {value!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def flow_list(line: Line, value: str) -> list[str]:
    """A one-line list of plain scalars, ``[a, b]``."""
    if not (value.startswith("[") and value.endswith("]")) or any(c in value[1:-1] for c in "{}[]'\""):
        raise LayoutError(f"line {line.number}: not a one-line list of plain scalars: {value!r}")
    return [item.strip() for item in value[1:-1].split(",") if item.strip()]


def scalar_mapping(lines: list[Line], indent: int) -> dict[str, tuple[Line, str | None, list[Line]]]:
    found: dict[str, tuple[Line, str | None, list[Line]]] = {}
    for head, rest in blocks(lines, indent):
        key, value = key_value(head)
        if key in found:
            raise LayoutError(f"line {head.number}: {key!r} twice")
        found[key] = (head, value, rest)
    return found


def read_security(line: Line, value: str | None, rest: list[Line], indent: int) -> list[str]:
    """``security: []`` or a block list of ``- scheme: []``."""
    if value == "[]" and not rest:
        return []
    names = []
    for head, deeper in blocks(block_only(line, value, rest), indent):
        match = _SECURITY_ITEM.fullmatch(head.text)
        if match is None or deeper:
            raise LayoutError(f"line {head.number}: not a '- scheme: []' item: {head.text!r}")
        names.append(match["name"])
    return names


def read_parameters(line: Line, value: str | None, rest: list[Line], indent: int) -> list[Parameter]:
    """A block list of inline parameters (``- name: ...`` with ``in``, ``required``, ``schema``)."""
    if value == "[]" and not rest:
        return []
    found = []
    for head, deeper in blocks(block_only(line, value, rest), indent):
        if not head.text.startswith("- "):
            raise LayoutError(f"line {head.number}: a parameter must be a '- ' item: {head.text!r}")
        first = Line(head.number, indent + 2, head.text[2:])
        keys = scalar_mapping([first, *deeper], indent + 2)
        if "$ref" in keys:
            raise LayoutError(f"line {head.number}: the reader does not follow parameter references")
        for required_key in ("name", "in"):
            if keys.get(required_key, (head, None, []))[1] is None:
                raise LayoutError(f"line {head.number}: a parameter needs '{required_key}: ...'")
        schema: dict[str, str] = {}
        if "schema" in keys:
            schema_line, schema_value, schema_rest = keys["schema"]
            if schema_value is not None:
                schema = flow_scalars(schema_line, schema_value)
            else:
                schema = {
                    k: v
                    for k, (_, v, _) in scalar_mapping(
                        block_only(schema_line, None, schema_rest), indent + 4
                    ).items()
                    if v is not None
                }
        found.append(
            Parameter(
                name=str(keys["name"][1]),
                location=str(keys["in"][1]),
                required=keys.get("required", (head, "false", []))[1] == "true",
                schema=schema,
            )
        )
    return found


def read_operation(method: str, lines: list[Line]) -> Operation:
    operation = Operation(method)
    annotations = {"tags", "summary", "description", "operationId", "requestBody", "deprecated"}
    for key, (line, value, rest) in scalar_mapping(lines, 6).items():
        if key == "security":
            operation.security = read_security(line, value, rest, 8)
        elif key == "parameters":
            operation.parameters = read_parameters(line, value, rest, 8)
        elif key == "responses":
            for head, _ in blocks(block_only(line, value, rest), 8):
                code, _ = key_value(head)
                if not _RESPONSE.fullmatch(code):
                    raise LayoutError(f"line {head.number}: {code!r} is not a response status")
                operation.responses.append(code)
        elif key not in annotations:
            raise LayoutError(f"line {line.number}: the reader does not know the operation key {key!r}")
    if not operation.responses:
        raise LayoutError(f"{method}: no responses")
    return operation


def read_paths(text: str) -> dict[str, PathItem]:
    """The ``paths:`` section: each path with its parameters and operations."""
    top = scalar_mapping(lines_of(text), 0)
    if "paths" not in top:
        raise LayoutError("the document has no top-level 'paths:'")
    line, value, rest = top["paths"]
    items: dict[str, PathItem] = {}
    for head, body in blocks(block_only(line, value, rest), 2):
        path, path_value = key_value(head)
        if not path.startswith("/"):
            raise LayoutError(f"line {head.number}: a path starts with '/': {path!r}")
        if path in items:
            raise LayoutError(f"line {head.number}: path {path} twice")
        item = items[path] = PathItem(path)
        for key, (key_line, key_val, key_rest) in scalar_mapping(
            block_only(head, path_value, body), 4
        ).items():
            if key in METHODS:
                item.operations[key] = read_operation(key, block_only(key_line, key_val, key_rest))
            elif key == "parameters":
                item.parameters = read_parameters(key_line, key_val, key_rest, 6)
            elif key not in ("summary", "description"):
                raise LayoutError(f"line {key_line.number}: {key!r} is not a method the reader knows")
        if not item.operations:
            raise LayoutError(f"line {head.number}: {path} has no operation")
    return items


def read_section(text: str, *keys: str) -> tuple[str | None, list[Line]]:
    """The value and the block under the nested mapping keys ``keys`` (two spaces a level)."""
    value: str | None = None
    lines = lines_of(text)
    for depth, key in enumerate(keys):
        found = scalar_mapping(lines, 2 * depth)
        if key not in found:
            raise LayoutError(f"no {'.'.join(keys[: depth + 1])} in the document")
        _, value, lines = found[key]
    return value, lines


def read_scalar(text: str, *keys: str) -> str:
    value, rest = read_section(text, *keys)
    if value is None or rest:
        raise LayoutError(f"{'.'.join(keys)} is not a one-line value")
    return value.strip("'\"")


# --- the document and the code ----------------------------------------------------------------


@cache
def document() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


@cache
def paths() -> dict[str, PathItem]:
    return read_paths(document())


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in paths().items() for method in item.operations}


def global_security() -> list[str] | None:
    top = scalar_mapping(lines_of(document()), 0)
    if "security" not in top:
        return None
    line, value, rest = top["security"]
    return read_security(line, value, rest, 2)


def documented_schemes(operation: Operation) -> list[str]:
    if operation.security is not None:
        return operation.security
    return global_security() or []


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
        found[(route.method, route.resource.canonical)] = route
    return found


def template_names(path: str) -> list[str]:
    return re.findall(r"\{([^{}]+)\}", path)


def mocked_request(app: web.Application, method: str, path: str) -> web.Request:
    """A request for ``path`` with an ID in every path parameter and no Authorization header."""
    params = {name: str(uuid.uuid4()) for name in template_names(path)}
    concrete = path.format(**params)
    return make_mocked_request(method, concrete, app=app, match_info=params)


# --- the reader itself --------------------------------------------------------------------------

SAMPLE = """\
openapi: 3.1.0
paths:
  /a/{id}:
    parameters:
      - name: id
        in: path
        required: true
        schema: {type: string}
    get:
      description: |
        text: that looks like a key
        - and like an item
      responses:
        '200': {description: ok}
    delete:
      security: []
      responses:
        '404':
          description: gone
  /b:
    post:
      responses:
        default: {description: any}
components: {}
"""


def test_the_reader_reads_a_well_formed_sample() -> None:
    items = read_paths(SAMPLE)
    assert {(m, p) for p, i in items.items() for m in i.operations} == {
        ("get", "/a/{id}"),
        ("delete", "/a/{id}"),
        ("post", "/b"),
    }
    assert items["/a/{id}"].parameters == [Parameter("id", "path", True, {"type": "string"})]
    assert items["/a/{id}"].operations["get"].responses == ["200"]
    assert items["/a/{id}"].operations["get"].security is None
    assert items["/a/{id}"].operations["delete"].security == []


@pytest.mark.parametrize(
    "malformed",
    [
        pytest.param(SAMPLE.replace("paths:", "routes:"), id="no-paths-section"),
        pytest.param("openapi: 3.1.0\npaths:\ncomponents: {}\n", id="empty-paths"),
        pytest.param("paths: {/a: {get: {responses: {'200': {description: ok}}}}}\n", id="flow-style-paths"),
        pytest.param(SAMPLE.replace("  /b:", "   /b:"), id="path-at-3-spaces"),
        pytest.param(SAMPLE.replace("  /b:", "  b:"), id="path-without-slash"),
        pytest.param(SAMPLE.replace("    post:", "    head:"), id="unknown-method"),
        pytest.param(SAMPLE.replace("    post:", "    POST:"), id="upper-case-method"),
        pytest.param(SAMPLE.replace("    get:\n", "    get: {}\n"), id="flow-operation"),
        pytest.param(SAMPLE.replace("  /b:\n", "  /a/{id}:\n"), id="path-twice"),
        pytest.param(SAMPLE.replace("    delete:", "    get:"), id="method-twice"),
        pytest.param(
            SAMPLE.replace("    parameters:\n      - name", "    parameters:\n    - name"), id="compact-list"
        ),
        pytest.param(
            SAMPLE.replace("      - name: id", "      - $ref: '#/x'\n        name: id"), id="parameter-ref"
        ),
        pytest.param(SAMPLE.replace("        '404':", "        'gone':"), id="bad-status"),
        pytest.param(SAMPLE.replace("      security: []", "      security: [{x: []}]"), id="flow-security"),
        pytest.param(SAMPLE.replace("  /b:\n    post:\n", "  /b:\n    summary: no operation\n"), id="no-op"),
        pytest.param(SAMPLE.replace("    get:", "\tget:"), id="tab"),
    ],
)
def test_the_reader_raises_on_what_it_cannot_read(malformed: str) -> None:
    with pytest.raises(LayoutError):
        read_paths(malformed)


# --- the document as a whole ----------------------------------------------------------------------


def test_the_document_is_openapi_3_1_for_the_operator_api() -> None:
    assert re.fullmatch(r"3\.1\.\d+", read_scalar(document(), "openapi"))
    assert read_scalar(document(), "info", "title") == "fleetreg operator API"
    assert read_scalar(document(), "info", "version") == "1"


def test_the_bearer_scheme_is_declared() -> None:
    scheme = scalar_mapping(read_section(document(), "components", "securitySchemes", BEARER)[1], 6)
    assert scheme["type"][1] == "http"
    assert scheme["scheme"][1] == "bearer"


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
    for path, item in paths().items():
        for method, operation in item.operations.items():
            schemes = documented_schemes(operation)
            if path.startswith("/v1/"):
                assert schemes == [BEARER], f"{method.upper()} {path}: security {schemes}, not [{BEARER}]"
                assert "401" in operation.responses, f"{method.upper()} {path} documents no 401"
            else:
                assert schemes == [], f"{method.upper()} {path} is served without authentication"


async def test_the_documented_security_is_what_the_code_asks_for(app: web.Application) -> None:
    """Every route is called without an Authorization header: the authed ones refuse at once,
    before they touch the (absent) database; the others answer."""
    for (method, path), route in sorted(code_routes(app).items()):
        operation = paths()[path].operations[method.lower()]
        try:
            await route.handler(mocked_request(app, method, path))
        except Unauthorized as exc:
            assert exc.rule == "bearer"
            needs_key = True
        else:
            needs_key = False
        documented = BEARER in documented_schemes(operation)
        assert needs_key == documented, (
            f"{method} {path}: code needs a key: {needs_key}, document: {documented}"
        )


def test_every_authed_route_documents_the_status_the_code_answers_with(app: web.Application) -> None:
    for (method, path), route in sorted(code_routes(app).items()):
        closure = inspect.getclosurevars(route.handler).nonlocals
        if "status" not in closure:  # not wrapped by authed(...): health, metrics, this document
            continue
        documented = [code for code in paths()[path].operations[method.lower()].responses if code[0] == "2"]
        assert documented == [str(closure["status"])], (
            f"{method} {path}: code {closure['status']}, doc {documented}"
        )


def test_every_path_parameter_is_declared_and_every_declared_one_is_in_the_path() -> None:
    for path, item in paths().items():
        names = template_names(path)
        for method, operation in item.operations.items():
            declared = [p for p in [*item.parameters, *operation.parameters] if p.location == "path"]
            where = f"{method.upper()} {path}"
            assert sorted(p.name for p in declared) == sorted(names), f"{where}: path parameters {declared}"
            assert all(p.required for p in declared), f"{where}: a path parameter must be required: true"
            for p in declared:
                assert p.schema.get("format") == "uuid", f"{where}: {p.name} is an ID (a UUID)"


def test_every_operation_documents_its_errors_as_error_bodies() -> None:
    for path, item in paths().items():
        for method, operation in item.operations.items():
            assert any(code.startswith("2") for code in operation.responses), f"{method.upper()} {path}"
            if template_names(path) and path.startswith("/v1/"):
                assert "404" in operation.responses, f"{method.upper()} {path}: an unknown ID is a 404"


# --- choices the handlers accept ------------------------------------------------------------------


def test_the_device_list_query_follows_the_handler() -> None:
    query = {p.name: p for p in paths()["/v1/devices"].operations["get"].parameters}
    assert set(query) == {"state", "hardware_id", "registration_id", "limit", "after"}
    assert all(p.location == "query" and not p.required for p in query.values())
    state = query["state"]
    assert flow_list(Line(0, 0, "state"), state.schema["enum"]) == list(handlers.DEVICE_STATES)
    default_max = OperatorSettings.from_env(Env({"DATABASE_URL": "postgresql://u@h/db"})).page_limit_max
    limit = query["limit"].schema
    assert (limit["type"], limit["minimum"], limit["maximum"], limit["default"]) == (
        "integer",
        "1",
        str(default_max),
        "100",
    )


def test_the_service_types_follow_the_code() -> None:
    def enum(schema: str) -> list[str]:
        value, rest = read_section(document(), "components", "schemas", schema, "properties", "type", "enum")
        assert value is not None and not rest
        return flow_list(Line(0, 0, schema), value)

    assert set(enum("ServiceInput")) == set(SERVICE_TYPES) - {BULK_SERVICE_TYPE}
    assert set(enum("Service")) == set(SERVICE_TYPES)


# --- throttling and the issue 9 operations (read with PyYAML, as a user's tools would) ---------


@cache
def loaded() -> dict[str, Any]:
    document_: dict[str, Any] = yaml.safe_load(document())
    return document_


def test_every_throttled_route_documents_429_with_retry_after(app: web.Application) -> None:
    """The throttle middleware answers 429 on every path but the operational ones."""
    spec = loaded()
    for method, path in sorted(code_routes(app)):
        responses = spec["paths"][path][method.lower()]["responses"]
        if path in UNTHROTTLED_PATHS:
            assert "429" not in responses, f"{method} {path} is never throttled"
        else:
            assert responses.get("429") == {"$ref": "#/components/responses/TooManyRequests"}, (
                f"{method} {path} documents no 429"
            )
    too_many = spec["components"]["responses"]["TooManyRequests"]
    assert too_many["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert too_many["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "retry_after" in spec["components"]["schemas"]["Error"]["properties"]


def test_the_batch_outcomes_and_alert_kinds_follow_the_code() -> None:
    schemas = loaded()["components"]["schemas"]
    outcome = schemas["BatchResult"]["properties"]["results"]["items"]["properties"]["outcome"]
    assert set(outcome["enum"]) == set(get_args(ChangeOutcome))
    assert schemas["DeviceIdsInput"]["properties"]["device_ids"]["maxItems"] == handlers.BATCH_MAX_IDS
    assert schemas["SecurityAlert"]["properties"]["kind"]["enum"] == list(handlers.ALERT_KINDS)
    kinds = loaded()["paths"]["/v1/security-alerts"]["get"]["parameters"]
    assert next(p for p in kinds if p["name"] == "kind")["schema"]["enum"] == list(handlers.ALERT_KINDS)
    quota = schemas["AutoRegistrationInput"]["properties"]["max_devices"]
    assert (quota["minimum"], quota["maximum"]) == (1, handlers.MAX_DEVICES_LIMIT)
