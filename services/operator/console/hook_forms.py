"""A registration hook on its registration's page, the same for an auto and a bulk
registration (docs/registration-hook.md, "Operator surface"; templates/_hook.html): what
the set, remove and test forms send to the registration's API, what their answers show
once, and the section's values. The pages (pages/auto_hooks.py for the operator API,
pages/bulk_hooks.py for the bulk API) make the calls."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.operator.console.auth import Operator, flash
from services.operator.console.forms import FIELD_MAX, Form, text
from services.operator.console.shown_once import HOOK_SECRET, HOOK_TEST, hold, hold_secret, take, take_secret
from shared.domain.accounts import masked_url

# The hook's recent calls on the registration's page (the APIs and CLI list up to 500).
HOOK_CALLS_SHOWN = 20
HOOK_REMOVED = "Hook removed: registrations are decided without it."


def _timeout(form: Form) -> int | str | None:
    """The timeout field as the APIs take ``hook_timeout_ms``: empty keeps it; other text
    than digits is passed on for the API's validation to refuse."""
    raw = text(form, "hook_timeout_ms")[:FIELD_MAX].replace(",", "").replace("_", "")
    if not raw:
        return None
    return int(raw) if raw.isascii() and raw.isdigit() else raw


def hook_change(form: Form, current_url: str | None) -> dict[str, Any]:
    """The set-or-change form as a hook's change: ``hook_url`` when it differs from
    ``current_url`` or ``new_secret`` is ticked (a new signing secret either way), the
    timeout and the policy when given (alone, they keep the URL and its secret)."""
    body: dict[str, Any] = {}
    url = text(form, "hook_url")[: FIELD_MAX * 12]
    if url != current_url or text(form, "new_secret") == "yes":
        body["hook_url"] = url
    timeout = _timeout(form)
    if timeout is not None:
        body["hook_timeout_ms"] = timeout
    failure = text(form, "hook_failure")[:FIELD_MAX]
    if failure:
        body["hook_failure"] = failure
    return body


def hook_set(request: web.Request, operator: Operator, registration_id: str, secret: str) -> None:
    """Say the change was saved; a new signing secret (``secret``, "" for none) crosses the
    redirect sealed, to be shown once."""
    if secret:
        hold_secret(request, operator, HOOK_SECRET, registration_id, secret)
        flash(operator, "Hook set: copy its signing secret now, it is shown only once.")
    else:
        flash(operator, "Hook settings saved.")


def sample_body(form: Form) -> dict[str, Any]:
    """The test form as a test call's body: the sample ``hardware_id`` (none: the API's
    SAMPLE-0001)."""
    hardware_id = text(form, "hardware_id")[:FIELD_MAX]
    return {"hardware_id": hardware_id} if hardware_id else {}


def hold_test(operator: Operator, registration_id: str, tested: dict[str, Any]) -> None:
    """Keep a test call's result (the APIs' HookTest shape) for the page, shown once."""
    hold(operator, HOOK_TEST, registration_id, tested)


def hook_section(
    request: web.Request,
    operator: Operator,
    *,
    base: str,
    registration: dict[str, Any],
    calls: list[dict[str, Any]],
    cli: str,
) -> dict[str, Any]:
    """The ``hook`` of templates/_hook.html for ``registration`` (its ``id`` and its hook's
    settings, ``hook_url`` unmasked, ``hook_timeout_ms``, ``hook_failure``: nothing else is
    read of it) at the console path ``base``, with its recent ``calls`` (the APIs' HookCall
    shape) and the kind's ``cli`` command; the signing secret and the test result held for
    it are taken (shown this once). The URL in full for a writer (it edits it), scheme and
    host otherwise."""
    registration_id = registration["id"]
    url = registration.get("hook_url")
    return {
        "base": base,
        "id": registration_id,
        "url": masked_url(url) if url and operator.read_only else url,
        "timeout_ms": registration.get("hook_timeout_ms"),
        "failure": registration.get("hook_failure"),
        "secret": take_secret(request, operator, HOOK_SECRET, registration_id),
        "test": take(operator, HOOK_TEST, registration_id),
        "calls": calls,
        "cli": cli,
    }
