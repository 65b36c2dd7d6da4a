"""The HTTP side every service shares: health, readiness, metrics, JSON errors, running.

Two listeners per service (three for the intake):

* the public one(s), ``FLEETREG_HTTP_PORT`` (and the intake's https port): the service's
  API only; ``/healthz``, ``/readyz`` and ``/metrics`` are 404 there;
* the operations port, ``FLEETREG_<SERVICE>_OPS_PORT`` (default the service's port + 100)
  on the same host, for probes and Prometheus only (:func:`ops_app`):

  * ``/healthz``: the process serves requests (liveness);
  * ``/readyz``: every component the service registered in ``READINESS`` is ready and the
    database answers (readiness); the database's answer is kept for
    ``READINESS_CACHE_SECONDS``, so a flood of probes costs at most one query a second;
  * ``/metrics``: Prometheus exposition.

Domain errors become a 4xx JSON body naming the field and the rule; anything unexpected
becomes a logged 500 with no internals in the answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from shared import connections
from shared.cache import SharedResult
from shared.db.pool import TRANSIENT_ERRORS, Pool
from shared.domain import console_assertions
from shared.domain.roles import Role, at_least
from shared.errors import (
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    shortened,
)
from shared.logging import exception_summary
from shared.metrics import ERRORS, HTTP_LATENCY, HTTP_REQUESTS, READINESS_PROBES, exposition
from shared.periodic import PeriodicJob
from shared.settings import HttpSettings
from shared.tls import CLIENT_CERT_TRUST

if TYPE_CHECKING:
    from shared.domain.accounts import Account

log = logging.getLogger(__name__)

SERVICE_NAME = web.AppKey("service_name", str)
ReadinessProbe = Callable[[], Awaitable[bool]]


class Readiness:
    """Which components of a service are ready; each sets its own flag."""

    def __init__(self) -> None:
        self.parts: dict[str, bool] = {}

    def __setitem__(self, component: str, ready: bool) -> None:
        self.parts[component] = ready


READINESS = web.AppKey("readiness", Readiness)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
READINESS_PROBE: web.AppKey[ReadinessProbe] = web.AppKey("readiness_probe")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(document: Any) -> str:
    return orjson.dumps(document).decode()


def json_response(document: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer encoded with orjson (several times faster than the standard library)."""
    return web.json_response(document, status=status, headers=headers, dumps=_dumps)


def json_error(status: int, error: str, message: str, **extra: str) -> web.Response:
    return json_response({"error": error, "message": message, **extra}, status=status)


def refuse_encoded_body(request: web.Request) -> None:
    """No API takes a compressed body (RFC 9110 section 8.4: 415 for a content coding the
    server does not accept; identity is no coding)."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(
            "request bodies are not accepted with a Content-Encoding; send them uncompressed",
            field="Content-Encoding",
            rule="identity",
        )


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    service = request.app[SERVICE_NAME]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        refuse_encoded_body(request)
        response = await handler(request)
    except DomainError as exc:
        response = json_response(exc.to_dict(), status=exc.status, headers=exc.headers() or None)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY_BYTES]
        error = PayloadTooLarge(
            f"the body is larger than the limit of {limit} bytes", rule=f"max_body_bytes={limit}"
        )
        response = json_response(error.to_dict(), status=413)
    except (*TRANSIENT_ERRORS, KafkaError) as exc:
        if isinstance(exc, ConnectionResetError) and request.transport is None:
            # The client left while its body was read (or was cut off by a bound of
            # shared/connections.py): no one to answer, and nothing is unavailable.
            ERRORS.labels(service, "client_gone").inc()
            return json_error(400, "client_gone", "the connection ended before the request did")
        part = "broker" if isinstance(exc, KafkaError) else "registry"
        # The exception's type and place only: a driver's message may quote a parameter.
        log.warning(f"{part} unreachable", extra={"route": route, "error": exception_summary(exc)})
        ERRORS.labels(service, f"{part}_unreachable").inc()
        response = json_response(
            {"error": "unavailable", "message": f"the {part} is unreachable for a moment; try again"},
            status=503,
            headers={"Retry-After": "5"},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except Exception as exc:
        # Not the exception's text nor its traceback's: a parser's or driver's message
        # may quote the request (a header, the body, a path ID) and so a secret.
        log.error("unhandled error", extra={"route": route, "error": exception_summary(exc)})
        ERRORS.labels(service, "unhandled").inc()
        response = json_error(500, "internal", "internal error; the details are in the service log")
    requests, latency = _route_metrics(service, route, response.status)
    requests.inc()
    latency.observe(time.perf_counter() - started)
    return response


@functools.lru_cache(maxsize=1024)  # services x routes x statuses: a few dozen in practice
def _route_metrics(service: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency histogram of one route and status: ``labels()``
    takes a lock and checks its arguments on every call, measurable on the hot path."""
    return HTTP_REQUESTS.labels(service, route, str(status)), HTTP_LATENCY.labels(service, route)


# How long /readyz reuses the database's answer: probes (Kubernetes every 5-10 s, Compose
# every 10 s) see a change within a second, and any rate of /readyz costs at most one
# Postgres query a second per instance (15,000 /readyz in 9.4 s used to be 15,000 queries).
READINESS_CACHE_SECONDS = 1.0
# How long /readyz waits for the database's answer before it answers "not ready": a
# registry that stops answering (dropped packets) held every /readyz until the driver's
# own 30 s timeout, so probes got no answer at all. Below the probes' own timeouts
# (Compose and Kubernetes: 3 s) so that they read a 503 rather than time out.
READINESS_TIMEOUT_SECONDS = 2.0

SERVED_APP = web.AppKey("served_app", web.Application)  # the ops app's service app
DATABASE_READY: web.AppKey[SharedResult[bool | None]] = web.AppKey("database_ready")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 ``{"ready": true, "parts": {...}}`` when every part is ready, else 503 naming
    them; the database part is at most ``READINESS_CACHE_SECONDS`` old."""
    parts = dict(request.app[SERVED_APP][READINESS].parts)
    database = await request.app[DATABASE_READY].get()
    if database is not None:
        parts["database"] = database
    ready = bool(parts) and all(parts.values())
    return json_response({"ready": ready, "parts": parts}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def _database_probe(app: web.Application) -> SharedResult[bool | None]:
    """The served app's database probe, shared by every /readyz within a second; None
    when the service registered none. Never raises and never waits longer than
    ``READINESS_TIMEOUT_SECONDS``: readiness must answer, whatever the dependency does."""

    async def probe() -> bool | None:
        check = app.get(READINESS_PROBE)  # set by the service's resources at start-up
        if check is None:
            return None
        READINESS_PROBES.labels(app[SERVICE_NAME]).inc()
        query = asyncio.ensure_future(check())
        # Its outcome is read even when nobody waits for it any more (no "never retrieved").
        query.add_done_callback(lambda task: task.cancelled() or task.exception())
        # asyncio.wait, not wait_for: cancelling a query on a connection that stopped
        # answering lasts until the driver gives up (32 s measured), and wait_for would wait
        # for that too. The cancelled query ends in the background.
        done, _ = await asyncio.wait({query}, timeout=READINESS_TIMEOUT_SECONDS)
        if not done:
            query.cancel()
            return False
        try:
            return query.result()
        except Exception:
            return False

    return SharedResult(probe, READINESS_CACHE_SECONDS)


def ops_app(app: web.Application) -> web.Application:
    """The operations app of a service app: ``/healthz``, ``/readyz`` and ``/metrics``,
    served on the operations port only (:func:`run`), never on a public listener."""
    ops = web.Application()
    ops[SERVED_APP] = app
    ops[DATABASE_READY] = _database_probe(app)
    ops.router.add_get("/healthz", healthz)
    ops.router.add_get("/readyz", readyz)
    ops.router.add_get("/metrics", metrics)
    return ops


def base_app(
    service: str,
    *,
    client_max_size: int = 1024**2,
    middlewares: tuple[Any, ...] = (),
    answer_middlewares: tuple[Any, ...] = (),
) -> web.Application:
    """A service's app with the shared error mapping; ``middlewares`` run inside it, so
    their domain errors (a 429) are answered like any other; ``answer_middlewares`` run
    outside it, so they see every answer, errors included, as a response (the intake's
    plain-text form), and must never raise. Health, readiness and metrics are not on it:
    :func:`ops_app` serves them on the operations port."""
    app = web.Application(
        middlewares=[*answer_middlewares, errors_and_metrics, *middlewares], client_max_size=client_max_size
    )
    app[SERVICE_NAME] = service
    app[READINESS] = Readiness()
    app[MAX_BODY_BYTES] = client_max_size
    return app


@dataclass(frozen=True)
class TlsSite:
    """A second, https listener of the same app (the reference-compatible device API).
    Without a :class:`shared.tls.ClientCertTrust` in the app it asks for no client
    certificate; with one, the trust's listening context serves it (``run``)."""

    host: str
    port: int
    cert_file: str
    key_file: str

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def run(app: web.Application, settings: HttpSettings, tls: TlsSite | None = None) -> None:
    """Serve until SIGTERM or SIGINT; then stop accepting, finish in-flight work, clean up."""
    asyncio.run(_serve(app, settings, tls))


async def _serve(app: web.Application, settings: HttpSettings, tls: TlsSite | None) -> None:
    # auto_decompress=False: bodies are read as sent. No API takes a compressed body
    # (errors_and_metrics answers a Content-Encoding with 415 before the body is read);
    # decompressing one that is not what it says raised from inside aiohttp's parser
    # (a 500, and a traceback logged by aiohttp itself).
    bounds = settings.connections
    connections.return_large_buffers()
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=15, auto_decompress=False, **connections.handler_args(bounds)
    )
    # The operations listener: a runner of its own, so that no public site answers its routes.
    ops_runner = web.AppRunner(
        ops_app(app), access_log=None, shutdown_timeout=2, **connections.handler_args(bounds)
    )
    await runner.setup()
    await ops_runner.setup()
    gc.collect()  # start-up is done: what exists now lives as long as the process,
    gc.freeze()  # so full collections need not walk it again (shared/service.py)
    # Every public listener: its connections bounded and counted together (shared/connections.py).
    limits = connections.process_limits(bounds)
    # The operations listener is bounded like the public ones but counted apart: a flood
    # on the device port must not make the probes answer 503 (and get the pod restarted).
    ops_limits = connections.process_limits(bounds)
    site = functools.partial(
        connections.BoundedSite, runner, bounds=bounds, limits=limits, service=app[SERVICE_NAME]
    )
    trim_round = connections.heap_trimmer(limits, ops_limits)
    trimming = (
        PeriodicJob(app[SERVICE_NAME], "heap_trim", connections.TRIM_EVERY_SECONDS, trim_round)
        if trim_round is not None
        else None
    )
    try:
        await connections.BoundedSite(
            ops_runner,
            settings.host,
            settings.ops_port,
            bounds=bounds,
            limits=ops_limits,
            service=app[SERVICE_NAME],
        ).start()
        await site(settings.host, settings.port).start()
        if tls is not None:
            # The app's start-up (runner.setup) loaded the trust's first anchors already.
            trust = app.get(CLIENT_CERT_TRUST)
            context = trust.listening_context() if trust is not None else tls.context()
            await site(tls.host, tls.port, ssl_context=context).start()
        if trimming is not None:
            trimming.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "serving",
            extra={
                "port": settings.port,
                "tls_port": tls.port if tls else None,
                "ops_port": settings.ops_port,
                "max_connections": limits.total,
                "max_connections_per_source": limits.per_source,
            },
        )
        await stop.wait()
    finally:
        # The public listeners first: probes are answered until the service is gone.
        await runner.cleanup()
        await ops_runner.cleanup()
        if trimming is not None:
            await trimming.stop()


def decode_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or InvalidInput saying why it is not one: not
    JSON (rule ``json``), not an object (``type=object``), or a name given twice in one
    object, at any depth (``unique_fields``, the name as ``field``)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", field="body", rule="json") from exc
    if not isinstance(parsed, dict):
        raise InvalidInput("the body must be a JSON object", field="body", rule="type=object")
    # orjson keeps the last of repeated names ({"product_id": A, "product_id": B} meant B):
    # which one the caller meant is unknowable, so it is refused. orjson does not report
    # them, so the body, known to be valid JSON, is read again with the standard library,
    # which does (microseconds for the bodies the APIs take).
    try:
        json.loads(body, object_pairs_hook=_unique_names)
    except RecursionError:  # orjson's depth limit (1024) is above the interpreter's
        raise InvalidInput("the body is nested too deeply", field="body", rule="json") from None
    return parsed


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for name, value in pairs:
        if name in names:
            raise InvalidInput(
                f"the field {shortened(name)!r} is given twice in one object",
                field=shortened(name),
                rule="unique_fields",
            )
        names[name] = value
    return names


async def parse_json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is an empty object."""
    body = await request.read()
    return decode_json_object(body) if body.strip() else {}


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None. The scheme
    name is case-insensitive and any whitespace may follow it (RFC 9110 section 11.1,
    RFC 6750 section 2.1)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if not token:
        scheme, _, token = authorization.strip().partition("\t")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# The realm of the operator and bulk APIs' 401 challenges (``WWW-Authenticate``).
OPERATOR_REALM = "fleetreg operators"

# The request's per-key rate (shared.throttle's middleware sets ``Throttle.check_key``):
# :func:`account_for` counts a key on it once the key is known, never before, so that
# made-up tokens leave nothing in the limiter's memory (they took the operator from
# 68 to 628 MB in five minutes, from three addresses).
KeyRate = Callable[[str], Awaitable[None]]
KEY_RATE: web.RequestKey[KeyRate] = web.RequestKey("key_rate")


def api_key(request: web.Request) -> str:
    """The account API key the request carries (``Authorization: Bearer <key>``);
    Unauthorized without one (not counted against the source when the call carries no
    ``Authorization`` header at all: a proxy that strips it is not guessing)."""
    authorization = request.headers.get("Authorization")
    token = bearer(authorization)
    if token is None:
        raise Unauthorized(
            "send the account API key as 'Authorization: Bearer <key>'",
            field="Authorization",
            rule="bearer",
            realm=OPERATOR_REALM,
            presented=bool(authorization and authorization.strip()),
        )
    return token


async def account_for(
    key: str,
    pool: Pool,
    *,
    write: bool = False,
    role: str | None = None,
    request: web.Request | None = None,
) -> Account:
    """The account of an API key (Unauthorized otherwise), with the key that calls and who
    it belongs to; Forbidden (403) when the key's role is below ``role`` (by default operator
    for a call that would change state, ``write``, else viewer: a read-only key reads). With
    ``request``, the key, once found, counts one request on the request's per-key rate
    (:data:`KEY_RATE`: TooManyRequests past it)."""
    from shared.db import accounts  # the HTTP layer needs the registry only for this

    account = await accounts.account_for_key(pool, key)
    if account is None:
        raise Unauthorized("unknown or revoked API key", field="Authorization", realm=OPERATOR_REALM)
    rate = request.get(KEY_RATE) if request is not None else None
    if rate is not None:
        await rate(key)
    require_role(account, role or (Role.OPERATOR if write else Role.VIEWER), write=write)
    return account


def require_role(account: Account, needed: str, *, write: bool = True) -> None:
    """Forbidden (403) unless the caller's role is at least ``needed`` (``shared.domain.roles``),
    naming both roles; a viewer (a read-only key) asked to change something (``write``) is
    told it is read-only (rule ``scope=read-only``), and asked to read what is above it (a
    webhook, say) is told the role it lacks, as any other role is (rule ``role>=<needed>``)."""
    if at_least(account.role, needed):
        return
    if account.read_only and write:
        raise Forbidden(
            "this API key is read-only: it cannot change anything; use a full key",
            field="Authorization",
            rule="scope=read-only",
        )
    raise Forbidden(
        f"this call needs the {needed} role; the caller's role is {account.role}",
        field="Authorization",
        rule=f"role>={needed}",
    )


async def authenticate(
    request: web.Request, pool: Pool, *, write: bool | None = None, role: str | None = None
) -> Account:
    """The account of the request's API key (``Authorization: Bearer <key>``): the one way
    every HTTP API authenticates a key (:func:`api_key`, then :func:`account_for`, counted on
    the request's per-key rate). Unauthorized (401) without a key or for an unknown one,
    before any I/O for a request without one; Forbidden (403) when the key's role is below
    ``role``, by default operator when the call changes state (``write``, by default any
    method but GET and HEAD) and viewer otherwise."""
    return await _authenticate(request, lambda: pool, write, role)


async def _authenticate(
    request: web.Request, pool: Callable[[], Pool], write: bool | None, role: str | None
) -> Account:
    if write is None:
        write = request.method not in ("GET", "HEAD")
    assertion = request.headers.get(console_assertions.HEADER)
    accepting = request.config_dict.get(CONSOLE_ASSERTION_KEY)
    if assertion is not None and accepting and "Authorization" not in request.headers:
        return await account_for_assertion(
            assertion, pool(), accepting, write=write, role=role, request=request
        )
    key = api_key(request)  # first: a request without a key is refused before anything is looked up
    return await account_for(key, pool(), write=write, role=role, request=request)


# FLEETREG_SECRET_KEY's bytes, set only by a service that accepts the console's assertions
# (the bulk API, services/ingestion/app.py): every other API refuses them as no key.
CONSOLE_ASSERTION_KEY = web.AppKey("console_assertion_key", bytes)


async def account_for_assertion(
    token: str,
    pool: Pool,
    secret_key: bytes,
    *,
    write: bool,
    role: str | None = None,
    request: web.Request | None = None,
) -> Account:
    """Who a person's console session is, from the assertion the console forwarded
    (shared.domain.console_assertions): Unauthorized unless it opens with FLEETREG_SECRET_KEY,
    has not expired, and names a session that is still live for a user not removed, in the
    account it names. The role is the user's current one (read with the session), never
    more than the assertion's; the session's requests count on the person's rate, as their
    console requests do."""
    from shared.db import people_sessions  # the HTTP layer needs the registry only for this

    claims = console_assertions.verify(secret_key, token, now=time.time())
    found = (
        await people_sessions.actor_for_session(pool, claims.session_id, claims.user_id)
        if claims is not None
        else None
    )
    if claims is None or found is None or found[0].id != claims.account_id:
        raise Unauthorized(
            "the console session is not valid (ended, expired or not the console's)",
            field=console_assertions.HEADER,
            realm=OPERATOR_REALM,
        )
    account = found[0]
    if not at_least(claims.role, account.role):  # the lower of the asserted and the current role
        account = dataclasses.replace(account, role=claims.role)
    rate = request.get(KEY_RATE) if request is not None else None
    if rate is not None:
        await rate(f"user:{claims.user_id}")
    require_role(account, role or (Role.OPERATOR if write else Role.VIEWER))
    return account


PoolOf = Callable[[web.Request], Pool]
AuthedRoute = Callable[[web.Request, "Account"], Awaitable[Any]]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def authed(
    pool_of: PoolOf, *, status: int = 200, write: bool | None = None, role: str | None = None
) -> Callable[[AuthedRoute], Route]:
    """A route of an account: :func:`authenticate` against the registry ``pool_of(request)``
    (``write`` and ``role`` as there: by default a viewer may call only GET and HEAD routes
    and an operator any; a route of admins says ``role=Role.ADMIN``), then the route's
    answer, ``route(request, account)``, as JSON with ``status`` (a response the route made
    itself, a stream, is answered as it is). The route's role is also its OpenAPI
    operation's ``x-fleetreg-role`` (docs/security.md's matrix), checked by the tests."""

    def decorate(route: AuthedRoute) -> Route:
        @functools.wraps(route)
        async def answer(request: web.Request) -> web.StreamResponse:
            account = await _authenticate(request, lambda: pool_of(request), write, role)
            answered = await route(request, account)
            if isinstance(answered, web.StreamResponse):
                return answered
            return json_response(answered, status=status)

        return answer

    return decorate


def query_params(request: web.Request) -> dict[str, str]:
    """The query string as one value per parameter; a parameter given twice is a 400 (which
    one was meant? ``limit=1&limit=2`` must not quietly mean either)."""
    query = request.query
    if len(query) != len(set(query)):
        repeated = next(name for name in query if len(query.getall(name)) > 1)
        raise InvalidInput(
            f"the parameter {shortened(repeated)} is given twice", field=shortened(repeated), rule="once"
        )
    return dict(query)


def path_id(request: web.Request, name: str) -> str:
    """A UUID from the path; a malformed one is simply not found."""
    from shared.domain.identifiers import is_uuid

    value = request.match_info[name]
    if not is_uuid(value):
        raise NotFound(f"no {name.removesuffix('_id')} {shortened(value)!r}: not an ID", field=name)
    return value
