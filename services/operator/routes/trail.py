"""The trail: registration decisions, security alerts and operator audit events."""

from __future__ import annotations

from aiohttp import web

from services.operator.handlers import trail as handlers
from services.operator.routes.common import authed, resources
from services.operator.views import trail as views
from services.operator.views.common import Json, page
from shared.domain.accounts import Account
from shared.http import query_params


@authed()
async def list_decisions(request: web.Request, account: Account) -> Json:
    r = resources(request)
    found = await handlers.list_decisions(
        r.pool, account, query_params(request), page_limit_max=r.settings.page_limit_max
    )
    return page("decisions", found, views.decision)


@authed()
async def list_audit_events(request: web.Request, account: Account) -> Json:
    r = resources(request)
    found = await handlers.list_audit_events(
        r.pool, account, query_params(request), page_limit_max=r.settings.page_limit_max
    )
    return page("audit_events", found, views.audit_event)


@authed()
async def list_alerts(request: web.Request, account: Account) -> Json:
    r = resources(request)
    found = await handlers.list_security_alerts(
        r.pool, account, query_params(request), page_limit_max=r.settings.page_limit_max
    )
    return page("security_alerts", found, views.security_alert)


ROUTES: list[web.RouteDef] = [
    web.get("/v1/registration-decisions", list_decisions),
    web.get("/v1/security-alerts", list_alerts),
    web.get("/v1/audit-events", list_audit_events),
]
