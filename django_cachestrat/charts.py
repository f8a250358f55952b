"""Time series -> the geometry of an SVG line chart, drawn by the dashboard's template.

Pure computation, no markup: the template writes the ``<svg>`` (so every label is
escaped as any template text is), and the page needs no script and no network.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    """A grid line: where it is (pixels along its axis) and its label."""

    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    """A line chart: the ``points`` of an SVG polyline (pixels), its ticks and size.

    Minutes with no value (no request) leave a gap: ``segments`` holds one polyline
    each run of minutes with values.
    """

    width: int
    height: int
    segments: tuple[str, ...]
    dots: tuple[tuple[float, float], ...]  # every point, so a lone minute shows too
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    empty: bool

    @property
    def view_box(self) -> str:
        """The SVG ``viewBox`` (the plot plus margins for the labels)."""
        return f"0 0 {self.width + LEFT + RIGHT} {self.height + TOP + BOTTOM}"


# Margins around the plot, in pixels: room for the y labels and the x labels.
LEFT, RIGHT, TOP, BOTTOM = 44, 20, 8, 20


def line_chart(
    times: Sequence[dt.datetime],
    values: Sequence[float | None],
    *,
    y_max: float | None = None,
    unit: str = "",
    width: int = 640,
    height: int = 140,
) -> Chart:
    """Return the chart of ``values`` (None: no value) at ``times`` (oldest first).

    The y axis runs from 0 to ``y_max``, or to a round number above the largest value.
    """
    if len(times) != len(values):
        raise ValueError(f"{len(times)} times for {len(values)} values")
    known = [v for v in values if v is not None]
    top = y_max if y_max is not None else _round_up(max(known, default=0.0))
    span = (times[-1] - times[0]).total_seconds() if len(times) > 1 else 0.0

    def x(t: dt.datetime) -> float:
        if not span:
            return LEFT + width / 2
        return LEFT + width * (t - times[0]).total_seconds() / span

    def y(v: float) -> float:
        return TOP + height * (1 - (min(v, top) / top if top else 0.0))

    segments: list[str] = []
    run: list[str] = []
    dots: list[tuple[float, float]] = []
    for t, v in zip(times, values, strict=True):
        if v is None:
            if run:
                segments.append(" ".join(run))
            run = []
            continue
        dots.append((round(x(t), 1), round(y(v), 1)))
        run.append(f"{dots[-1][0]:.1f},{dots[-1][1]:.1f}")
    if run:
        segments.append(" ".join(run))
    y_ticks = tuple(Tick(y(top * k / 4), f"{_number(top * k / 4)}{unit}") for k in range(5))
    x_ticks = tuple(Tick(x(t), f"{t:%H:%M}") for t in _spread(times, 6))
    return Chart(width, height, tuple(segments), tuple(dots), x_ticks, y_ticks, empty=not known)


def _round_up(value: float) -> float:
    """Return a round number (1, 2 or 5 times a power of ten) at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return 10.0 * power  # pragma: no cover (the loop always returns)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _spread(times: Sequence[dt.datetime], count: int) -> list[dt.datetime]:
    """Return about ``count`` times spread evenly over ``times``, the last one included."""
    if len(times) <= count:
        return list(times)
    step = (len(times) - 1) / (count - 1)
    return [times[round(i * step)] for i in range(count)]
