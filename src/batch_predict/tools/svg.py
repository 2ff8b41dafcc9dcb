"""Small SVG charts as strings, so that a report page needs no plotting library and no network."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

_FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#444"'
_BAR = "#3b6fb6"
_LINE = "#3b6fb6"
_GRID = "#ddd"


def _number(value: float) -> str:
    """A short axis label: 1234 -> 1.2k, 0.25 -> 0.25."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= value: a round top for an axis."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value * (1 - 1e-9))


def column_chart(values: Sequence[float], edges: Sequence[float], *, width: int = 520, height: int = 220,
                 title: str = "") -> str:
    """Vertical bars over consecutive ranges (a histogram): len(edges) == len(values) + 1."""
    left, right, top, bottom = 44, 10, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice_ceiling(max(values, default=0))
    step = plot_w / max(len(values), 1)
    parts = [_frame(width, height, title)]
    for fraction in (0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{_GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{_number(peak * fraction)}</text>')
    for i, value in enumerate(values):
        h = plot_h * value / peak
        parts.append(f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step - 2, 1):.1f}" '
                     f'height="{h:.1f}" fill="{_BAR}"><title>{edges[i]:g}-{edges[i + 1]:g}: {value:g}</title></rect>')
    label_every = max(1, len(values) // 5)
    for i in range(0, len(edges), label_every):
        parts.append(f'<text x="{left + i * step:.1f}" y="{height - 10}" text-anchor="middle" {_FONT}>{edges[i]:g}</text>')
    parts.append(_axes(left, top, plot_w, plot_h))
    return "".join(parts) + "</svg>"


def bar_chart(items: Sequence[tuple[str, float]], *, width: int = 520, bar_height: int = 18, title: str = "") -> str:
    """Horizontal labelled bars, in the order given (class counts)."""
    label_w, value_w, top = 130, 56, 4
    height = top * 2 + bar_height * max(len(items), 1)
    peak = max((v for _, v in items), default=0) or 1
    plot_w = width - label_w - value_w
    parts = [_frame(width, height, title)]
    for i, (label, value) in enumerate(items):
        y = top + i * bar_height
        w = plot_w * value / peak
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_height * 0.7:.1f}" text-anchor="end" {_FONT}>'
                     f'{escape(_clip(label, 20))}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="{bar_height - 4}" '
                     f'fill="{_BAR}"><title>{escape(label)}: {value:g}</title></rect>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_height * 0.7:.1f}" {_FONT}>{_number(value)}</text>')
    return "".join(parts) + "</svg>"


def line_chart(xs: Sequence[float], ys: Sequence[float], *, width: int = 520, height: int = 220, title: str = "",
               x_label: str = "", mean: float | None = None) -> str:
    """A line through (x, y) points from x = 0, with an optional dashed mean line."""
    left, right, top, bottom = 44, 10, 10, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    x_max = max(xs, default=0) or 1
    y_max = nice_ceiling(max([*ys, mean or 0], default=0))

    def point(x: float, y: float) -> str:
        return f"{left + plot_w * x / x_max:.1f},{top + plot_h * (1 - y / y_max):.1f}"

    parts = [_frame(width, height, title)]
    for fraction in (0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{_GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{_number(y_max * fraction)}</text>')
    if mean is not None:
        y = top + plot_h * (1 - mean / y_max)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#c0392b" '
                     f'stroke-dasharray="4 3"><title>mean {mean:.1f}</title></line>')
    parts.append(f'<polyline fill="none" stroke="{_LINE}" stroke-width="2" '
                 f'points="{" ".join(point(x, y) for x, y in zip(xs, ys))}"/>')
    for fraction, anchor in ((0, "start"), (0.5, "middle"), (1.0, "end")):
        parts.append(f'<text x="{left + plot_w * fraction:.1f}" y="{height - 14}" text-anchor="{anchor}" {_FONT}>'
                     f'{_number(x_max * fraction)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 2}" text-anchor="middle" {_FONT}>{escape(x_label)}</text>')
    parts.append(_axes(left, top, plot_w, plot_h))
    return "".join(parts) + "</svg>"


def _frame(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">')


def _axes(left: float, top: float, plot_w: float, plot_h: float) -> str:
    return (f'<polyline fill="none" stroke="#888" points="{left},{top} {left},{top + plot_h} '
            f'{left + plot_w},{top + plot_h}"/>')


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"
