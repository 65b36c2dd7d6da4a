"""A registration hook's test call and its recent calls (docs/registration-hook.md,
"Operator surface"): the shapes of shared/hook_surface.py, which the bulk API answers too."""

from __future__ import annotations

from shared.hook_surface import hook_calls_json as hook_calls
from shared.hook_surface import hook_test_json as hook_test

__all__ = ["hook_calls", "hook_test"]
