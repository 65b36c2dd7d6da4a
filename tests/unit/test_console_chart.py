"""The live view's chart (inline SVG drawn on the server) and the storm's per-second
tally, without a browser or a database: the SVG is read back with the standard library's
XML parser, as any SVG consumer would."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from services.operator.console.chart import HEIGHT, Series, compact, line_chart, nice_ceiling
from services.operator.handlers import live as handlers
from shared.db.storm import DecisionCount, DeviceSpan
from shared.errors import InvalidInput

SVG = "{http://www.w3.org/2000/svg}"
NOW = datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC)
LAST = int(NOW.timestamp())


def parse(markup: str) -> ET.Element:
    # our own output, not untrusted input (and defusedxml is not a dependency)
    return ET.fromstring(str(markup))  # noqa: S314


def series(values: list[int], name: str = "Registered", key: str = "registered") -> Series:
    return Series(name, key, "#0b4f9c", "", values)


def y_labels(svg: ET.Element) -> list[str]:
    return [t.text or "" for t in svg.iter(f"{SVG}text") if t.get("text-anchor") == "end"]


def points(svg: ET.Element) -> list[tuple[float, float]]:
    line = next(svg.iter(f"{SVG}polyline"))
    return [(float(x), float(y)) for x, y in (p.split(",") for p in (line.get("points") or "").split())]


@pytest.mark.parametrize(
    ("value", "ceiling"),
    [(0, 1), (1, 1), (1.5, 2), (3, 5), (7, 10), (10, 10), (11, 20), (51, 100), (999, 1000)],
)
def test_the_scale_tops_at_a_round_number_at_or_above_the_largest_value(value: float, ceiling: int) -> None:
    assert nice_ceiling(value) == ceiling


def test_the_y_axis_is_labelled_from_zero_to_the_round_top() -> None:
    svg = parse(line_chart("t", "d", ["a", "b", "c"], [series([0, 7, 3])]))
    assert y_labels(svg) == ["0", "2", "4", "6", "8", "10"]
    # the largest value sits at 70 % of the height, the zero on the x axis
    (_, y0), (_, y7), _ = points(svg)
    assert y0 > y7
    bottom = HEIGHT - 44
    assert y0 == bottom


def test_an_empty_chart_still_has_its_axes_title_and_a_scale() -> None:
    svg = parse(line_chart("Boot storm", "nothing yet", [], [series([])]))
    assert svg.get("role") == "img"
    assert next(svg.iter(f"{SVG}title")).text == "Boot storm"
    assert next(svg.iter(f"{SVG}desc")).text == "nothing yet"
    assert y_labels(svg) == ["0", "1"]
    assert not list(svg.iter(f"{SVG}polyline"))


@pytest.mark.parametrize(
    ("largest", "labels"),
    [
        (2, ["0", "1", "2"]),
        (5, ["0", "1", "2", "3", "4", "5"]),
        (18, ["0", "5", "10", "15", "20"]),
        (420, ["0", "100", "200", "300", "400", "500"]),
        (1999, ["0", "500", "1k", "1.5k", "2k"]),
    ],
)
def test_grid_lines_fall_on_whole_counts(largest: int, labels: list[str]) -> None:
    assert y_labels(parse(line_chart("t", "d", ["a", "b"], [series([0, largest])]))) == labels


def test_a_flat_zero_series_is_drawn_on_the_x_axis() -> None:
    svg = parse(line_chart("t", "d", ["a", "b"], [series([0, 0])]))
    assert {y for _, y in points(svg)} == {HEIGHT - 44}


def test_huge_values_keep_short_labels_and_stay_inside_the_chart() -> None:
    huge = 10**15 + 1
    svg = parse(line_chart("t", "d", ["a", "b"], [series([huge, 12_345])]))
    assert y_labels(svg)[-1] == "2000T"
    assert all(0 <= y <= HEIGHT for _, y in points(svg))
    assert compact(1234) == "1.2k"
    assert compact(5_000_000) == "5M"
    assert compact(999) == "999"


def test_labels_names_and_titles_are_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    markup = str(
        line_chart(hostile, hostile, [hostile, "b"], [Series(hostile, 'k"><x', '"/><script>', "", [1, 2])])
    )
    assert "<script>" not in markup
    svg = parse(markup)  # still well-formed XML
    assert next(svg.iter(f"{SVG}title")).text == hostile
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert hostile in texts


def test_at_most_seven_x_labels_are_written_however_many_seconds() -> None:
    labels = [f"10:{i // 60:02d}:{i % 60:02d}" for i in range(600)]
    svg = parse(line_chart("t", "d", labels, [series([1] * 600)]))
    written = [t.text for t in svg.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert 1 < len(written) <= 7
    assert written[0] == labels[0]


def test_values_must_match_the_labels() -> None:
    with pytest.raises(ValueError, match="2 values for 3 labels"):
        line_chart("t", "d", ["a", "b", "c"], [series([1, 2])])


def test_decisions_are_counted_in_their_second_by_kind() -> None:
    first = LAST - 9
    counts = [
        DecisionCount(LAST, "new", 4, 0, None),
        DecisionCount(LAST, "same", 9, 0, None),  # a retry is no new device
        DecisionCount(LAST - 1, "clone", 2, 0, None),
        DecisionCount(first, "refused", 1, 0, None),
    ]
    storm = handlers.tally_storm(first, LAST, counts, [], NOW)
    assert len(storm.seconds) == 10
    assert storm.seconds[0].second == datetime.fromtimestamp(first, UTC)
    assert (storm.seconds[-1].registered, storm.seconds[-2].clones, storm.seconds[0].refused) == (4, 2, 1)
    assert storm.totals == {"registered": 4, "provisioned": 0, "clones": 2, "refused": 1, "online": 0}
    assert storm.waiting == 0 and storm.oldest_waiting_s is None


def test_online_devices_are_counted_in_every_second_they_were_online() -> None:
    first = LAST - 9
    spans = [
        # online since before the window, still online: every second
        DeviceSpan(came=first, gone=LAST + 1, provisioned_second=None, disabled=False, count=5),
        # provisioned 3 s before the end, still online
        DeviceSpan(came=LAST - 2, gone=LAST + 1, provisioned_second=LAST - 2, disabled=False, count=2),
        # online for the window's first two seconds only
        DeviceSpan(came=first, gone=first + 2, provisioned_second=None, disabled=False, count=3),
        # disabled: provisioned in the window, never online
        DeviceSpan(came=LAST, gone=LAST + 1, provisioned_second=LAST, disabled=True, count=1),
        # gone before the window
        DeviceSpan(came=first, gone=first, provisioned_second=None, disabled=False, count=50),
    ]
    storm = handlers.tally_storm(first, LAST, [], spans, NOW)
    assert [s.online for s in storm.seconds] == [8, 8, 5, 5, 5, 5, 5, 7, 7, 7]
    assert [s.provisioned for s in storm.seconds][-3:] == [2, 0, 1]
    assert storm.totals["online"] == 7
    assert storm.totals["provisioned"] == 3


def test_waiting_decisions_are_summed_with_the_oldest_age() -> None:
    counts = [
        DecisionCount(LAST - 30, "new", 3, 2, datetime.fromtimestamp(LAST - 30, UTC)),
        DecisionCount(LAST - 8, "clone", 1, 1, datetime.fromtimestamp(LAST - 8, UTC)),
    ]
    storm = handlers.tally_storm(LAST - 119, LAST, counts, [], NOW)
    assert storm.waiting == 3
    assert storm.oldest_waiting_s == pytest.approx(30.5)


def test_waiting_decisions_make_the_pipeline_degraded_with_the_reason() -> None:
    storm = handlers.tally_storm(
        LAST - 9, LAST, [DecisionCount(LAST - 9, "new", 1, 1, datetime.fromtimestamp(LAST - 9, UTC))], [], NOW
    )
    health = handlers.pipeline_health((), storm)
    assert not health.healthy
    assert health.reasons == ["1 registration waiting for provisioning longer than 5 s (the oldest for 10 s)"]
    calm = handlers.tally_storm(LAST - 9, LAST, [], [], NOW)
    assert handlers.pipeline_health((), calm).healthy


@pytest.mark.parametrize("raw", ["", "9", "601", "-5", "1e3", "\uff11\uff12\uff10", "120\x00", "x" * 5000])
def test_a_bad_window_is_refused_with_its_limits(raw: str) -> None:
    with pytest.raises(InvalidInput, match="from 10 to 600"):
        handlers.storm_window({"seconds": raw})


def test_the_window_defaults_to_two_minutes() -> None:
    assert handlers.storm_window({}) == 120
    assert handlers.storm_window({"seconds": "600"}) == 600


def test_two_charts_on_one_page_have_their_own_element_ids() -> None:
    labels = ["10:00:00", "10:00:01"]
    one = str(line_chart("a", "b", labels, [Series("x", "x", "#000", "1 0", [1, 2])]))
    two = str(
        line_chart("c", "d", labels, [Series("y", "y", "#000", "1 0", [3, 4])], chart_id="online-chart")
    )
    assert 'id="chart-title"' in one and 'id="online-chart-title"' in two
    assert 'aria-labelledby="online-chart-title"' in two and 'id="chart-title"' not in two
