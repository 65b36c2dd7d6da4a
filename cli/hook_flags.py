"""The registration hook's flags and output, one way for every registration that has one
(``fleetreg auto create|update``, ``fleetreg bulk upload|update``; docs/registration-hook.md)."""

from __future__ import annotations

import argparse
from typing import Any

# A registration hook's settings: shown when it has one (the JSON of one without is unchanged).
HOOK_SETTINGS = ("hook_url", "hook_timeout_ms", "hook_failure")
HOOK_NOTE = (
    "fleetreg: the hook secret is shown once: give it to your hook to verify each call's "
    "webhook-signature (Standard Webhooks)"
)


def add_hook_arguments(parser: argparse.ArgumentParser, *, removable: bool) -> None:
    """The registration hook's flags, as the contract names them; ``removable`` (a change of
    an existing registration) adds ``--no-hook``."""
    hook = parser.add_mutually_exclusive_group()
    hook.add_argument(
        "--hook-url",
        metavar="URL",
        help="ask this http(s) URL before each device is created or claimed; its signing "
        "secret is printed once (hook_secret)",
    )
    if removable:
        hook.add_argument("--no-hook", action="store_true", help="remove the registration hook")
    parser.add_argument("--hook-timeout-ms", type=int, metavar="N", help="the hook's timeout, 50-10000 ms")
    parser.add_argument(
        "--hook-failure",
        choices=("closed", "open"),
        help="when the hook fails: answer the device pending (closed, the default) or decide without it",
    )


def hook_body(args: argparse.Namespace) -> dict[str, Any]:
    """The hook fields the flags give (``hook_url`` null for ``--no-hook``)."""
    body: dict[str, Any] = {}
    if args.hook_url is not None:
        body["hook_url"] = args.hook_url
    if getattr(args, "no_hook", False):
        body["hook_url"] = None
    if args.hook_timeout_ms is not None:
        body["hook_timeout_ms"] = args.hook_timeout_ms
    if args.hook_failure is not None:
        body["hook_failure"] = args.hook_failure
    return body


def shown_hook(registration: dict[str, Any]) -> dict[str, Any]:
    """The hook's settings of a registration as the CLI's JSON shows them: only when it has
    a hook, then its signing secret when this answer carries it (shown once)."""
    shown = {k: registration[k] for k in HOOK_SETTINGS} if registration.get("hook_url") is not None else {}
    if "hook_secret" in registration:
        shown["hook_secret"] = registration["hook_secret"]
    return shown
