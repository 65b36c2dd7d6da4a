"""Products: list and create; a product's page (services, lock, delete); revealing its codes.

A product's codes are never on a list, never in a URL and never in a GET answer: the
product's page shows them only as the answer to its "Reveal" form (a POST with the CSRF
token, refused to a read-only session), so they are not in the browser's history, a
proxy's cache or a link someone forwards.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.operator.console.auth import (
    Context,
    Operator,
    action,
    flash,
    page,
    render,
    resources,
)
from services.operator.console.forms import FIELD_MAX, Form, text
from services.operator.handlers import products as handlers
from services.operator.views import products as views
from shared.domain.products import BULK_SERVICE_TYPE, SERVICE_TYPES
from shared.errors import Forbidden, InvalidInput
from shared.http import path_id

# Rows of the "New product" form: enough for the usual product; more are added on its page.
SERVICE_ROWS = 5
# Types an operator picks; the bulk service (rmt3) is added to every product by itself.
SERVICE_TYPE_CHOICES = sorted(t for t in SERVICE_TYPES if t != BULK_SERVICE_TYPE)


def port_value(raw: str, field: str) -> object:
    """The port as the API would get it: a number when the text is one; otherwise the text,
    which the API's validation refuses with its own message."""
    if not raw:
        raise InvalidInput(f"{field}: enter a TCP port 1-65535", field=field, rule="required")
    if len(raw) <= 6 and raw.isascii() and raw.isdigit():
        return int(raw)
    return raw


def service_rows(form: Form) -> list[dict[str, object]]:
    """The "New product" form's service rows as the API's ``services`` list; a row left
    empty (no name, type or port) is skipped. A row's missing name defaults to its type,
    as in the API."""
    services: list[dict[str, object]] = []
    for row in range(SERVICE_ROWS):
        name, kind, port = (text(form, f"service_{row}_{part}") for part in ("name", "type", "port"))
        if not (name or kind or port):
            continue
        service: dict[str, object] = {"type": kind, "port": port_value(port, f"service row {row + 1} port")}
        if name:
            service["name"] = name
        services.append(service)
    return services


def product_context(product: Any, operator: Operator, reveal: bool = False) -> Context:
    """The product page's context; its codes are MASKED unless ``reveal`` (never for a
    read-only session)."""
    return {
        "product": views.product(product, masked=operator.read_only or not reveal),
        "revealed": reveal and not operator.read_only and product.status == "locked",
        "service_types": SERVICE_TYPE_CHOICES,
    }


@page("products.html")
async def list_products(request: web.Request, operator: Operator) -> Context:
    found = await handlers.list_products(resources(request).pool, operator.account)
    # masked: a list never shows a code, whoever looks (revealing one is an action of its own)
    return {
        "products": views.products(found, masked=True)["products"],
        "service_types": SERVICE_TYPE_CHOICES,
        "rows": range(SERVICE_ROWS),
    }


@action()
async def create_product(request: web.Request, operator: Operator, form: Form) -> str:
    name = form.get("name", "")
    body = {"name": name if isinstance(name, str) else "", "services": service_rows(form)}
    created = await handlers.create_product(resources(request).pool, operator.account, body)
    flash(operator, f"Product “{created.name}” created. Lock it when its services are final.")
    return f"/console/products/{created.id}"


@page("product.html")
async def show_product(request: web.Request, operator: Operator) -> Context:
    product_id = path_id(request, "product_id")
    found = await handlers.get_product(resources(request).pool, operator.account, product_id)
    return product_context(found, operator)


@action(write=False, reauth=True)
async def reveal_code(request: web.Request, operator: Operator, form: Form) -> web.StreamResponse:
    """The product's page with its codes shown: the answer of a POST (not cached, not in a
    URL). A read-only session may not see a code (403), as a read-only API key sees it masked."""
    if operator.read_only:
        raise Forbidden(
            "this session is read-only (a viewer's, or a read-only key's): it may not see a product's codes",
            rule="scope=read-only",
        )
    product_id = path_id(request, "product_id")
    found = await handlers.get_product(resources(request).pool, operator.account, product_id)
    if found.status != "locked":
        raise InvalidInput("the product has no code until it is locked", rule="product_locked")
    return render("product.html", request, operator, product_context(found, operator, reveal=True))


async def reveal_link(request: web.Request) -> web.StreamResponse:
    """A GET of the reveal URL (reload, or a refused form's way back): the product's page,
    with its code hidden again."""
    raise web.HTTPSeeOther(f"/console/products/{path_id(request, 'product_id')}")


@action()
async def change_service(request: web.Request, operator: Operator, form: Form) -> str:
    """Enable, disable or move one service (``service``: its provisioning ID; ``enabled``:
    "true"/"false", or ``port``)."""
    product_id = path_id(request, "product_id")
    service_id = text(form, "service")[:FIELD_MAX]
    body: dict[str, Any] = {}
    if "enabled" in form:
        body["enabled"] = text(form, "enabled") == "true"
    else:
        body["port"] = port_value(text(form, "port")[:FIELD_MAX], "port")
    changed = await handlers.change_service(
        resources(request).pool, operator.account, product_id, service_id, body
    )
    name = next((s.name for s in changed.services if s.id.lower() == service_id.lower()), service_id)
    if "enabled" in body:
        flash(operator, f"Service “{name}” {'enabled' if body['enabled'] else 'disabled'}.")
    else:
        flash(operator, f"Service “{name}” now uses port {body['port']}.")
    return f"/console/products/{product_id}"


@action()
async def add_service(request: web.Request, operator: Operator, form: Form) -> str:
    product_id = path_id(request, "product_id")
    name, kind, port = (text(form, part)[:FIELD_MAX] for part in ("name", "type", "port"))
    body: dict[str, object] = {"type": kind, "port": port_value(port, "port")}
    if name:
        body["name"] = name
    added = await handlers.add_service(resources(request).pool, operator.account, product_id, body)
    later = " It starts disabled (the product is locked): enable it when devices should get it."
    flash(operator, f"Service “{name or kind}” added." + (later if added.status == "locked" else ""))
    return f"/console/products/{product_id}"


@action()
async def lock_product(request: web.Request, operator: Operator, form: Form) -> str:
    """Lock a product (its services' names and types are then final, and it gets its codes);
    the form's ``confirm`` box must be ticked (the step that works without JavaScript)."""
    product_id = path_id(request, "product_id")
    if text(form, "confirm") != "yes":
        raise InvalidInput(
            "tick “I understand the services can no longer change” to lock the product",
            field="confirm",
            rule="required",
        )
    locked = await handlers.lock_product(resources(request).pool, operator.account, product_id)
    flash(operator, f"Product “{locked.name}” locked: it has its Bulk Identification Code now.")
    return f"/console/products/{product_id}"


@action()
async def delete_product(request: web.Request, operator: Operator, form: Form) -> str:
    product_id = path_id(request, "product_id")
    deleted = await handlers.delete_product(resources(request).pool, operator.account, product_id)
    flash(operator, f"Product “{deleted.name}” deleted.")
    return "/console/products"


ROUTES: list[web.RouteDef] = [
    web.get("/products", list_products),
    web.post("/products", create_product),
    web.get("/products/{product_id}", show_product),
    web.post("/products/{product_id}/reveal", reveal_code),
    web.get("/products/{product_id}/reveal", reveal_link),
    web.post("/products/{product_id}/services", add_service),
    web.post("/products/{product_id}/services/change", change_service),
    web.post("/products/{product_id}/lock", lock_product),
    web.post("/products/{product_id}/delete", delete_product),
]
