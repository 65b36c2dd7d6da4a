"""Deduplication: decides new device, same device or clone, and writes the registry."""
