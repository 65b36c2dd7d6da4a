"""The operator API's wiring: authenticated HTTP routes onto the handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.operator import handlers
from shared.db import accounts, devices, products
from shared.db.accounts import Account
from shared.http import account_for, api_key, json_response, parse_json_body, path_id

if TYPE_CHECKING:
    from services.operator.app import Resources

OPENAPI = Path(__file__).with_name("openapi.yaml")
AuthedHandler = Callable[[web.Request, Account], Awaitable[Any]]


def add_routes(app: web.Application, key: web.AppKey[Resources]) -> None:
    def authed(handler: AuthedHandler, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def wrapped(request: web.Request) -> web.Response:
            account = await account_for(api_key(request), request.app[key].pool)
            return json_response(await handler(request, account), status=status)

        return wrapped

    def pool(request: web.Request) -> Any:
        return request.app[key].pool

    async def whoami(request: web.Request, account: Account) -> Any:
        return {"id": account.id, "name": account.name}

    async def create_product(request: web.Request, account: Account) -> Any:
        return await handlers.create_product(pool(request), account, await parse_json_body(request))

    async def list_products(request: web.Request, account: Account) -> Any:
        return {"products": await products.list_products(pool(request), account.id)}

    async def get_product(request: web.Request, account: Account) -> Any:
        return await products.get_product(pool(request), account.id, path_id(request, "product_id"))

    async def add_service(request: web.Request, account: Account) -> Any:
        return await handlers.add_service(
            pool(request), account, path_id(request, "product_id"), await parse_json_body(request)
        )

    async def lock_product(request: web.Request, account: Account) -> Any:
        return await products.lock_product(pool(request), account.id, path_id(request, "product_id"))

    async def create_auto(request: web.Request, account: Account) -> Any:
        return await handlers.create_auto_registration(pool(request), account, await parse_json_body(request))

    async def list_auto(request: web.Request, account: Account) -> Any:
        return {
            "auto_registrations": await products.list_registrations(pool(request), account.id, handlers.AUTO)
        }

    async def get_auto(request: web.Request, account: Account) -> Any:
        return await products.get_registration(
            pool(request), account.id, handlers.AUTO, path_id(request, "registration_id")
        )

    async def update_auto(request: web.Request, account: Account) -> Any:
        return await handlers.update_auto_registration(
            pool(request), account, path_id(request, "registration_id"), await parse_json_body(request)
        )

    def change_auto(action: str) -> AuthedHandler:
        async def change(request: web.Request, account: Account) -> Any:
            return await handlers.change_auto_registration(
                pool(request), account, path_id(request, "registration_id"), action
            )

        return change

    async def list_devices(request: web.Request, account: Account) -> Any:
        settings = request.app[key].settings
        return await handlers.list_devices(
            pool(request),
            account,
            dict(request.query),
            page_limit_max=settings.page_limit_max,
            online_ttl=settings.online_ttl_seconds,
        )

    async def get_device(request: web.Request, account: Account) -> Any:
        return await devices.get_device(
            pool(request),
            account.id,
            path_id(request, "device_id"),
            request.app[key].settings.online_ttl_seconds,
        )

    async def disable_device(request: web.Request, account: Account) -> Any:
        await devices.disable_device(pool(request), account.id, path_id(request, "device_id"))
        return await get_device(request, account)

    async def reset_device(request: web.Request, account: Account) -> Any:
        await devices.reset_device(pool(request), account.id, path_id(request, "device_id"))
        return await get_device(request, account)

    def change_devices(action: devices.DeviceAction) -> AuthedHandler:
        async def change(request: web.Request, account: Account) -> Any:
            return await handlers.change_devices(
                pool(request),
                account,
                await parse_json_body(request),
                action,
                online_ttl=request.app[key].settings.online_ttl_seconds,
            )

        return change

    async def list_alerts(request: web.Request, account: Account) -> Any:
        return await handlers.list_security_alerts(
            pool(request),
            account,
            dict(request.query),
            page_limit_max=request.app[key].settings.page_limit_max,
        )

    async def list_decisions(request: web.Request, account: Account) -> Any:
        return await handlers.list_decisions(
            pool(request),
            account,
            dict(request.query),
            page_limit_max=request.app[key].settings.page_limit_max,
        )

    async def list_keys(request: web.Request, account: Account) -> Any:
        return {"api_keys": await accounts.list_api_keys(pool(request), account.id)}

    async def create_key(request: web.Request, account: Account) -> Any:
        return await handlers.create_api_key(pool(request), account, await parse_json_body(request))

    async def revoke_key(request: web.Request, account: Account) -> Any:
        await accounts.revoke_api_key(pool(request), account.id, path_id(request, "key_id"))
        return {"revoked": request.match_info["key_id"]}

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")

    r = app.router
    r.add_get("/openapi.yaml", openapi)
    r.add_get("/v1/account", authed(whoami))
    r.add_post("/v1/products", authed(create_product, 201))
    r.add_get("/v1/products", authed(list_products))
    r.add_get("/v1/products/{product_id}", authed(get_product))
    r.add_post("/v1/products/{product_id}/services", authed(add_service, 201))
    r.add_post("/v1/products/{product_id}/lock", authed(lock_product))
    r.add_post("/v1/auto-registrations", authed(create_auto, 201))
    r.add_get("/v1/auto-registrations", authed(list_auto))
    r.add_get("/v1/auto-registrations/{registration_id}", authed(get_auto))
    r.add_patch("/v1/auto-registrations/{registration_id}", authed(update_auto))
    for action in ("pause", "resume", "rotate-code"):
        r.add_post(f"/v1/auto-registrations/{{registration_id}}/{action}", authed(change_auto(action)))
    r.add_get("/v1/devices", authed(list_devices))
    r.add_post("/v1/devices/disable", authed(change_devices("disable")))
    r.add_post("/v1/devices/reset", authed(change_devices("reset")))
    r.add_get("/v1/devices/{device_id}", authed(get_device))
    r.add_post("/v1/devices/{device_id}/disable", authed(disable_device))
    r.add_post("/v1/devices/{device_id}/reset", authed(reset_device))
    r.add_get("/v1/registration-decisions", authed(list_decisions))
    r.add_get("/v1/security-alerts", authed(list_alerts))
    r.add_get("/v1/api-keys", authed(list_keys))
    r.add_post("/v1/api-keys", authed(create_key, 201))
    r.add_delete("/v1/api-keys/{key_id}", authed(revoke_key))
