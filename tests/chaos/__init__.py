"""make chaos: faults injected during load on a separate local stack (docs/chaos.md)."""
