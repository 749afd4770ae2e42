"""Server-drawn bar charts: a nice scale, bars in proportion, labels where asked."""

from __future__ import annotations

import pytest

from broker.web.admin.charts import BOTTOM, HEIGHT, TOP, nice_ceiling, stacked_bars


@pytest.mark.parametrize(("value", "ceiling"), [
    (0, 1), (0.4, 0.5), (1, 1), (3, 5), (7, 10), (11, 20), (200, 200), (201, 500), (12_345, 20_000),
])
def test_the_scale_rounds_up_to_one_two_or_five(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)


def test_bars_stack_in_proportion_from_the_axis() -> None:
    chart = stacked_bars(
        [("a", {"served": 30, "refused": 10}), ("b", {"served": 0, "refused": 0}),
         ("c", {"served": 50})],
        ("served", "refused"),
    )
    plot = HEIGHT - BOTTOM - TOP
    first, empty, last = chart.bars
    served, refused = first.segments
    assert (served.series, refused.series) == ("served", "refused")
    assert served.height == pytest.approx(plot * 30 / 50, abs=0.01)  # the scale tops at 50
    assert served.y + served.height == pytest.approx(HEIGHT - BOTTOM)  # standing on the axis
    assert refused.y + refused.height == pytest.approx(served.y)  # stacked on top
    assert empty.segments == () and last.segments[0].height == pytest.approx(plot)
    assert first.title == "a: served 30, refused 10"
    assert [label for _, label in chart.ticks] == ["0", "25", "50"]
    assert first.x < empty.x < last.x and not chart.empty


def test_labels_every_nth_bar_and_an_empty_chart_says_so() -> None:
    points = [(str(h), {"n": 0}) for h in range(24)]
    chart = stacked_bars(points, ("n",), label_every=6, labels=[f"{h}h" for h in range(24)])
    assert [label for _, label in chart.labels] == ["0h", "6h", "12h", "18h"]
    assert chart.empty and all(not bar.segments for bar in chart.bars)
    assert stacked_bars([("x", {"ms": 20_000})], ("ms",), unit=" ms").ticks[-1][1] == "20k ms"
