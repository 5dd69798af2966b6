"""The dashboard's chart axes: round grid steps that reach the tallest bar without wasting the height."""

from proxy.admin.charts import _nice_max, bar_chart


def test_grid_steps_are_whole_and_round_and_the_axis_reaches_the_value():
    for value in [*range(2, 5000), 25.5, 2203.0, 123456.0]:
        top = _nice_max(value)
        step = top / 4
        assert value <= top <= 2 * value + 4, (value, top)
        assert step == int(step), (value, step)
        assert str(int(step)).rstrip("0") in {"1", "2", "25", "3", "4", "5", "6", "8"}, (value, step)


def test_small_values_keep_an_axis_up_to_one():
    assert _nice_max(0) == 1.0 and _nice_max(0.0014) == 1.0 and _nice_max(1) == 1.0


def test_a_count_axis_is_labelled_with_its_exact_steps():
    svg = bar_chart(["a", "b"], [("turns", [25, 3])], lambda v: f"{v:,.0f}", "Turns")
    assert [f">{n}</text>" in svg for n in (0, 8, 16, 24, 32)] == [True] * 5


def axis_labels(svg: str) -> list[str]:
    import re

    return re.findall(r'text-anchor="end" fill="#666">([^<]*)</text>', svg)


def test_an_empty_chart_says_zero_once_and_a_small_count_axis_has_whole_steps():
    count = lambda v: f"{v:,.0f}"  # noqa: E731
    assert axis_labels(bar_chart(["a", "b"], [("turns", [0, 0])], count, "Turns")) == ["0", "", "", "", ""]
    assert axis_labels(bar_chart(["a"], [("turns", [1])], count, "Turns")) == ["0", "1", "2", "3", "4"]
