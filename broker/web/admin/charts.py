"""Bar charts drawn on the server as SVG geometry: no script, so the CSP stays strict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 150
LEFT, BOTTOM, TOP = 44, 20, 8  # room for the value axis, the time labels and the top tick


@dataclass(frozen=True)
class Segment:
    """One coloured part of a bar: its series (a CSS class), value and box."""

    series: str
    value: float
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    """One column: where it stands, what it stacks and its tooltip."""

    x: float
    width: float
    segments: tuple[Segment, ...]
    title: str


@dataclass(frozen=True)
class Chart:
    """Everything a template needs to draw a stacked bar chart."""

    width: int
    height: int
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]  # (y, label) on the value axis
    labels: tuple[tuple[float, str], ...]  # (x, label) under the bars
    empty: bool


def nice_ceiling(value: float) -> float:
    """Return the smallest of 1, 2 or 5 times a power of ten that is at least `value`."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(float(step * power) for step in (1, 2, 5, 10) if step * power >= value)


def _label(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 10_000 else f"{value:g}"


def stacked_bars(
    points: Sequence[tuple[str, dict[str, float]]], series: Sequence[str], *,
    label_every: int = 1, labels: Sequence[str] | None = None, unit: str = "",
) -> Chart:
    """Lay out one bar per point, stacking `series` in order from the axis up."""
    top = nice_ceiling(max((sum(v.get(s, 0) for s in series) for _, v in points), default=0))
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    step = plot_w / max(len(points), 1)
    gap = min(2.0, step * 0.2)
    bars, names = [], []
    for i, (name, values) in enumerate(points):
        base: float = HEIGHT - BOTTOM
        segments = []
        for s in series:
            height = plot_h * values.get(s, 0) / top
            if height > 0:
                base -= height
                segments.append(Segment(s, values.get(s, 0), round(base, 2), round(height, 2)))
        parts = ", ".join(f"{s} {_label(values.get(s, 0))}{unit}" for s in series)
        bars.append(Bar(round(LEFT + i * step + gap / 2, 2), round(step - gap, 2),
                        tuple(segments), f"{name}: {parts}"))
        if i % label_every == 0:
            names.append((round(LEFT + i * step, 2), (labels or [])[i] if labels else name))
    ticks = tuple((round(HEIGHT - BOTTOM - plot_h * f, 2), _label(top * f) + unit)
                  for f in (0, 0.5, 1))
    empty = all(not any(v.get(s, 0) for s in series) for _, v in points)
    return Chart(WIDTH, HEIGHT, tuple(bars), ticks, tuple(names), empty)
