"""The nomogram figure (study layer): ticks over every axis with a label at each, 0/1 axes read
no/yes, no two texts overlap at print size; the numerical nomogram (stats) draws nothing."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from myocomp.stats.nomogram import Nomogram, PredictorSpec
from myocomp.study.nomogram_figure import (
    draw_nomogram,
    nomogram_axes,
    place_labels,
    plot_nomogram,
)

PA = "C(pa_category, Treatment('moderate'))"


def _nomogram(z_lmm: float, diabetes: float, dyslipidemia: float) -> Nomogram:
    """A nomogram shaped like the study's, with chosen (small) effects of some predictors."""
    params = pd.Series({"Intercept": -2.9, f"{PA}[T.high]": 0.18, f"{PA}[T.low]": 0.28,
                        "z_intermat": 0.10, "z_lmm": z_lmm, "age": 0.026, "female": 0.27,
                        "diabetes": diabetes, "dyslipidemia": dyslipidemia,
                        "osteoarthritis": 0.49})
    binary = dict(low=0.0, high=1.0, ticks=(0.0, 1.0))
    specs = [
        PredictorSpec.categorical("pa_category", ["high", "low", "moderate"],
                                  [f"{PA}[T.high]", f"{PA}[T.low]", None],
                                  label="Physical activity"),
        PredictorSpec.continuous("z_intermat", low=-1.21, high=3.18, label="InterMAT (Z)"),
        PredictorSpec.continuous("z_lmm", low=-2.33, high=2.41, label="LMM (Z)"),
        PredictorSpec.continuous("age", low=23, high=71, label="Age (years)"),
        PredictorSpec.continuous("female", label="Female sex", **binary),
        PredictorSpec.continuous("diabetes", label="Diabetes", **binary),
        PredictorSpec.continuous("dyslipidemia", label="Dyslipidaemia", **binary),
        PredictorSpec.continuous("osteoarthritis", label="Osteoarthritis", **binary),
    ]
    return Nomogram.from_params(params, specs)


CASES = [(-0.014, 0.23, -0.056), (-0.08, 0.004, 0.02), (0.3, -0.002, -0.3)]


@pytest.mark.parametrize("z_lmm,diabetes,dyslipidemia", CASES)
def test_every_axis_has_labelled_ticks_over_its_range(z_lmm, diabetes, dyslipidemia):
    nomo = _nomogram(z_lmm, diabetes, dyslipidemia)
    axes = {a.name: a for a in nomogram_axes(nomo, "Probability of CBP")}
    for name, (lo, hi) in (("z_intermat", (-1.21, 3.18)), ("z_lmm", (-2.33, 2.41))):
        values = sorted(float(t.value) for t in axes[name].ticks)
        units = set(range(math.ceil(lo), math.floor(hi) + 1))
        assert units <= set(values), name  # a tick at every unit (halves on long axes)
        assert values[0] - lo < 1 and hi - values[-1] < 1, name
        assert all(t.text for t in axes[name].ticks)
    assert sorted(t.text for t in axes["diabetes"].ticks) == ["no", "yes"]
    assert sorted(t.text for t in axes["female"].ticks) == ["female", "male"]
    age = sorted(float(t.value) for t in axes["age"].ticks)
    assert age[0] - 23 < 5 and 71 - age[-1] < 5 and len(age) >= 5
    assert {t.text for t in axes["pa_category"].ticks} == {"high", "low", "moderate"}
    for a in axes.values():  # ticks lie on the drawn line
        assert all(a.span[0] - 1e-9 <= t.x <= a.span[1] + 1e-9 for t in a.ticks), a.name


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text()]
    return texts, [t.get_window_extent(renderer) for t in texts]


@pytest.mark.parametrize("z_lmm,diabetes,dyslipidemia", CASES)
def test_figure_texts_never_overlap(z_lmm, diabetes, dyslipidemia):
    import matplotlib.pyplot as plt

    nomo = _nomogram(z_lmm, diabetes, dyslipidemia)
    fig = draw_nomogram(nomo, "Probability of CBP")
    try:
        texts, boxes = _boxes(fig)
        n_ticks = sum(len(a.ticks) for a in nomogram_axes(nomo, "Probability of CBP"))
        assert len(texts) == n_ticks + len(nomo.predictors) + 4  # a label at every tick
        assert min(t.get_fontsize() for t in texts) >= 10  # readable at 11 in wide
        for (ta, a), (tb, b) in itertools.combinations(zip(texts, boxes, strict=True), 2):
            assert not a.overlaps(b), (ta.get_text(), tb.get_text())
        assert "01" not in {t.get_text() for t in texts}
    finally:
        plt.close(fig)


def test_place_labels_uses_rows_and_outward_alignment():
    crowded = place_labels([0, 1, 2, 3, 4], [1.6] * 5, gap=0.2)
    for row in {p.row for p in crowded}:
        xs = [x for x, p in zip(range(5), crowded, strict=True) if p.row == row]
        assert all(b - a >= 1.6 + 0.2 for a, b in itertools.pairwise(xs))
    assert {p.row for p in crowded} == {0, 1}
    pair = place_labels([0.0, 1.0], [1.5, 1.8], gap=0.2)
    assert [(p.row, p.align) for p in pair] == [(0, "right"), (0, "left")]
    apart = place_labels([0.0, 10.0], [1.5, 1.8], gap=0.2)
    assert [(p.row, p.align) for p in apart] == [(0, "center"), (0, "center")]


def test_plot_writes_png_and_svg_with_text(tmp_path):
    import matplotlib.image as mpimg

    nomo = _nomogram(*CASES[0])
    png, svg = tmp_path / "fig" / "nomogram.png", tmp_path / "fig" / "nomogram.svg"
    plot_nomogram(nomo, png, svg, outcome_label="Probability of CBP", title="Nomogram")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    for label in ("Points", "Total Points", "Linear Predictor", "Probability of CBP",
                  "InterMAT (Z)", "no", "yes", "male", "female", "\u22121", "moderate"):
        assert f">{label}<" in text, label
    img = mpimg.imread(png)
    assert img.shape[1] > 1400 and img.shape[0] > 1000
    assert np.mean(img[..., :3] < 0.5) > 0.005  # something is drawn
    assert sorted(p.name for p in png.parent.iterdir()) == ["nomogram.png", "nomogram.svg"]


def test_stats_nomogram_imports_no_matplotlib():
    code = ("import sys, myocomp.stats.nomogram as n; "
            "assert not hasattr(n.Nomogram, 'plot'); "
            "assert not any(m.startswith('matplotlib') for m in sys.modules), 'matplotlib'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
