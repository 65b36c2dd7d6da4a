"""Products and their services, and auto registrations."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import products as handlers
from services.operator.routes.common import authed, hook_masked, resources
from services.operator.views import products as views
from services.operator.views.common import Json
from shared.domain.accounts import Account
from shared.http import parse_json_body, path_id


@authed(status=201)
async def create_product(request: web.Request, account: Account) -> Json:
    body = await parse_json_body(request)
    return views.product(
        await handlers.create_product(resources(request).pool, account, body), masked=account.read_only
    )


@authed()
async def list_products(request: web.Request, account: Account) -> Json:
    return views.products(
        await handlers.list_products(resources(request).pool, account), masked=account.read_only
    )


@authed()
async def get_product(request: web.Request, account: Account) -> Json:
    product_id = path_id(request, "product_id")
    return views.product(
        await handlers.get_product(resources(request).pool, account, product_id), masked=account.read_only
    )


@authed(status=201)
async def add_service(request: web.Request, account: Account) -> Json:
    product_id = path_id(request, "product_id")
    body = await parse_json_body(request)
    return views.product(
        await handlers.add_service(resources(request).pool, account, product_id, body),
        masked=account.read_only,
    )


@authed()
async def lock_product(request: web.Request, account: Account) -> Json:
    product_id = path_id(request, "product_id")
    return views.product(
        await handlers.lock_product(resources(request).pool, account, product_id), masked=account.read_only
    )


@authed()
async def change_service(request: web.Request, account: Account) -> Json:
    product_id = path_id(request, "product_id")
    body = await parse_json_body(request)
    return views.product(
        await handlers.change_service(
            resources(request).pool, account, product_id, path_id(request, "service_id"), body
        ),
        masked=account.read_only,
    )


@authed()
async def delete_product(request: web.Request, account: Account) -> Json:
    product_id = path_id(request, "product_id")
    return views.deleted_product(await handlers.delete_product(resources(request).pool, account, product_id))


# ---------------------------------------------------------------- auto registrations


@authed(status=201)
async def create_auto(request: web.Request, account: Account) -> Json:
    r = resources(request)
    body = await parse_json_body(request)
    issued = await handlers.create_auto_registration(
        r.pool,
        account,
        body,
        secret_key=r.settings.secret_key,
        allow_private=r.settings.webhooks_allow_private_urls,
    )
    return views.issued_auto_registration(issued, masked=account.read_only, hook_masked=hook_masked(account))


@authed()
async def list_auto(request: web.Request, account: Account) -> Json:
    return views.auto_registrations(
        await handlers.list_auto_registrations(resources(request).pool, account),
        masked=account.read_only,
        hook_masked=hook_masked(account),
    )


@authed()
async def get_auto(request: web.Request, account: Account) -> Json:
    registration_id = path_id(request, "registration_id")
    return views.auto_registration(
        await handlers.get_auto_registration(resources(request).pool, account, registration_id),
        masked=account.read_only,
        hook_masked=hook_masked(account),
    )


@authed()
async def update_auto(request: web.Request, account: Account) -> Json:
    r = resources(request)
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    issued = await handlers.update_auto_registration(
        r.pool,
        account,
        registration_id,
        body,
        secret_key=r.settings.secret_key,
        allow_private=r.settings.webhooks_allow_private_urls,
    )
    return views.issued_auto_registration(issued, masked=account.read_only, hook_masked=hook_masked(account))


async def _change_auto(request: web.Request, account: Account, action: handlers.AutoAction) -> Json:
    registration_id = path_id(request, "registration_id")
    return views.auto_registration(
        await handlers.change_auto_registration(resources(request).pool, account, registration_id, action),
        masked=account.read_only,
        hook_masked=hook_masked(account),
    )


@authed()
async def pause_auto(request: web.Request, account: Account) -> Json:
    return await _change_auto(request, account, "pause")


@authed()
async def resume_auto(request: web.Request, account: Account) -> Json:
    return await _change_auto(request, account, "resume")


@authed()
async def rotate_auto_code(request: web.Request, account: Account) -> Json:
    return await _change_auto(request, account, "rotate-code")


@authed()
async def rotate_auto_key(request: web.Request, account: Account) -> Json:
    r = resources(request)
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    issued = await handlers.rotate_group_key(
        r.pool, account, registration_id, body, secret_key=r.settings.secret_key
    )
    return views.issued_auto_registration(issued)


@authed()
async def derive_auto_key(request: web.Request, account: Account) -> Json:
    r = resources(request)
    registration_id = path_id(request, "registration_id")
    body = await parse_json_body(request)
    derived = await handlers.derive_device_key(
        r.pool, account, registration_id, body, secret_key=r.settings.secret_key
    )
    return views.device_key(derived)


ROUTES: list[web.RouteDef] = [
    web.post("/v1/products", create_product),
    web.get("/v1/products", list_products),
    web.get("/v1/products/{product_id}", get_product),
    web.post("/v1/products/{product_id}/services", add_service),
    web.post("/v1/products/{product_id}/lock", lock_product),
    web.patch("/v1/products/{product_id}/services/{service_id}", change_service),
    web.delete("/v1/products/{product_id}", delete_product),
    web.post("/v1/auto-registrations", create_auto),
    web.get("/v1/auto-registrations", list_auto),
    web.get("/v1/auto-registrations/{registration_id}", get_auto),
    web.patch("/v1/auto-registrations/{registration_id}", update_auto),
    web.post("/v1/auto-registrations/{registration_id}/pause", pause_auto),
    web.post("/v1/auto-registrations/{registration_id}/resume", resume_auto),
    web.post("/v1/auto-registrations/{registration_id}/rotate-code", rotate_auto_code),
    web.post("/v1/auto-registrations/{registration_id}/rotate-key", rotate_auto_key),
    web.post("/v1/auto-registrations/{registration_id}/derive-key", derive_auto_key),
]
