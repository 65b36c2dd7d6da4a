"""Where the console goes after sign-in or re-authentication (``safe_next``): a console path
of this site, never another site's, whatever a browser would make of the characters."""

from __future__ import annotations

import pytest

from services.operator.console.pages.signin import safe_next


@pytest.mark.parametrize(
    "value",
    ["/console/", "/console/products", "/console/devices?q=a%20b&page=2", "/console/devices?q=\u00fc"],
)
def test_a_console_path_is_kept(value: str) -> None:
    assert safe_next(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "https://evil.example/console/",
        "//evil.example/console/",
        "/console//evil.example",
        "/console/\\evil.example",
        "/console/\t/evil.example",  # browsers drop tabs and line breaks: "//evil.example"
        "/console/\n/evil.example",
        "/console/\r\nSet-Cookie: a=b",
        "/console/\x00",
        "/other/",
    ],
)
def test_anything_else_goes_to_the_console_home(value: str | None) -> None:
    assert safe_next(value) == "/console/"
