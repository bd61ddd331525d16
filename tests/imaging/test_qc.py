"""QC flags, overlay image and QC page (myocomp.imaging.qc), tested on phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from myocomp.imaging import qc
from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.labels import profile_from_mapping
from myocomp.synth.phantom import make_phantom

SMALL = {"n_slices": 8, "voxel_size_mm": (4.0, 4.0, 6.0), "supersample": 1}
GROUPS = ("back", "psoas")


def volumes(p, *, affine=None, swap_channels=False, labels=None, profile="mrsegmentator"):
    affine = p.affine if affine is None else affine
    water, fat = (p.fat, p.water) if swap_channels else (p.water, p.fat)
    dixon = dixon_from_arrays(water, fat, affine)
    lm = labelmap_from_array(
        p.labels if labels is None else labels, affine, profile, reference=dixon
    )
    return dixon, lm


@pytest.mark.parametrize("seed", [0, 1])
def test_clean_phantom_raises_no_flag(seed: int) -> None:
    dixon, lm = volumes(make_phantom(seed, **SMALL))
    flags = qc.assess(dixon, lm, GROUPS)
    assert not (flags.swap_suspected or flags.missing_labels or flags.geometry), flags.notes
    metrics = qc.add_flag_columns(quantify(dixon, lm, with_slices=False).metrics, flags)
    assert not metrics[[c for c in qc.FLAG_COLUMNS if c != "qc_truncated_fov"]].to_numpy().any()
    # the phantom's muscles run through both ends of its field of view: a true truncation
    assert metrics["qc_truncated_fov"].all()
    assert (metrics["qc_notes"] == "back, psoas cut by the field of view (touches the first or last slice)").all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regional_swap_is_flagged(seed: int) -> None:
    p = make_phantom(seed, swap_region=True, **SMALL)
    flags = qc.assess(*volumes(p), GROUPS)
    assert flags.swap_suspected
    assert p.truth["parameters"]["swap_region"]["muscle"] in " ".join(flags.notes)
    assert flags.muscle_ff_median < 0.5  # a regional swap is invisible to the global median


def test_global_swap_is_flagged_by_the_muscle_median() -> None:
    flags = qc.assess(*volumes(make_phantom(0, **SMALL), swap_channels=True), GROUPS)
    assert flags.swap_suspected and flags.muscle_ff_median > 0.5
    assert any("muscle FF median" in n for n in flags.notes)


def test_labelled_subcutaneous_fat_with_low_ff_is_flagged() -> None:
    p = make_phantom(0, **SMALL)
    dixon, _ = volumes(p)
    ff = qc.qc_fat_fraction(dixon)
    ids = {
        31: "autochthon_left",
        32: "autochthon_right",
        33: "iliopsoas_left",
        34: "iliopsoas_right",
        50: "subcutaneous_fat",
    }
    profile = profile_from_mapping({str(k): v for k, v in ids.items()})
    good = np.where(np.isin(p.labels, list(ids)), p.labels, 0)
    good[(good == 0) & (ff > 0.85)] = 50  # real fat
    _, lm = volumes(p, labels=good, profile=profile)
    assert not qc.assess(dixon, lm, GROUPS).swap_suspected
    bad = np.where(np.isin(p.labels, list(ids)), p.labels, 0)
    bad[(bad == 0) & (ff < 0.2)] = 50  # the 'fat' label sits on water-bright tissue
    _, lm = volumes(p, labels=bad, profile=profile)
    flags = qc.assess(dixon, lm, GROUPS)
    assert flags.swap_suspected and flags.subcutaneous_ff_median < 0.5
    assert any("subcutaneous fat FF median" in n for n in flags.notes)


def test_deleted_and_tiny_labels_are_flagged() -> None:
    p = make_phantom(0, **SMALL)
    labels = p.labels.copy()
    labels[labels == 34] = 0  # iliopsoas_right deleted
    flags = qc.assess(*volumes(p, labels=labels), GROUPS)
    assert flags.missing_labels and "iliopsoas_right missing" in flags.notes
    tiny = p.labels.copy()
    idx = np.argwhere(tiny == 33)
    tiny[tiny == 33] = 0
    tiny[tuple(idx[:3].T)] = 33  # 3 voxels of 0.096 mL
    flags = qc.assess(*volumes(p, labels=tiny), GROUPS)
    assert flags.missing_labels and any(n.startswith("iliopsoas_left tiny") for n in flags.notes)
    assert not qc.assess(*volumes(p, labels=tiny), ("back",)).missing_labels  # psoas not asked for


def test_identity_affine_and_anisotropy_are_flagged() -> None:
    p = make_phantom(0, **SMALL)
    flags = qc.assess(*volumes(p, affine=np.eye(4)), GROUPS)
    assert flags.geometry and any("identity affine" in n for n in flags.notes)
    aniso = make_phantom(0, n_slices=3, voxel_size_mm=(1.5, 1.5, 7.0), supersample=1)
    flags = qc.assess(*volumes(aniso), GROUPS)
    assert flags.geometry and any("anisotropy 4.7 > 4" in n for n in flags.notes)
    assert not qc.assess(*volumes(aniso), GROUPS, qc.QCConfig(max_anisotropy=5.0)).geometry


def test_volume_range_flags_rows() -> None:
    dixon, lm = volumes(make_phantom(0, **SMALL))
    metrics = quantify(dixon, lm, with_slices=False).metrics
    back = float(metrics.loc[metrics["group"] == "back", "volume_ml"].iloc[0])
    config = qc.QCConfig(volume_ranges_ml={"back": (back + 1, back + 1000), "psoas": (1.0, 1e4)})
    out = qc.add_flag_columns(metrics, qc.assess(dixon, lm, GROUPS, config), config)
    flagged = set(out.loc[out["qc_volume_out_of_range"], "group"])
    assert flagged == {"back"}
    assert "back volume" in out["qc_notes"].iloc[0]


def test_ball_opening_equals_binary_opening_with_the_ball():
    from scipy import ndimage

    from myocomp.imaging.qc import ball, ball_opening

    rng = np.random.default_rng(0)
    survivors = 0
    for _ in range(40):
        spacing = tuple(float(s) for s in rng.choice([1.0, 1.5, 2.0, 3.0, 4.0], 3))
        radius = float(rng.choice([3.0, 4.5, 6.0]))
        mask = ndimage.binary_dilation(rng.random((30, 28, 20)) > 0.985, iterations=int(rng.integers(1, 4)))
        element = ball(radius, spacing)
        pad = [(h, h) for h in np.array(element.shape) // 2]
        expected = ndimage.binary_opening(np.pad(mask, pad), element)
        inner = tuple(slice(p[0], p[0] + n) for p, n in zip(pad, mask.shape, strict=True))
        assert expected.sum() == expected[inner].sum()
        got = ball_opening(mask, radius, spacing)
        np.testing.assert_array_equal(got, expected[inner])
        survivors += bool(got.any())
    assert 5 <= survivors <= 35  # both paths taken: thin masks (cube prefilter) and compact ones


def test_label_boxes_are_the_extent_of_each_label():
    from myocomp.imaging.qc import label_boxes

    rng = np.random.default_rng(1)
    labels = np.zeros((20, 18, 16), dtype=np.uint16)
    for i in (3, 7, 1002):
        c = rng.integers(2, 14, 3)
        labels[c[0] : c[0] + 4, c[1] : c[1] + 3, c[2] : c[2] + 2] = i
    boxes = label_boxes(labels, [3, 7, 1002, 55])
    assert set(boxes) == {3, 7, 1002}
    for i, box in boxes.items():
        where = np.nonzero(labels == i)
        assert box == tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)


@pytest.mark.parametrize("swap_region", [False, True])
def test_assess_on_quantifys_map_inside_the_box(swap_region: bool) -> None:
    """QC reuses the map the metrics came from (box only): same flags, the metrics' median."""
    p = make_phantom(3, swap_region=swap_region, **SMALL)
    dixon, lm = volumes(p)
    result = quantify(dixon, lm, with_slices=False)
    assert result.ff.shape == lm.data[result.box].shape
    reused = qc.assess(dixon, lm, GROUPS, ff=result.ff, box=result.box)
    whole = qc.assess(dixon, lm, GROUPS)
    assert reused.swap_suspected == whole.swap_suspected == swap_region
    muscle = np.isin(lm.data[result.box], [31, 32, 33, 34]) & np.isfinite(result.ff)
    assert reused.muscle_ff_median == pytest.approx(float(np.median(result.ff[muscle])), abs=1e-7)
    # the whole-volume QC map is the plain ratio: biased upwards by the noise floor
    assert whole.muscle_ff_median > reused.muscle_ff_median


def test_assess_ignores_a_map_without_a_fat_image() -> None:
    p = make_phantom(0, **SMALL)
    dixon = dixon_from_arrays(p.water, None, p.affine)
    lm = labelmap_from_array(p.labels, p.affine, "mrsegmentator", reference=dixon)
    gmm = np.ones(p.labels.shape, np.float32)  # a posterior, not a fat fraction
    assert not qc.assess(dixon, lm, GROUPS, ff=gmm).swap_suspected


def test_identical_channels_are_exact_beyond_the_quick_grid():
    """The strided quick look only answers "different": one differing voxel off the grid, NaN in
    both, and another memory order are all judged on every voxel."""
    import numpy as np

    from myocomp.imaging.qc import _identical

    rng = np.random.default_rng(3)
    a = rng.normal(size=(61, 47, 33))
    a[5, 6, 7] = np.nan
    assert _identical(a, a.copy())
    assert _identical(a, np.asfortranarray(a))
    b = a.copy()
    b[59, 45, 31] += 1e-9  # not on the quick grid (steps 3, 2, 2)
    assert not _identical(a, b)
    assert not _identical(a, np.where(np.isnan(a), 0.0, a))
    assert not _identical(a, a[:-1])
    assert _identical(a.ravel(), a.ravel().copy()) and not _identical(a.ravel(), b.ravel())
