"""Line charts as inline SVG, drawn on the server: no chart library, no script, nothing the
Content-Security-Policy refuses (presentation attributes such as ``stroke`` are not inline
styles). Every text that goes in (titles, labels, series names) is escaped.

The chart is an image with a title and a description (``role="img"``); the numbers
themselves are for the page to give as a table next to it (the live view does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 960
HEIGHT = 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44
# At most this many labels under the x axis, whatever the number of points.
X_LABELS = 7


@dataclass(frozen=True)
class Series:
    """One line: its name (legend, description), a CSS-safe key (the legend's swatch class
    ``swatch-<key>``), its colour and dash pattern (told apart without colour too) and one
    value per x label."""

    name: str
    key: str
    colour: str
    dash: str
    values: Sequence[int]


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 x 10^k (k >= 0) at or above ``value``; 1 for nothing: an empty
    chart still has a scale."""
    if value <= 1:
        return 1
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return int(candidate)
    return int(10 ** (exponent + 1))  # pragma: no cover - the loop's 10 always fits


def grid_steps(top: int) -> int:
    """How many grid steps divide ``top`` (a nice_ceiling) into whole numbers: a count axis
    never reads 2.5 devices. 1 -> 1, 2 -> 2, 5 -> 5, 10 -> 5 (by 2), 20 -> 4 (by 5),
    50 -> 5 (by 10), 100 -> 5 (by 20)..."""
    if top <= 2:
        return top
    return 4 if str(top)[0] == "2" else 5


def compact(value: int) -> str:
    """1234 -> 1.2k, 5000000 -> 5M: axis labels stay short whatever the storm."""
    for size, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(value) >= size:
            shown = f"{value / size:.1f}".removesuffix(".0")
            return f"{shown}{suffix}"
    return str(value)


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def line_chart(
    title: str,
    description: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    chart_id: str = "chart",
) -> Markup:
    """An SVG line chart: y from 0 to a round ceiling of the largest value (whole-number
    grid lines: grid_steps),
    x one step per label (at most X_LABELS of them written under the axis), one polyline
    per series. ``title`` and ``description`` are the image's accessible name and
    description (``chart_id`` makes their element IDs unique on a page of several charts).
    Values must be as many as the labels (ValueError otherwise)."""
    points = len(x_labels)
    for s in series:
        if len(s.values) != points:
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {points} labels")
    top = nice_ceiling(max((max(s.values, default=0) for s in series), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (points - 1) if points > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h - plot_h * min(max(v, 0), top) / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title" aria-describedby="{chart_id}-desc" focusable="false">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
        '<g class="grid" stroke="#c9d0d8" stroke-width="1">',
    ]
    ticks = []
    steps = grid_steps(top)
    for n in range(steps + 1):
        value = top * n // steps
        level = _number(y(value))
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level}" y2="{level}"/>')
        label = compact(value)
        ticks.append(
            f'<text x="{LEFT - 8}" y="{_number(y(value) + 4)}" text-anchor="end">{escape(label)}</text>'
        )
    parts.append("</g>")
    parts.append('<g class="axis" fill="#4a5360" font-size="12">')
    parts.extend(ticks)
    if points:
        every = max(1, math.ceil(points / X_LABELS))
        for i in range(0, points, every):
            parts.append(
                f'<text x="{_number(x(i))}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
                f"{escape(x_labels[i])}</text>"
            )
    parts.append("</g>")
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#4a5360" stroke-width="1"/>'
    )
    for s in series:
        if not points:
            continue
        coordinates = " ".join(f"{_number(x(i))},{_number(y(v))}" for i, v in enumerate(s.values))
        dash = f' stroke-dasharray="{escape(s.dash)}"' if s.dash else ""
        parts.append(
            f'<polyline class="series-{escape(s.key)}" points="{coordinates}" fill="none" '
            f'stroke="{escape(s.colour)}" stroke-width="2"{dash}>'
            f"<title>{escape(s.name)}</title></polyline>"
        )
    parts.append("</svg>")
    # Safe: every text that came in went through escape() above; the rest is our own markup
    # and numbers.
    return Markup("".join(parts))  # noqa: S704
