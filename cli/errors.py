"""The one error type the CLI reports: a one-line reason, optionally a JSON document."""

from __future__ import annotations

from typing import Any


class CliError(Exception):
    def __init__(self, message: str, document: Any = None) -> None:
        super().__init__(message)
        self.document = document
