"""Loss curves as inline SVG: one polyline per loss term, log10 y-axis, no plotting library.

Gradio's LinePlot kept the colour domain of its first frame, so stage 2 never appeared once stage 1 had
been drawn; a hand-made SVG redraws fully every poll and needs nothing beyond the standard library.
"""
from __future__ import annotations

import html
import math
from typing import Any

# stages 1-4 (their consistency loss), then the terms stages 3-4 add (preference, DMD, GAN)
COLORS = {"mlcd": "#2563eb", "lcd": "#dc2626", "mps": "#7c3aed", "dm": "#d97706", "dmd": "#0891b2",
          "gan": "#db2777", "preference": "#4d7c0f"}
FALLBACK_COLOR = "#059669"
WIDTH, HEIGHT, PAD = 760, 260, 44


def loss_svg(rows: list[dict[str, Any]]) -> str:
    """SVG of ``{"step", "series", "loss"}`` rows (log10 loss against step), with a legend."""
    if not rows:
        return "<div id='loss-plot' data-series=''><small>Loss curves appear after the first step.</small></div>"
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault(row["series"], []).append((row["step"], math.log10(max(row["loss"], 1e-12))))
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = math.floor(min(values)), max(math.ceil(max(values)), math.floor(min(values)) + 1)

    def xy(step: float, value: float) -> str:
        x = PAD + (step - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (value - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    parts = [f"<line x1='{PAD}' y1='{HEIGHT - PAD}' x2='{WIDTH - PAD}' y2='{HEIGHT - PAD}' stroke='#999'/>",
             f"<line x1='{PAD}' y1='{PAD}' x2='{PAD}' y2='{HEIGHT - PAD}' stroke='#999'/>"]
    for tick in range(y0, y1 + 1):
        x, y = xy(x0, tick).split(",")
        parts.append(f"<text x='{PAD - 6}' y='{y}' text-anchor='end' font-size='11'>1e{tick}</text>")
    for step in (x0, x1):
        x, y = xy(step, y0).split(",")
        parts.append(f"<text x='{x}' y='{HEIGHT - PAD + 16}' text-anchor='middle' font-size='11'>{step}</text>")
    parts.append(f"<text x='{WIDTH / 2}' y='{HEIGHT - 6}' text-anchor='middle' font-size='12'>step</text>")
    parts.append(f"<text x='{PAD}' y='14' font-size='12'>loss per stage (log scale)</text>")
    for i, (name, points) in enumerate(series.items()):
        color = COLORS.get(name, FALLBACK_COLOR)
        parts.append(f"<polyline class='loss-{html.escape(name)}' fill='none' stroke='{color}' stroke-width='1.5' "
                     f"points='{' '.join(xy(s, v) for s, v in points)}'/>")
        parts.append(f"<text x='{WIDTH - PAD}' y='{14 + 14 * i}' text-anchor='end' font-size='12' fill='{color}'>"
                     f"{html.escape(name)} loss (last {10 ** points[-1][1]:.3g})</text>")
    svg = (f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' width='100%' style='max-width:{WIDTH * 1.25:.0f}px' role='img' "
           f"aria-label='loss curves'>{''.join(parts)}</svg>")
    return f"<div id='loss-plot' data-series='{html.escape(' '.join(series))}'>{svg}</div>"
