"""A reference registration hook (docs/registration-hook.md): allows the hardware IDs listed
in a CSV of serials, with their name, categories and data, and denies every other one.

The CSV's header is ``hardware_id,name,category_a,category_b`` and any further columns,
which become the device's data (an empty cell: left out). Run it next to fleetreg with the
signing secret the registration's hook was given (``hook_secret``, shown once):

    FLEETREG_HOOK_SECRET=whsec_... python -m examples.registration_hook --csv serials.csv --port 8099

then point the registration at it (``fleetreg auto update ID --hook-url
http://127.0.0.1:8099/``) and try it (``fleetreg auto hook-test ID --hardware-id SN-0001``).
Every call's Standard Webhooks signature is verified (401 otherwise).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

Enrichment = dict[str, object]


def read_serials(path: Path) -> dict[str, Enrichment]:
    """Each listed hardware ID's answer: ``allow`` with its name, categories and data."""
    serials: dict[str, Enrichment] = {}
    with path.open(newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            fields = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            hardware_id = fields.pop("hardware_id", "")
            answer: Enrichment = {"allow": True}
            for name in ("name", "category_a", "category_b"):
                if fields.get(name):
                    answer[name] = fields[name]
                fields.pop(name, None)
            answer["data"] = {k: v for k, v in fields.items() if v}
            if hardware_id:
                serials[hardware_id] = answer
    return serials


def make_app(serials: dict[str, Enrichment], secret: str) -> web.Application:
    verifier = Webhook(secret)

    async def decide(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            call = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return web.json_response({"error": "bad signature"}, status=401)
        hardware_id = call["data"]["hardware_id"]
        answer = serials.get(hardware_id)
        if answer is None:
            return web.json_response({"allow": False, "reason": f"{hardware_id} is not in our serials list"})
        return web.json_response(answer)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/{path:.*}", decide)  # any path: the hook URL may carry its own
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="A registration hook allowing the hardware IDs of a CSV.")
    parser.add_argument("--csv", required=True, type=Path, help="hardware_id,name,category_a,category_b,...")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--secret", help="whsec_... (default: $FLEETREG_HOOK_SECRET, kept off the command line)"
    )
    args = parser.parse_args()
    secret = args.secret or os.environ.get("FLEETREG_HOOK_SECRET", "")
    if not secret:
        parser.error("give the hook's signing secret in FLEETREG_HOOK_SECRET (or --secret)")
    serials = read_serials(args.csv)
    ready = f"registration hook on http://{args.host}:{args.port}/ allowing {len(serials)} hardware IDs"
    web.run_app(
        make_app(serials, secret), host=args.host, port=args.port, print=lambda _: print(ready, flush=True)
    )


if __name__ == "__main__":
    main()
