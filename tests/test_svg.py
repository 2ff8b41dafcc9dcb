"""The report's SVG charts: well-formed, scaled to round axis tops, labels escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from batch_predict.tools.svg import bar_chart, column_chart, line_chart, nice_ceiling

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("value, top", [(0, 1), (0.3, 0.5), (7, 10), (11, 20), (101.5, 200), (230, 250), (1000, 1000)])
def test_axis_tops_are_round_numbers_at_or_above_the_peak(value, top):
    assert nice_ceiling(value) == pytest.approx(top)


def test_a_histogram_has_one_bar_per_bin_and_the_tallest_reaches_the_top():
    root = ET.fromstring(column_chart([1, 4, 0, 10], [0, 0.25, 0.5, 0.75, 1.0], height=220))
    bars = root.findall(f"{SVG}rect")
    assert len(bars) == 4
    heights = [float(b.get("height")) for b in bars]
    assert heights[3] == pytest.approx(220 - 10 - 28) and heights[2] == 0 and heights[1] == pytest.approx(heights[3] * 0.4)
    assert [b.find(f"{SVG}title").text for b in bars][1] == "0.25-0.5: 4"


def test_bar_labels_are_escaped_and_bars_are_proportional():
    root = ET.fromstring(bar_chart([("<script>", 10), ("cat & dog", 5)]))
    assert [t.text for t in root.findall(f"{SVG}text")][::2] == ["<script>", "cat & dog"]
    widths = [float(r.get("width")) for r in root.findall(f"{SVG}rect")]
    assert widths[0] == pytest.approx(2 * widths[1])


def test_a_line_chart_draws_every_point_and_the_mean():
    root = ET.fromstring(line_chart([1, 2, 3], [10, 30, 20], mean=20))
    (line,) = [p for p in root.findall(f"{SVG}polyline") if p.get("stroke-width") == "2"]
    assert len(line.get("points").split()) == 3
    assert any(l.get("stroke-dasharray") for l in root.findall(f"{SVG}line"))
