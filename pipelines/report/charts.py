"""Inline SVG charts for the compliance report, drawn in Python: no script, no external asset."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

# Colour per mapping method / outcome; colour-blind-safe (Okabe-Ito) and readable in print.
COLORS = {
    "exact": "#009E73",
    "crosswalk": "#0072B2",
    "remap": "#56B4E9",
    "suggestion-approved": "#CC79A7",
    "unmapped": "#D55E00",
    "converted": "#009E73",
    "quarantined": "#D55E00",
    "skipped": "#999999",
}
_FALLBACK = ("#E69F00", "#F0E442", "#000000")
_BAR_W = 420
_ROW_H = 22
# Text is measured by the browser only; these bound a 12px system font's glyphs (capitals, "m", "w") so that
# a label never runs out of the drawing: the label column fits the longest label, long ones are shortened.
_CHAR_W = 8.0
_MAX_LABEL = 40  # characters; a longer label keeps its head and tail with "…" between, its whole in a tooltip
_LABEL_MIN, _LABEL_PAD = 80, 14


def short(label: str) -> str:
    if len(label) <= _MAX_LABEL:
        return label
    head = (_MAX_LABEL - 1) * 2 // 3
    return label[:head] + "…" + label[-(_MAX_LABEL - 1 - head) :]


def label_width(labels: Sequence[str]) -> int:
    return int(max([_LABEL_MIN, *(len(short(x)) * _CHAR_W + _LABEL_PAD for x in labels)]))


def _label(x: float, y: float, label: str) -> str:
    text = short(label)
    tip = f"<title>{escape(label)}</title>" if text != label else ""
    return f'<text x="{x:.0f}" y="{y}" text-anchor="end" class="lbl">{tip}{escape(text)}</text>'


def color(key: str, index: int = 0) -> str:
    return COLORS.get(key, _FALLBACK[index % len(_FALLBACK)])


def stacked_bars(title: str, rows: Sequence[tuple[str, dict[str, int]]], order: Sequence[str]) -> Markup:
    """One horizontal bar per row, split into segments in `order`, each bar scaled to 100 %.

    rows: (label, {segment: count}); the share of the first segments is printed at the bar's end.
    """
    if not rows:
        return Markup("")
    lw = label_width([label for label, _ in rows])
    width = lw + _BAR_W + 90
    legend, legend_h = _legend(order, 8 + len(rows) * _ROW_H + 8, lw, width)
    height = 8 + _ROW_H * len(rows) + 8 + legend_h + 6
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
    ]
    for i, (label, counts) in enumerate(rows):
        y = 8 + i * _ROW_H
        total = sum(counts.values())
        parts.append(_label(lw - 6, y + 14, label))
        x = float(lw)
        for j, key in enumerate(order):
            n = counts.get(key, 0)
            if not n or not total:
                continue
            w = _BAR_W * n / total
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{_ROW_H - 6}" '
                f'fill="{color(key, j)}"><title>{escape(key)}: {n}</title></rect>'
            )
            x += w
        ok = total - counts.get(order[-1], 0) if order else total
        share = f"{100 * ok / total:.1f} %" if total else "n/a"
        parts.append(f'<text x="{lw + _BAR_W + 6}" y="{y + 14}" class="val">{share}</text>')
    parts.append(legend)
    return _svg(parts)


def count_bars(title: str, rows: Sequence[tuple[str, int]]) -> Markup:
    """One horizontal bar per row, scaled to the largest count, with the count at its end."""
    if not rows:
        return Markup("")
    top = max(n for _, n in rows) or 1
    height = _ROW_H * len(rows) + 12
    lw = label_width([label for label, _ in rows])
    width = lw + _BAR_W + 90
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
    ]
    for i, (label, n) in enumerate(rows):
        y = 8 + i * _ROW_H
        w = _BAR_W * n / top
        parts.append(
            _label(lw - 6, y + 14, label)
            + f'<rect x="{lw}" y="{y + 2}" width="{w:.1f}" height="{_ROW_H - 6}" '
            f'fill="{COLORS["crosswalk"]}">'
            f"<title>{escape(label)}: {n}</title></rect>"
            f'<text x="{lw + w + 6:.1f}" y="{y + 14}" class="val">{n}</text>'
        )
    return _svg(parts)


def _svg(parts: list[str]) -> Markup:
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in parts went through escape()


def _legend(keys: Sequence[str], y: int, left: int, width: int) -> tuple[str, int]:
    """Legend entries left to right from the bars' start, wrapping onto a new line rather than running out."""
    out, x, line = [], float(left), 0
    for j, key in enumerate(keys):
        text = short(key)
        w = 24 + _CHAR_W * len(text)
        if x + w > width and x > left:
            x, line = float(left), line + 1
        ly = y + line * 16
        out.append(
            f'<rect x="{x:.0f}" y="{ly}" width="10" height="10" fill="{color(key, j)}"/>'
            f'<text x="{x + 14:.0f}" y="{ly + 9}" class="lbl">{escape(text)}</text>'
        )
        x += w
    return "".join(out), 16 * (line + 1)


def trend(title: str, points: Sequence[tuple[str, str, float | None, bool]]) -> Markup:
    """Pass rate (0..1) per run, oldest first; a run with a failed critical expectation is a red square.

    points: (tick label, run id, pass rate, had a critical failure).
    """
    if not points:
        return Markup("")
    width, height, left, top, plot_h = 560, 170, 44, 12, 110
    step = (width - left - 20) / max(len(points) - 1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="lbl">{int(frac * 100)}%</text>'
        )
    coords = []
    for i, (_, _, rate, _) in enumerate(points):
        if rate is not None:
            coords.append((left + i * step, top + plot_h * (1 - rate)))
    if len(coords) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" class="line"/>')
    for i, (tick, run_id, rate, blocked) in enumerate(points):
        x = left + i * step
        if rate is not None:
            y = top + plot_h * (1 - rate)
            tip = f"{run_id}: {100 * rate:.1f} % passed" + (", critical failure" if blocked else "")
            shape = (
                f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" class="bad">'
                if blocked
                else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="pt">'
            )
            parts.append(f"{shape}<title>{escape(tip)}</title>{'</rect>' if blocked else '</circle>'}")
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle" class="tick">'
            f"{escape(tick)}</text>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" class="lbl">'
        "runs, oldest first (numbers as in the run table)</text>"
    )
    return _svg(parts)
