"""A registration hook in a process of its own (tests/support/hook_storm.py starts it), so
that the load generator's thousands of simulated devices never hold its answers:
``python -m tests.support.hook_server PORT DELAY_S [--down]``.

``POST /hook`` allows every claim after ``DELAY_S`` seconds, or answers 503 while down;
``POST /control/up`` brings it back; ``GET /control/calls`` lists every call received:
``[at, down, answering_ms, data]`` (``at`` on ``time.monotonic``, which every process of
the machine shares on Linux; ``answering_ms`` its own answering time, None while down).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from aiohttp import web


def make_app(delay_s: float, down: bool) -> web.Application:
    state: dict[str, Any] = {"down": down, "calls": []}

    async def hook(request: web.Request) -> web.Response:
        started = time.monotonic()
        data = json.loads(await request.read()).get("data", {})
        if state["down"]:
            state["calls"].append([started, True, None, data])
            return web.json_response({"error": "down for maintenance"}, status=503)
        if delay_s:
            await asyncio.sleep(delay_s)
        state["calls"].append([started, False, (time.monotonic() - started) * 1000, data])
        return web.json_response({"allow": True})

    async def up(_: web.Request) -> web.Response:
        state["down"] = False
        return web.json_response({"at": time.monotonic()})

    async def calls(_: web.Request) -> web.Response:
        return web.json_response(state["calls"])

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/control/up", up)
    app.router.add_get("/control/calls", calls)
    return app


if __name__ == "__main__":
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    web.run_app(
        make_app(delay, "--down" in sys.argv[3:]), host="127.0.0.1", port=port, access_log=None, print=None
    )
