"""The nomogram drawn as a figure (PNG/SVG, matplotlib) and the axis layout it shares with the
calculator page.

Every axis is described in units of the *Points* axis (0-100), so the figure and the page's SVG
place the same ticks at the same positions: :func:`nomogram_axes` lists them, :func:`place_labels`
puts each tick label where it overlaps no other, and :func:`plot_nomogram` draws them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from myocomp.stats.nomogram import Nomogram, nice_ticks

__all__ = [
    "BINARY_LABELS",
    "DEFAULT_PROBABILITY_TICKS",
    "AxisTick",
    "NomogramAxis",
    "LabelPlacement",
    "nomogram_axes",
    "place_labels",
    "draw_nomogram",
    "plot_nomogram",
]

DEFAULT_PROBABILITY_TICKS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99,
)  # fmt: skip
#: tick labels of 0/1 predictors: (label of 0, label of 1); any other 0/1 axis reads no / yes
BINARY_LABELS: dict[str, tuple[str, str]] = {"female": ("male", "female")}

#: horizontal extent of the drawing in Points units: predictor names left of 0
X_MIN, X_MAX = -30.0, 104.0
FIG_WIDTH_IN = 11.0
TICK_FONT_PT = 10.0
NAME_FONT_PT = 10.5
#: vertical layout in row units (1 = distance between two axes)
ROW_HEIGHT_IN = 0.68
_ABOVE, _BELOW, _ROW_GAP = 0.17, -0.10, 0.30


@dataclass(frozen=True)
class AxisTick:
    """One tick: the data ``value``, its ``text`` and its position ``x`` in Points units."""

    value: Any
    text: str
    x: float


@dataclass(frozen=True)
class NomogramAxis:
    """One horizontal axis of the nomogram: ``name`` (predictor or ``points``,
    ``total_points``, ``linear_predictor``, ``probability``), display ``label``, ``ticks``,
    the line's ``span`` and ``minor`` ticks, all in Points units (0-100)."""

    name: str
    label: str
    ticks: tuple[AxisTick, ...]
    span: tuple[float, float]
    minor: tuple[float, ...] = ()


def number_text(v: float) -> str:
    """A tick number as printed: ``%g`` with a true minus sign."""
    text = f"{float(v):g}"
    return "\u2212" + text[1:] if text.startswith("-") else text


def _is_binary(values: Sequence[Any]) -> bool:
    return len(values) == 2 and sorted(float(v) for v in values) == [0.0, 1.0]


def _predictor_axes(nomo: Nomogram) -> list[NomogramAxis]:
    table = nomo.points_table()
    axes = []
    for spec in nomo.predictors:
        rows = table[table["predictor"] == spec.name]
        values = rows["value"].tolist()
        if spec.kind == "categorical":
            texts = [str(v) for v in values]
        elif _is_binary(values):
            no, yes = BINARY_LABELS.get(spec.name, ("no", "yes"))
            texts = [yes if float(v) == 1.0 else no for v in values]
        else:
            texts = [number_text(v) for v in values]
        groups: dict[float, list[tuple[Any, str]]] = {}
        for v, t, p in zip(values, texts, rows["points"], strict=True):
            groups.setdefault(round(float(p), 9), []).append((v, t))
        ticks = tuple(
            AxisTick(g[0][0] if len(g) == 1 else tuple(v for v, _ in g),
                     ", ".join(t for _, t in g), x)
            for x, g in groups.items()
        )
        axes.append(NomogramAxis(spec.name, spec.display, ticks,
                                 (0.0, float(nomo.max_points[spec.name]))))
    return axes


def nomogram_axes(
    nomo: Nomogram,
    outcome_label: str = "Probability",
    probability_ticks: Sequence[float] = DEFAULT_PROBABILITY_TICKS,
) -> list[NomogramAxis]:
    """Every axis of the nomogram, top to bottom: Points, one per predictor (its ticks are the
    rows of ``nomo.points_table()``; 0/1 predictors read no / yes), Total Points, Linear
    Predictor and the probability axis (``probability_ticks`` inside the reachable range)."""
    points = NomogramAxis(
        "points", "Points", tuple(AxisTick(v, str(v), float(v)) for v in range(0, 101, 10)),
        (0.0, 100.0), tuple(float(v) for v in range(5, 100, 10)))
    to_x = 100.0 / nomo.max_total_points
    tt = nice_ticks(0.0, nomo.max_total_points, 10)
    total = NomogramAxis("total_points", "Total Points",
                         tuple(AxisTick(float(t), number_text(t), float(t) * to_x) for t in tt),
                         (0.0, 100.0))
    lp0 = float(nomo.linear_predictor(0.0))
    lp1 = float(nomo.linear_predictor(nomo.max_total_points))
    lt = nice_ticks(lp0, lp1, 8)
    lp = NomogramAxis("linear_predictor", "Linear Predictor",
                      tuple(AxisTick(float(t), number_text(t), (float(t) - lp0) * nomo.scale
                                     * to_x) for t in lt), (0.0, 100.0))
    p0, p1 = float(nomo.probability(0.0)), float(nomo.probability(nomo.max_total_points))
    pt = [float(p) for p in probability_ticks if p0 <= p <= p1]
    px = [float(nomo.total_points_for_probability(p)) * to_x for p in pt]
    prob = NomogramAxis("probability", outcome_label,
                        tuple(AxisTick(p, number_text(p), x) for p, x in zip(pt, px, strict=True)),
                        (min(px), max(px)) if px else (0.0, 0.0))
    return [points, *_predictor_axes(nomo), total, lp, prob]


@dataclass(frozen=True)
class LabelPlacement:
    """Where one tick label goes: ``row`` 0 above the line, 1 and 2 below it; ``align``
    ``"center"``, ``"right"`` (text ends at the tick) or ``"left"`` (text starts at it)."""

    row: int
    align: str


def _extent(x: float, width: float, align: str) -> tuple[float, float]:
    if align == "center":
        return x - width / 2, x + width / 2
    return (x - width, x) if align == "right" else (x, x + width)


def place_labels(xs: Sequence[float], widths: Sequence[float], gap: float,
                 left_limit: float = -math.inf) -> list[LabelPlacement]:
    """Place labels of width ``widths`` centred on ticks ``xs`` (same units) without overlap.

    Left to right, each label takes the first free slot of: centred above the line; for the
    leftmost label right-aligned at its tick (not past ``left_limit``), for the rightmost
    left-aligned; centred in the first, then the second row below. Two labels that would
    touch when centred (a 0/1 axis of a small effect) try the outward alignments first. ``gap``: the least space
    between two labels of a row. If no slot is free (an axis far too short), the label goes to
    the row where it overlaps least.
    """
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    right_edge = [-math.inf, -math.inf, -math.inf]
    out: list[LabelPlacement | None] = [None] * len(xs)
    outward = len(xs) == 2 and (
        _extent(xs[order[0]], widths[order[0]], "center")[1] + gap
        > _extent(xs[order[1]], widths[order[1]], "center")[0])
    for rank, i in enumerate(order):
        side = [(0, "right")] if rank == 0 and len(order) > 1 else []
        side += [(0, "left")] if rank == len(order) - 1 and len(order) > 1 else []
        slots = [*side, (0, "center")] if outward else [(0, "center"), *side]
        slots += [(1, "center"), (2, "center")]
        chosen = None
        for row, align in slots:
            lo, hi = _extent(xs[i], widths[i], align)
            need = gap / 2 if outward and align == "left" else gap  # the tick lies between
            if lo >= right_edge[row] + need and lo >= left_limit:
                chosen = (row, align)
                break
        if chosen is None:
            row = int(np.argmin(right_edge))
            chosen = (row, "center")
        lo, hi = _extent(xs[i], widths[i], chosen[1])
        right_edge[chosen[0]] = hi
        out[i] = LabelPlacement(*chosen)
    return [p for p in out if p is not None]


def text_width_pt(text: str, size_pt: float, bold: bool = False) -> float:
    """Rendered width of ``text`` in DejaVu Sans (matplotlib's font) at ``size_pt``, in pt."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    return float(TextPath((0, 0), text, size=size_pt, prop=prop).get_extents().width)


def layout_rows(axes: Sequence[NomogramAxis], width_of: Callable[[str], float], gap: float
                ) -> list[list[LabelPlacement]]:
    """:func:`place_labels` for every axis; ``width_of(text)`` in Points units."""
    return [place_labels([t.x for t in a.ticks], [width_of(t.text) for t in a.ticks], gap,
                         left_limit=-3.0) for a in axes]


def _row_offsets(n_rows_below: int) -> float:
    return _ROW_GAP * max(n_rows_below - 1, 0)


def draw_nomogram(
    nomo: Nomogram,
    outcome_label: str = "Probability",
    probability_ticks: Sequence[float] = DEFAULT_PROBABILITY_TICKS,
    title: str | None = None,
) -> Any:
    """The classic nomogram (Points, one axis per predictor, Total Points, Linear Predictor,
    probability) as a matplotlib figure, 11 in wide, tick labels 10 pt, none overlapping."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    axes = nomogram_axes(nomo, outcome_label, probability_ticks)
    units_per_pt = (X_MAX - X_MIN) / (FIG_WIDTH_IN * 72.0)
    rows = layout_rows(axes, lambda s: text_width_pt(s, TICK_FONT_PT) * units_per_pt,
                       gap=4.0 * units_per_pt)
    extra = [_row_offsets(max((p.row for p in r), default=0)) for r in rows]
    heights = [1.0 + e for e in extra]
    total_h = sum(heights) + 0.4
    body_in = ROW_HEIGHT_IN * total_h
    fig_h = body_in + (0.4 if title else 0.0)
    fig = plt.figure(figsize=(FIG_WIDTH_IN, fig_h))
    ax = fig.add_axes((0.0, 0.0, 1.0, body_in / fig_h))
    y = total_h - 0.55
    for axis, placement, h in zip(axes, rows, heights, strict=True):
        _draw_axis(ax, y, axis, placement)
        y -= h
    ax.set_xlim(X_MIN, X_MAX)
    ax.set_ylim(0.0, total_h)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=NAME_FONT_PT + 2, y=0.995, va="top")
    return fig


def _draw_axis(ax: Any, y: float, axis: NomogramAxis, places: Sequence[LabelPlacement]) -> None:
    lo, hi = axis.span
    ax.text(-4, y, axis.label, ha="right", va="center", fontsize=NAME_FONT_PT,
            fontweight="bold")
    if not axis.ticks:
        return
    ax.plot([lo, hi], [y, y], color="black", lw=0.9, solid_capstyle="butt")
    for x in axis.minor:
        ax.plot([x, x], [y, y + 0.07], color="black", lw=0.6)
    for tick, place in zip(axis.ticks, places, strict=True):
        ax.plot([tick.x, tick.x], [y, y + 0.12], color="black", lw=0.9)
        if place.row == 0:
            ty, va = y + _ABOVE, "bottom"
        else:
            ty, va = y + _BELOW - _ROW_GAP * (place.row - 1), "top"
        ax.text(tick.x, ty, tick.text, ha=place.align, va=va, fontsize=TICK_FONT_PT)


def plot_nomogram(
    nomo: Nomogram,
    path_png: str | os.PathLike[str],
    path_svg: str | os.PathLike[str] | None = None,
    *,
    outcome_label: str = "Probability",
    probability_ticks: Sequence[float] = DEFAULT_PROBABILITY_TICKS,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw :func:`draw_nomogram` to a PNG (and an SVG with editable text), atomically."""
    import matplotlib
    import matplotlib.pyplot as plt

    from myocomp.io import save_figure

    with matplotlib.rc_context({"svg.fonttype": "none", "font.family": "DejaVu Sans"}):
        fig = draw_nomogram(nomo, outcome_label, probability_ticks, title)
        try:
            save_figure(fig, Path(path_png), dpi)
            if path_svg is not None:
                save_figure(fig, Path(path_svg), dpi)
        finally:
            plt.close(fig)
    return Path(path_png)
