"""Examples an operator runs next to fleetreg (docs/registration-hook.md)."""
