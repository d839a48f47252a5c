"""Loss curves as inline SVG, no plotting library: positive losses on a log10 axis, signed terms on a linear one.

Gradio's LinePlot kept the colour domain of its first frame, so stage 2 never appeared once stage 1 had
been drawn; a hand-made SVG redraws fully every poll and needs nothing beyond the standard library.

A log axis cannot show a value below zero, and the adversarial term is the student's hinge loss −D(x̂0),
negative whenever the discriminator rates the student's samples as real; so the GAN term, and any term
that has gone negative, is drawn in a second panel on a linear axis with its zero line. The legend sits
to the right of the plot area, never over the curves. Both panels share the step axis.
"""
from __future__ import annotations

import html
import math
from typing import Any

# stages 1-4 (their consistency loss), then the terms stages 3-4 add (preference, DMD, GAN)
COLORS = {"mlcd": "#2563eb", "lcd": "#dc2626", "mps": "#7c3aed", "dm": "#d97706", "dmd": "#0891b2",
          "gan": "#db2777", "preference": "#4d7c0f"}
FALLBACK_COLOR = "#059669"
SIGNED = ("gan",)                   # terms that may be negative by construction: always on the linear axis
WIDTH, HEIGHT, PAD, LEGEND = 900, 240, 48, 220      # LEGEND: the width kept right of the plot for the legend
FLOOR = 1e-12                       # a zero loss is drawn at this value on the log axis


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    unit = 10 ** math.floor(math.log10(raw))
    step = next(m * unit for m in (1, 2, 2.5, 5, 10) if m * unit >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _panel(series: dict[str, list[tuple[int, float]]], log: bool, x_range: tuple[int, int], title: str) -> str:
    x0, x1 = x_range
    values = [v for points in series.values() for _, v in points]
    if log:
        shown = {name: [(s, math.log10(max(v, FLOOR))) for s, v in points] for name, points in series.items()}
        logs = [v for points in shown.values() for _, v in points]
        ticks = list(range(math.floor(min(logs)), max(math.ceil(max(logs)), math.floor(min(logs)) + 1) + 1))
        tick_text = [f"1e{t}" for t in ticks]
    else:
        shown = series
        ticks = _nice_ticks(min(min(values), 0.0), max(max(values), 0.0))
        tick_text = [f"{t:.3g}" for t in ticks]
    y0, y1 = ticks[0], ticks[-1]
    right = WIDTH - LEGEND

    def xy(step: float, value: float) -> tuple[float, float]:
        x = PAD + (step - x0) / (x1 - x0) * (right - PAD)
        y = HEIGHT - PAD - (value - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)
        return x, y

    parts = [f"<text x='{PAD}' y='18' font-size='13' font-weight='bold'>{html.escape(title)}</text>",
             f"<line x1='{PAD}' y1='{HEIGHT - PAD}' x2='{right}' y2='{HEIGHT - PAD}' stroke='#999'/>",
             f"<line x1='{PAD}' y1='{PAD}' x2='{PAD}' y2='{HEIGHT - PAD}' stroke='#999'/>"]
    for tick, text in zip(ticks, tick_text):
        _, y = xy(x0, tick)
        parts.append(f"<line x1='{PAD}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#eee'/>")
        parts.append(f"<text x='{PAD - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11'>{text}</text>")
    if not log and y0 < 0 < y1:
        _, y = xy(x0, 0.0)
        parts.append(f"<line class='zero' x1='{PAD}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#555' "
                     "stroke-dasharray='4 3'/>")
    for step in (x0, x1):
        x, _ = xy(step, y0)
        parts.append(f"<text x='{x:.1f}' y='{HEIGHT - PAD + 16}' text-anchor='middle' font-size='11'>{step}</text>")
    parts.append(f"<text x='{(PAD + right) / 2:.0f}' y='{HEIGHT - 10}' text-anchor='middle' font-size='12'>step</text>")
    for i, (name, points) in enumerate(shown.items()):
        color = COLORS.get(name, FALLBACK_COLOR)
        coords = " ".join("{:.1f},{:.1f}".format(*xy(s, v)) for s, v in points)
        parts.append(f"<polyline class='loss-{html.escape(name)}' fill='none' stroke='{color}' stroke-width='1.5' "
                     f"points='{coords}'/>")
        y = PAD + 16 * i
        parts.append(f"<line x1='{right + 16}' y1='{y - 4}' x2='{right + 36}' y2='{y - 4}' stroke='{color}' "
                     "stroke-width='3'/>")
        parts.append(f"<text class='legend' x='{right + 42}' y='{y}' font-size='12' fill='{color}'>"
                     f"{html.escape(name)} (last {series[name][-1][1]:.3g})</text>")
    return (f"<svg class='{'log' if log else 'linear'}' viewBox='0 0 {WIDTH} {HEIGHT}' width='100%' "
            f"style='max-width:{WIDTH * 1.2:.0f}px' role='img' aria-label='{html.escape(title)}'>"
            f"{''.join(parts)}</svg>")


def loss_svg(rows: list[dict[str, Any]]) -> str:
    """SVG panels of ``{"step", "series", "loss"}`` rows: log10 loss against step for the positive terms,
    a linear axis for the signed ones (``data-linear`` names them)."""
    if not rows:
        return "<div id='loss-plot' data-series=''><small>Loss curves appear after the first step.</small></div>"
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault(row["series"], []).append((row["step"], float(row["loss"])))
    steps = [s for points in series.values() for s, _ in points]
    x_range = (min(steps), max(max(steps), min(steps) + 1))
    linear = {name: points for name, points in series.items() if name in SIGNED or any(v < 0 for _, v in points)}
    positive = {name: points for name, points in series.items() if name not in linear}
    panels = []
    if positive:
        panels.append(_panel(positive, True, x_range, "loss per stage and term (log scale)"))
    if linear:
        panels.append(_panel(linear, False, x_range, "signed terms (linear scale: the GAN term −D(x̂0) "
                                                     "goes below 0)"))
    return (f"<div id='loss-plot' data-series='{html.escape(' '.join(series))}' "
            f"data-linear='{html.escape(' '.join(linear))}'>{''.join(panels)}</div>")
