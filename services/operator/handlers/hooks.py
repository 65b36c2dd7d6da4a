"""An auto registration's hook on the operator API (docs/registration-hook.md, "Operator
surface"): a test call with a sample request, and the recent calls. The rules are
shared/hook_surface.py's, which take the registration's kind: the bulk API (the ingestion
service, which may not import this one) tests and lists a bulk registration's hook with
the same functions. Setting a hook is the registration's own update (handlers/products.py)."""

from __future__ import annotations

from shared.hook_surface import HookCalls, HookTest, calls_limit, recent_calls, sample_call

__all__ = ["HookCalls", "HookTest", "calls_limit", "recent_calls", "sample_call"]
