"""Registration intake: the device-facing HTTP API."""
