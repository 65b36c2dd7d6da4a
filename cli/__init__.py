"""The ``fleetreg`` operator command."""
