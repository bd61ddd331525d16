import numpy as np
import pandas as pd
import pytest

from myocomp.errors import DataError, LabelError
from myocomp.imaging.composition import (
    composition_metrics,
    gmm_fat_probability,
    quantify,
    slice_profile,
)
from myocomp.imaging.dixon import dixon_from_arrays, fat_fraction
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.labels import get_profile

from .helpers import AUTO_L, AUTO_R, PSOAS_L, SPINE, reorient, toy_volume

NAMES = get_profile("mrsegmentator").ids


def test_metrics_by_hand_on_a_tiny_volume():
    labels = np.zeros((4, 1, 1), dtype=int)
    labels[:, 0, 0] = [AUTO_L, AUTO_L, AUTO_R, 0]
    ff = np.array([0.1, 0.8, 0.2, 0.9]).reshape(4, 1, 1)
    m = composition_metrics(ff, labels, NAMES, (10.0, 10.0, 10.0), bmi=25.0, groups=("back",)).set_index("group")
    back = m.loc["back"]
    assert back["volume_ml"] == pytest.approx(3.0)
    assert back["ff_mean"] == pytest.approx((0.1 + 0.8 + 0.2) / 3)
    assert back["ff_median"] == pytest.approx(0.2)
    assert back["lean_volume_ml"] == pytest.approx(0.9 + 0.8)
    assert back["intermat_volume_ml"] == pytest.approx(1.0)
    assert back["intermat_fraction"] == pytest.approx(1 / 3)
    assert back["lmm"] == pytest.approx(1.7 / 25)
    assert m.loc["autochthon_left", "lean_volume_ml"] == pytest.approx(0.9)
    assert list(m.index) == ["back", "autochthon_left", "autochthon_right"]


def test_band_adds_unlabelled_fat_next_to_the_muscle():
    labels = np.zeros((7, 1, 1), dtype=int)
    labels[:, 0, 0] = [0, 0, AUTO_L, AUTO_L, 0, SPINE, 0]
    ff = np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9]).reshape(7, 1, 1)
    no_band = composition_metrics(ff, labels, NAMES, (1.0, 1.0, 1.0), groups=("back",)).iloc[0]
    assert no_band["perimuscular_fat_ml"] == 0 and no_band["intermat_volume_ml"] == 0
    band = composition_metrics(ff, labels, NAMES, (1.0, 1.0, 1.0), band_mm=1.0, groups=("back",)).iloc[0]
    # within 1 mm: voxel 1 and voxel 4 (unlabelled, fat); voxel 5 is spine (another label)
    assert band["perimuscular_fat_ml"] == pytest.approx(2e-3)
    assert band["intermat_fraction"] == pytest.approx(2 / 4)


def test_invalid_voxels_count_in_volume_but_not_in_ff():
    water, fat, labels, affine = toy_volume(1)
    ff = fat / (water + fat)
    ff_nan = ff.copy()
    muscle = np.argwhere(labels == AUTO_L)
    ff_nan[tuple(muscle[:5].T)] = np.nan
    a = composition_metrics(ff, labels, NAMES, (2, 2.5, 4)).set_index("group")
    b = composition_metrics(ff_nan, labels, NAMES, (2, 2.5, 4)).set_index("group")
    assert b.loc["autochthon_left", "volume_ml"] == a.loc["autochthon_left", "volume_ml"]
    assert b.loc["autochthon_left", "n_invalid"] == 5
    assert b.loc["autochthon_left", "lean_volume_ml"] == pytest.approx(a.loc["autochthon_left", "lean_volume_ml"], rel=0.02)


def test_slice_profile_integrates_to_the_volume():
    water, fat, labels, affine = toy_volume(2)
    ff = fat / (water + fat)
    prof = slice_profile(ff, labels, NAMES, affine)
    m = composition_metrics(ff, labels, NAMES, (2, 2.5, 4)).set_index("group")
    for name in ("back", "psoas", "autochthon_right"):
        rows = prof[prof["muscle"] == name]
        assert (rows["csa_cm2"].sum() * 0.4) == pytest.approx(m.loc[name, "volume_ml"])
        assert (rows["lean_csa_cm2"].sum() * 0.4) == pytest.approx(m.loc[name, "lean_volume_ml"])
    z = prof[prof["muscle"] == "back"]["z_mm"].to_numpy()
    assert np.allclose(np.diff(z), 4.0) and z[0] == pytest.approx(100.0 + 4.0)


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("S", "R", "A"), ("P", "I", "L")])
def test_metrics_do_not_depend_on_stored_orientation(axcodes):
    water, fat, labels, affine = toy_volume(3)
    ref = quantify(dixon_from_arrays(water, fat, affine), labelmap_from_array(labels, affine, "mrsegmentator"))
    w2, a2 = reorient(water, affine, axcodes)
    f2, _ = reorient(fat, affine, axcodes)
    l2, _ = reorient(labels, affine, axcodes)
    assert w2.shape != water.shape or not np.array_equal(w2, water)
    dixon = dixon_from_arrays(w2, f2, a2)
    other = quantify(dixon, labelmap_from_array(l2, a2, "mrsegmentator", reference=dixon))
    pd.testing.assert_frame_equal(ref.metrics, other.metrics, rtol=1e-6)
    pd.testing.assert_frame_equal(ref.slices, other.slices, rtol=1e-6)


def test_magnitude_discrimination_removes_the_noise_floor_bias():
    rng = np.random.default_rng(0)
    n, sigma = 200_000, 1.0
    w_true, f_true = 19.0, 1.0  # FF 0.05 at SNR 20
    nw = rng.normal(0, sigma, n) + 1j * rng.normal(0, sigma, n)
    nf = rng.normal(0, sigma, n) + 1j * rng.normal(0, sigma, n)
    water, fat, ip = np.abs(w_true + nw), np.abs(f_true + nf), np.abs(w_true + f_true + nw + nf)
    plain = np.nanmean(fat_fraction(water, fat, noise_floor=0))
    discriminated = np.nanmean(fat_fraction(water, fat, in_phase=ip, noise_floor=0))
    assert plain - 0.05 > 0.015  # the known upward bias of F / (W + F)
    # what remains is second-order ratio bias and the clipping of FF at 0: well inside 0.01
    assert abs(discriminated - 0.05) < 0.005
    assert abs(discriminated - 0.05) < (plain - 0.05) / 4


def test_fat_fraction_marks_noise_and_nan_invalid():
    water = np.array([100.0, 0.1, np.nan, 50.0])
    fat = np.array([10.0, 0.1, 5.0, 50.0])
    ff = fat_fraction(water, fat, noise_floor=1.0)
    assert ff[0] == pytest.approx(10 / 110) and np.isnan(ff[1]) and np.isnan(ff[2]) and ff[3] == 0.5


def test_gmm_separates_two_tissues():
    rng = np.random.default_rng(0)
    sample = np.concatenate([rng.normal(300, 20, 900), rng.normal(900, 40, 100)])
    p = gmm_fat_probability(np.array([300.0, 900.0, 600.0]), sample)
    assert p[0] < 0.01 and p[1] > 0.99
    assert gmm_fat_probability(np.array([300.0]), sample, fat_is_bright=False)[0] > 0.99


def test_parameter_and_label_errors():
    water, fat, labels, affine = toy_volume(4)
    dixon = dixon_from_arrays(water, fat, affine)
    lm = labelmap_from_array(labels, affine, "mrsegmentator")
    with pytest.raises(DataError, match="fat_threshold"):
        quantify(dixon, lm, fat_threshold=1.5)
    with pytest.raises(DataError, match="bmi"):
        quantify(dixon, lm, bmi=400)
    with pytest.raises(LabelError, match="none of the groups gluteal"):
        quantify(dixon, lm, groups=("gluteal",))
    only_spine = np.where(labels == SPINE, SPINE, 0)
    with pytest.raises(LabelError, match="empty muscle labels"):
        labelmap_from_array(only_spine, affine, "mrsegmentator")
    assert PSOAS_L in np.unique(labels)


@pytest.mark.parametrize("method", ["ratio", "noise-corrected", "magnitude-discrimination"])
def test_fat_fraction_in_threads_equals_one_thread(method, monkeypatch):
    """Large volumes are computed slab by slab in two threads: the same numbers, bit for bit,
    in either memory layout."""
    import myocomp.imaging.dixon as dixon_mod

    rng = np.random.default_rng(3)
    w, f = (np.asfortranarray(rng.random((90, 80, 60), dtype=np.float32) * 100) for _ in range(2))
    ip = (w + f) * np.float32(0.98)
    w[0, 0, :5] = np.nan
    kw = {"noise_sigma": 3.0} if method == "noise-corrected" else {}
    kw |= {"in_phase": ip} if method == "magnitude-discrimination" else {}
    monkeypatch.setattr(dixon_mod, "PARALLEL_FF_VOXELS", 1)
    threaded = dixon_mod.fat_fraction(w, f, method=method, **kw)
    monkeypatch.setattr(dixon_mod, "PARALLEL_FF_VOXELS", 1 << 40)
    serial = dixon_mod.fat_fraction(w, f, method=method, **kw)
    assert np.array_equal(threaded, serial, equal_nan=True)
    assert np.array_equal(dixon_mod.fat_fraction(np.ascontiguousarray(w), np.ascontiguousarray(f),
                                                 method=method, **kw), serial, equal_nan=True)  # fmt: skip
