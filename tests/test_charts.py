"""The dashboard's chart geometry."""

import datetime as dt

import pytest

from django_cachestrat import charts

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
MINUTES = [T0 + dt.timedelta(minutes=i) for i in range(5)]


def test_points_span_the_plot_and_scale_to_the_axis():
    chart = charts.line_chart(MINUTES, [0, 50, 100, 50, 0], y_max=100, unit="%")
    (segment,) = chart.segments
    points = [tuple(map(float, p.split(","))) for p in segment.split()]
    assert points[0] == (charts.LEFT, charts.TOP + chart.height)  # 0 at the bottom left
    assert points[2] == (charts.LEFT + chart.width / 2, charts.TOP)  # 100 at the top
    assert points[-1][0] == charts.LEFT + chart.width
    assert [t.label for t in chart.y_ticks] == ["0%", "25%", "50%", "75%", "100%"]
    assert [t.label for t in chart.x_ticks] == ["12:00", "12:01", "12:02", "12:03", "12:04"]
    assert not chart.empty
    assert chart.dots[2] == points[2]


def test_minutes_without_a_value_leave_a_gap():
    chart = charts.line_chart(MINUTES, [1, 2, None, 4, 5])
    assert [len(s.split()) for s in chart.segments] == [2, 2]
    assert chart.y_ticks[-1].label == "5"  # a round top above the largest value


def test_no_value_at_all_is_an_empty_chart():
    chart = charts.line_chart(MINUTES, [None] * 5)
    assert chart.segments == () and chart.empty


def test_times_and_values_must_match():
    with pytest.raises(ValueError, match="5 times for 2 values"):
        charts.line_chart(MINUTES, [1, 2])
