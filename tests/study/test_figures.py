"""The study's figures: written where asked, PNGs of drawn content, bad tables refused."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from myocomp.errors import DataError
from myocomp.stats.validation import calibration_curve, calibration_slope_intercept
from myocomp.study.figures import plot_calibration, plot_roc


def _drawn(path) -> np.ndarray:
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    return img


def test_calibration_and_roc_plots(tmp_path):
    rng = np.random.default_rng(9)
    p = rng.beta(2, 5, 400)
    y = rng.binomial(1, p)
    curve = calibration_curve(y, p)
    cal = plot_calibration(curve, tmp_path / "cal.png", fit=calibration_slope_intercept(y, p))
    roc = plot_roc(y, p, tmp_path / "roc.png", title="ROC")
    assert (cal, roc) == (tmp_path / "cal.png", tmp_path / "roc.png")
    for path in (cal, roc):
        assert path.read_bytes()[:4] == b"\x89PNG"
        img = _drawn(path)
        assert img[..., :3].std() > 0.05  # not a blank canvas
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cal.png", "roc.png"]
    with pytest.raises(DataError, match="lacks columns"):
        plot_calibration(curve.drop(columns="upper"), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
