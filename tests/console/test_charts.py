"""Chart geometry: what the server-side SVG draws."""

from __future__ import annotations

from docbus.console.charts import bar_chart, line_chart, progress_segments


def test_progress_segments_split_the_bar_among_the_parts() -> None:
    segments = progress_segments([("done", 6), ("retrying", 0), ("dead", 2), ("pending", 2)], 10)
    assert [(s.name, s.x, s.width) for s in segments] == [
        ("done", 0.0, 180.0),
        ("dead", 180.0, 60.0),
        ("pending", 240.0, 60.0),
    ]
    over = progress_segments([("done", 8), ("dead", 4)], 10, width=120)
    assert sum(s.width for s in over) == 120  # never wider than the bar
    assert progress_segments([("done", 0)], 0) == []


def test_bar_chart_scales_to_the_largest_value() -> None:
    bars, height = bar_chart([("EU", 4), ("Asia", 2), ("none", 0)], width=100, bar_height=10)
    assert [(b.label, b.width, b.y) for b in bars] == [
        ("EU", 100, 0),
        ("Asia", 50, 16),
        ("none", 0, 32),
    ]
    assert height == 48
    assert bar_chart([]) == ([], 0)


def test_line_chart_spreads_points_and_touches_the_top() -> None:
    line = line_chart([0, 2, 1], width=100, height=10)
    assert line.points == "0.0,10.0 50.0,0.0 100.0,5.0" and line.top == 2
    assert line_chart([0, 0], width=10, height=10).points == "0.0,10.0 10.0,10.0"
    assert line_chart([]).points == ""
