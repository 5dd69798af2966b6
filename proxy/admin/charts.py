"""Bar charts as inline SVG, rendered on the server: no script, no CDN, readable without JavaScript."""

import math
from collections.abc import Callable, Sequence

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 960, 220
LEFT, BOTTOM, TOP = 70, 28, 12
COLOURS = ("#417690", "#79aec8", "#e0a030", "#b05050")


def _nice_max(value: float) -> float:
    """The top of the axis: four grid steps of a round size (whole numbers above 1, so that counts are
    not labelled 6, 12, 19), the smallest that reaches ``value``. Up to 1 the axis ends at 1."""
    if value <= 1:
        return 1.0
    needed = value / 4
    magnitude = max(1, 10 ** math.floor(math.log10(needed)))
    for step in (1, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if magnitude == 1 and step != int(step):
            continue
        if step * magnitude >= needed:
            return 4 * step * magnitude
    return 40.0 * magnitude


Series = Sequence[tuple[str, Sequence[float]]]


def _axis_top(totals: Sequence[float], series: Series) -> float:
    top = _nice_max(max(totals, default=0))
    if top < 4 and all(float(v).is_integer() for _, values in series for v in values):
        top = 4.0  # counts: whole numbers on every grid line, not 0, 0, 1, 1, 1
    return top


def _svg_start(title: str) -> SafeString:
    return format_html(
        '<svg class="sluice-chart" role="img" aria-label="{}" viewBox="0 0 {} {}" width="100%" '
        'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        title,
        WIDTH,
        HEIGHT,
    )


def _grid(top: float, plot_h: float, fmt: Callable[[float], str], empty: bool) -> list[SafeString]:
    """Five grid lines with their values; an empty chart labels only the 0."""
    lines = []
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        lines.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>'
                '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="#666">{}</text>',
                LEFT,
                WIDTH - 10,
                f"{y:.1f}",
                f"{y:.1f}",
                LEFT - 6,
                f"{y + 4:.1f}",
                "" if empty and i else fmt(value),
            )
        )
    return lines


def _bar(
    label: str,
    i: int,
    series: Series,
    fmt: Callable[[float], str],
    x: float,
    bar_w: float,
    plot_h: float,
    top: float,
) -> list[SafeString]:
    """The bar of ``label`` (index ``i``): its layers stacked from the bottom of the plot, ``plot_h`` high
    for the value ``top``, in a group whose <title> gives its values."""
    tip = "; ".join(f"{name}: {fmt(values[i])}" for name, values in series)
    parts = [format_html('<g class="sluice-bar"><title>{} — {}</title>', label, tip)]
    base = TOP + plot_h
    for (name, values), colour in zip(series, COLOURS, strict=False):
        h = plot_h * values[i] / top if top else 0
        if h <= 0:
            continue
        base -= h
        parts.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}" data-series="{}"/>',
                f"{x:.1f}",
                f"{base:.1f}",
                f"{bar_w:.1f}",
                f"{h:.1f}",
                colour,
                name,
            )
        )
    parts.append(mark_safe("</g>"))
    return parts


def _legend(series: Series) -> SafeString:
    legend = "".join(
        f'<span class="sluice-legend"><i style="background:{colour}"></i>{escape(name)}</span>'
        for (name, _), colour in zip(series, COLOURS, strict=False)
    )
    return mark_safe(f'<div class="sluice-legends">{legend}</div>')


def bar_chart(
    labels: Sequence[str],
    series: Series,
    fmt: Callable[[float], str],
    title: str,
) -> SafeString:
    """Stacked bars, one per label; ``series`` is (name, values) per stack layer. Each bar has a <title>
    with its values, so hovering explains it."""
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    top = _axis_top(totals, series)
    empty = not any(totals)  # an empty chart says 0 once, not a scale of nothing
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP
    slot = plot_w / max(1, len(labels))
    bar_w = max(1.0, slot * 0.8)
    parts = [_svg_start(title), *_grid(top, plot_h, fmt, empty)]
    every = max(1, len(labels) // 10)
    for i, label in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_w) / 2
        parts += _bar(label, i, series, fmt, x, bar_w, plot_h, top)
        if i % every == 0:
            parts.append(
                format_html(
                    '<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#666">{}</text>',
                    f"{x + bar_w / 2:.1f}",
                    HEIGHT - 8,
                    label,
                )
            )
    parts.append(mark_safe("</svg>"))
    if len(series) > 1:
        parts.append(_legend(series))
    return mark_safe("".join(parts))
