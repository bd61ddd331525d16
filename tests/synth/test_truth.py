"""The phantom's ground truth is computed independently of the imaging core (synth.truth: the
definitions of DESIGN.md section 3 written out over the fine model's voxels), by hand on small
arrays, and it agrees with :func:`composition_metrics` where both must give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from myocomp.imaging import composition
from myocomp.imaging.composition import composition_metrics, quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.labels import get_profile
from myocomp.synth.phantom import make_phantom
from myocomp.synth.truth import truth_metrics

NAMES = {1: "autochthon_left", 2: "autochthon_right", 3: "iliopsoas_left", 4: "iliopsoas_right", 9: "spine"}


def test_definitions_by_hand():
    """Four voxels of 2 mm (0.008 mL) in autochthon_left, one NaN; tau 0.5; BMI 20."""
    ff = np.array([0.2, 0.6, 0.4, np.nan], dtype=np.float32).reshape(4, 1, 1)
    labels = np.ones((4, 1, 1), dtype=np.int16)
    out = truth_metrics(ff, labels, NAMES, (2.0, 2.0, 2.0), bmi=20.0, fat_threshold=0.5, band_mm=0.0,
                        groups=("back", "psoas"))
    v = 0.008
    left = out["autochthon_left"]
    assert left["volume_ml"] == pytest.approx(4 * v)
    assert left["n_voxels"] == 4 and left["n_invalid"] == 1
    assert left["ff_mean"] == pytest.approx(0.4)
    assert left["ff_median"] == pytest.approx(0.4)
    # lean: (0.8 + 0.6) over 3 valid voxels, scaled to the 4 voxels of M
    assert left["lean_volume_ml"] == pytest.approx(1.4 * 4 / 3 * v)
    assert left["intramuscular_fat_ml"] == pytest.approx(1 * 4 / 3 * v)
    assert left["intermat_volume_ml"] == left["intramuscular_fat_ml"]
    assert left["perimuscular_fat_ml"] == 0.0
    assert left["intermat_fraction"] == pytest.approx(1 / 3)
    assert left["lmm"] == pytest.approx(left["lean_volume_ml"] / 20.0)
    assert out["back"] == pytest.approx(left)
    assert out["autochthon_right"]["volume_ml"] == 0.0
    assert out["autochthon_right"]["ff_mean"] is None
    assert list(out) == ["back", "psoas", "autochthon_left", "autochthon_right", "iliopsoas_left",
                         "iliopsoas_right"]


def test_band_by_hand():
    """A 1-voxel muscle on a 1 mm grid: the band of 1 mm is its 6 face neighbours that carry no
    label (one is spine), so 5 voxels; 2 of them adipose."""
    ff = np.full((3, 3, 3), 0.1, dtype=np.float32)
    labels = np.zeros((3, 3, 3), dtype=np.int16)
    labels[1, 1, 1] = 3
    labels[1, 1, 0] = 9
    ff[0, 1, 1] = ff[2, 1, 1] = 0.9
    out = truth_metrics(ff, labels, NAMES, (1.0, 1.0, 1.0), bmi=None, fat_threshold=0.5, band_mm=1.0,
                        groups=("psoas",))
    row = out["iliopsoas_left"]
    assert row["perimuscular_fat_ml"] == pytest.approx(2e-3)
    assert row["intramuscular_fat_ml"] == 0.0
    assert row["intermat_fraction"] == pytest.approx(2 / 6)
    assert row["lmm"] is None


@pytest.mark.parametrize("band_mm", [0.0, 2.5])
def test_agrees_with_composition_metrics_on_the_same_voxels(band_mm):
    """Random FF (with NaN) and labels: the two implementations give the same numbers."""
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 0, 0, 1, 2, 3, 4, 9], size=(24, 20, 10)).astype(np.int16)
    ff = rng.uniform(0, 1, labels.shape).astype(np.float32)
    ff[rng.uniform(size=labels.shape) < 0.05] = np.nan
    options = dict(bmi=23.0, fat_threshold=0.45, band_mm=band_mm)
    truth = truth_metrics(ff, labels, NAMES, (1.5, 1.2, 3.0), groups=("back", "psoas"), **options)
    table = composition_metrics(ff, labels, NAMES, (1.5, 1.2, 3.0), groups=("back", "psoas"), **options)
    assert list(truth) == list(table["group"])
    for row in table.to_dict(orient="records"):
        for metric, value in truth[row["group"]].items():
            assert value == pytest.approx(row[metric], rel=1e-12), (row["group"], metric)
    if band_mm:
        assert truth["back"]["perimuscular_fat_ml"] > 0


def test_phantom_truth_does_not_use_composition_metrics(monkeypatch):
    expected = make_phantom(5, n_slices=4, supersample=2, snr=None).truth["metrics"]

    def refuse(*args, **kwargs):
        raise AssertionError("the phantom's truth must not come from composition_metrics")

    monkeypatch.setattr(composition, "composition_metrics", refuse)
    assert make_phantom(5, n_slices=4, supersample=2, snr=None).truth["metrics"] == expected


@pytest.mark.parametrize("band_mm", [0.0, 4.0])
def test_noise_free_phantom_measured_equals_its_truth(band_mm):
    """Without partial volume (supersample 1), noise and bias the images carry the fine model
    itself: the imaging core must measure the independent truth, up to float32 rounding of FF."""
    p = make_phantom(8, shape=(130, 100, 10), supersample=1, snr=None, bias=0.0, band_mm=band_mm)
    dixon = dixon_from_arrays(p.water, p.fat, p.affine)
    labels = labelmap_from_array(p.labels, p.affine, get_profile("mrsegmentator"), reference=dixon)
    measured = quantify(dixon, labels, bmi=25.0, band_mm=band_mm, ff_method="ratio", with_slices=False)
    metrics = measured.metrics.set_index("group")
    for name, true in p.truth["metrics"].items():
        assert metrics.loc[name, "n_voxels"] == true["n_voxels"], name
        for metric in ("volume_ml", "ff_mean", "ff_median", "lean_volume_ml", "lmm"):
            assert metrics.loc[name, metric] == pytest.approx(true[metric], rel=1e-5), (name, metric)
        for metric in ("intermat_volume_ml", "perimuscular_fat_ml"):
            assert metrics.loc[name, metric] == pytest.approx(true[metric], rel=2e-3, abs=1e-3), (name, metric)
    if band_mm:
        assert p.truth["metrics"]["back"]["perimuscular_fat_ml"] > 0
