"""Attestation CAs of x509 auto registrations (docs/device-identity.md, "X.509 certificates")."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import attestation as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import attestation as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.http import parse_json_body, path_id


@authed(status=201)
async def add_ca(request: web.Request, account: Account) -> Json:
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    return views.ca(await handlers.add_ca(resources(request).pool, account, registration_id, body))


@authed()
async def list_cas(request: web.Request, account: Account) -> Json:
    registration_id = path_id(request, "registration_id")
    return views.cas(await handlers.list_cas(resources(request).pool, account, registration_id))


@authed()
async def get_ca(request: web.Request, account: Account) -> Json:
    return views.ca(await handlers.get_ca(resources(request).pool, account, path_id(request, "ca_id")))


@authed()
async def delete_ca(request: web.Request, account: Account) -> Json:
    return views.deleted_ca(
        await handlers.delete_ca(resources(request).pool, account, path_id(request, "ca_id"))
    )


@authed()
async def verify_ca(request: web.Request, account: Account) -> Json:
    ca_id = path_id(request, "ca_id")
    body = await parse_json_body(request)
    return views.ca(await handlers.verify_ca(resources(request).pool, account, ca_id, body))


@authed()
async def revoke_serial(request: web.Request, account: Account) -> Json:
    ca_id = path_id(request, "ca_id")
    body = await parse_json_body(request)
    return views.ca(await handlers.revoke_serial(resources(request).pool, account, ca_id, body))


@authed()
async def unrevoke_serial(request: web.Request, account: Account) -> Json:
    ca_id = path_id(request, "ca_id")
    body = await parse_json_body(request)
    return views.ca(await handlers.unrevoke_serial(resources(request).pool, account, ca_id, body))


@authed()
async def upload_crl(request: web.Request, account: Account) -> Json:
    ca_id = path_id(request, "ca_id")
    body = await parse_json_body(request)
    return views.ca(await handlers.upload_crl(resources(request).pool, account, ca_id, body))


ROUTES: list[web.RouteDef] = [
    web.post("/v1/auto-registrations/{registration_id}/cas", add_ca),
    web.get("/v1/auto-registrations/{registration_id}/cas", list_cas),
    web.get("/v1/attestation-cas/{ca_id}", get_ca),
    web.delete("/v1/attestation-cas/{ca_id}", delete_ca),
    web.post("/v1/attestation-cas/{ca_id}/verify", verify_ca),
    web.post("/v1/attestation-cas/{ca_id}/revoke", revoke_serial),
    web.post("/v1/attestation-cas/{ca_id}/unrevoke", unrevoke_serial),
    web.put("/v1/attestation-cas/{ca_id}/crl", upload_crl),
]
