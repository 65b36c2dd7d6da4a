"""A registration hook's test call and its recent calls (docs/registration-hook.md,
"Operator surface")."""

from __future__ import annotations

from services.operator.handlers.hooks import HookTest
from services.operator.views.common import Json, time
from shared.db.hook_calls import HookCall


def hook_test(tested: HookTest) -> Json:
    """A test call: the request's IDs and hardware ID, the ``outcome`` (``allow``, ``deny``
    or a failure: ``timeout``, ``error``, ``http_error``, ``redirect``, ``malformed``,
    ``refused``, ``breaker_open``, ``busy``), ``http_status`` (null without an answer),
    ``latency_ms``, the parsed ``answer`` (null for a failure) and the failure's ``error``
    ("" for an answer)."""
    result = tested.result
    answer = result.answer
    return {
        "call_id": tested.request.call_id,
        "request_id": tested.request.request_id,
        "hardware_id": tested.request.hardware_id,
        "outcome": result.outcome,
        "http_status": result.http_status,
        "latency_ms": result.latency_ms,
        "answer": None
        if answer is None
        else {
            "allow": answer.allow,
            "reason": answer.reason,
            "name": answer.name,
            "category_a": answer.category_a,
            "category_b": answer.category_b,
            "data": dict(answer.data),
        },
        "error": result.error,
    }


def hook_call(found: HookCall) -> Json:
    return {
        "call_id": found.call_id,
        "request_id": found.request_id,
        "hardware_id": found.hardware_id,
        "assigned_hardware_id": found.assigned_hardware_id,
        "decision": found.decision,
        "outcome": found.outcome,
        "http_status": found.http_status,
        "latency_ms": found.latency_ms,
        "attempts": found.attempts,
        "created_at": time(found.created_at),
        "answered_at": time(found.answered_at),
        "device_id": found.device_id,
    }


def hook_calls(found: list[HookCall]) -> Json:
    """The recent calls, newest first, under ``calls``."""
    return {"calls": [hook_call(c) for c in found]}
