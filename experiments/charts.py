"""Server-side SVG charts (no chart JS): a metric over experiments, with the running best."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape


@dataclass
class Point:
    label: str  # shown on hover, e.g. "#12 rmse=51.4"
    value: float
    holdout: float | None = None


def metric_chart_svg(points: list[Point], *, metric: str, direction: str, width: int = 720, height: int = 220) -> str:
    """An inline <svg>: validation values as dots (holdout as rings), the running best as a step
    line. Empty string when there is nothing to draw."""
    if not points:
        return ""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 14, 26
    values = [p.value for p in points] + [p.holdout for p in points if p.holdout is not None]
    low, high = min(values), max(values)
    if high == low:
        high, low = high + 1, low - 1
    span = high - low
    low, high = low - span * 0.05, high + span * 0.05
    n = len(points)

    def x(i: int) -> float:
        return pad_l + (width - pad_l - pad_r) * (i / max(1, n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return pad_t + (height - pad_t - pad_b) * (1 - (v - low) / (high - low))

    better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
    best: float | None = None
    steps = []
    for i, p in enumerate(points):
        if best is None or better(p.value, best):
            best = p.value
        steps.append((x(i), y(best)))
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx:.1f},{sy:.1f}" for i, (sx, sy) in enumerate(steps))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(metric)} over experiments" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" height="{height - pad_t - pad_b}" fill="#f8fafc" stroke="#e5e7eb"/>',
    ]
    for frac in (0, 0.5, 1):
        v = low + (high - low) * frac
        parts.append(f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11" fill="#6b7280">{v:.4g}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" font-size="11" fill="#6b7280">{escape(metric)} ({direction}) · '
                 f'{n} experiment{"s" if n != 1 else ""}, oldest left · ● validation ○ holdout — best so far</text>')
    parts.append(f'<path d="{path}" fill="none" stroke="#2563eb" stroke-width="1.5"/>')
    for i, p in enumerate(points):
        if p.holdout is not None:
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(p.holdout):.1f}" r="3.5" fill="none" stroke="#9333ea"/>')
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(p.value):.1f}" r="3.5" fill="#2563eb"><title>{escape(p.label)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)
