"""The rules of fleet registration as plain functions and values: no I/O here."""
