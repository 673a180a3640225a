"""A histogram as inline SVG markup, drawn in Python (no plotting library, no script)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 560, 220, 44, 36, 12, 12


def _range(values: np.ndarray) -> tuple[float, float]:
    """From a multiple of 0.05 at or below the lowest value (at most 0.9, so the axis spans 0.1 or more) up to 1."""
    low = math.floor(float(values.min()) / 0.05) * 0.05 if values.size else 0.0
    return max(0.0, min(low, 0.9)), 1.0


def histogram(values: Sequence[float], label: str, bins: int = 20) -> str:
    """An <svg> histogram of scores in [0, 1] (NaN left out) with counts on the y axis and a title per bar."""
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    low, high = _range(data)
    counts, edges = np.histogram(data, bins=bins, range=(low, high))
    peak = max(1, int(counts.max()) if counts.size else 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / bins
    parts = [
        f'<svg class="histogram" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(label)} histogram of {data.size} images">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" class="axis"/>',
    ]
    for tick in sorted({0, peak // 2, peak}):
        y = TOP + plot_h - plot_h * tick / peak
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for index, count in enumerate(counts):
        x, h = LEFT + index * bar_w, plot_h * count / peak
        tip = f"{edges[index]:.2f}-{edges[index + 1]:.2f}: {count} image{'s' if count != 1 else ''}"
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}" data-count="{count}"><title>{tip}</title></rect>'
        )
    for index in range(0, bins + 1, max(1, bins // 5)):
        x = LEFT + index * bar_w
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{edges[index]:.2f}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">{escape(label)}</text>')
    parts.append(
        f'<text x="12" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.1f})">images</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)
