"""Products: list (the codes never on a list: see the product's page to reveal them)."""

from __future__ import annotations

from aiohttp import web

from services.operator import handlers, views
from services.operator.console.auth import Context, Operator, page, resources


@page("products.html")
async def list_products(request: web.Request, operator: Operator) -> Context:
    found = await handlers.list_products(resources(request).pool, operator.account)
    # masked: a list never shows a code, whoever looks (revealing one is an action of its own)
    return {"products": views.products(found, masked=True)["products"]}


ROUTES: list[web.RouteDef] = [
    web.get("/products", list_products),
]
