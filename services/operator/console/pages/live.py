"""The live view of a boot storm: the account's registrations, provisionings, clones,
refusals and online devices per second over the last ``seconds`` (120 by default), drawn
as an inline SVG chart, with the window's totals and the pipeline's health.

``/console/live`` is the page (works without JavaScript: the chart as of the load and a
refresh link); htmx replaces its ``/console/live/chart`` fragment every second unless the
operator paused the updates (``?paused=1``: WCAG 2.2.2, moving content can be stopped).
Both read the same handlers as nothing else: ``handlers.live.live_storm`` (two indexed
statements bounded by the account and the window) and ``handlers.live.pipeline_health``,
whose probes of the pipeline are taken once a second per instance and shared by every tab
(services/operator/console/health.py, ``PIPELINE_PROBES``). Each request counts against
the session's key's rate (services/operator/console/auth.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from services.operator.console.auth import (
    Context,
    Operator,
    SignInRequired,
    page,
    resources,
    sign_in_location,
    signed_in,
)
from services.operator.console.chart import Series, line_chart
from services.operator.console.health import PIPELINE_PROBES
from services.operator.handlers import live as handlers

WINDOWS = (60, 120, 300, 600)
# name, colour, dash pattern: told apart by the pattern as well as the colour
SERIES = (
    ("registered", "Registered (new devices)", "#0b4f9c", ""),
    ("provisioned", "Provisioned (confirmed)", "#1d6b2f", "6 3"),
    ("clones", "Clones detected", "#8a4b00", "2 3"),
    ("refused", "Refused", "#a1161c", "8 3 2 3"),
    ("online", "Online", "#6b3fa0", "1 0"),
)
TABLE_SECONDS = 10


async def storm_context(request: web.Request, operator: Operator) -> Context:
    """What the page and its fragment show: the chart, the totals, the last seconds as a
    table and the pipeline's health, all of this operator's account only."""
    res = resources(request)
    window = handlers.storm_window(dict(request.query))
    storm = await handlers.live_storm(res.pool, operator.account, window, res.settings.online_ttl_s)
    # The probes are shared by every tab of every session (at most one round a second).
    shared = request.config_dict.get(PIPELINE_PROBES)
    probes = await shared.get() if shared is not None else ()
    health = handlers.pipeline_health(probes, storm)
    labels = [s.second.strftime("%H:%M:%S") for s in storm.seconds]
    series = [
        Series(name, key, colour, dash, [getattr(s, key) for s in storm.seconds])
        for key, name, colour, dash in SERIES
    ]
    first, last = labels[0], labels[-1]
    # Two charts: the per-second rates (tens a second) beside the online count (thousands)
    # on one axis would flatten the rates into the floor.
    rates = [s for s in series if s.key != "online"]
    online = [s for s in series if s.key == "online"]
    chart = line_chart(
        f"Boot storm, the last {window} seconds",
        f"Per second from {first} to {last} UTC: "
        + "; ".join(f"{s.name} {_peak(s.values)}" for s in rates)
        + ". The table below gives the numbers of the last seconds.",
        labels,
        rates,
    )
    online_chart = line_chart(
        f"Devices online, the last {window} seconds",
        f"Devices online from {first} to {last} UTC: at most {max(online[0].values, default=0):,}.",
        labels,
        online,
        chart_id="online-chart",
    )
    return {
        "window": window,
        "windows": WINDOWS,
        "paused": request.query.get("paused") == "1",
        "storm": storm,
        "series": SERIES,
        "chart": chart,
        "online_chart": online_chart,
        "recent": list(reversed(storm.seconds[-TABLE_SECONDS:])),
        "health": health,
    }


def _peak(values: Sequence[int]) -> str:
    return f"peak {max(values, default=0):,} per second"


@page("live.html")
async def live(request: web.Request, operator: Operator) -> Context:
    return await storm_context(request, operator)


async def live_chart(request: web.Request) -> web.StreamResponse:
    """The fragment htmx swaps in every second. Unlike a page it shows no flash message
    (they wait for the next page), and a lapsed session sends the whole tab to the sign-in
    page (``HX-Redirect``) rather than swapping a sign-in form into the chart."""
    try:
        operator = await signed_in(request)
    except SignInRequired:
        if request.headers.get("HX-Request") == "true":
            location = "/console/sign-in?next=/console/live"
            return web.Response(status=204, headers={"HX-Redirect": location})
        raise web.HTTPSeeOther(sign_in_location(request)) from None
    context: dict[str, Any] = {"operator": operator, "csrf": operator.csrf}
    context.update(await storm_context(request, operator))
    response = aiohttp_jinja2.render_template("live_chart.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    return response


ROUTES: list[web.RouteDef] = [
    web.get("/live", live),
    web.get("/live/chart", live_chart),
]
