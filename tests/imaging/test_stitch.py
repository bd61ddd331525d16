"""Stitching overlapping stations in world coordinates (myocomp.imaging.stitch)."""

from __future__ import annotations

import numpy as np
import pytest

from myocomp.errors import GeometryError
from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.stitch import Station, stitch, stitch_dixon, union_grid
from myocomp.io import save_nifti
from myocomp.synth.phantom import make_phantom

from .helpers import AUTO_L, AUTO_R, PSOAS_L, PSOAS_R, blocky_trunk

METRICS = ["volume_ml", "ff_mean", "ff_median", "lean_volume_ml", "intermat_volume_ml"]


def trunk(seed: int = 0, shape=(20, 16, 36), spacing=(2.0, 2.0, 4.0)):
    """Water, fat, labels, affine of a small trunk whose muscles run through every station."""
    boxes = {AUTO_L: np.s_[2:8, 2:7, 2:34], AUTO_R: np.s_[12:18, 2:7, 2:34], PSOAS_L: np.s_[4:8, 10:14, 6:30],
             PSOAS_R: np.s_[12:16, 10:14, 6:30]}
    return blocky_trunk(seed, shape, spacing, boxes, [-20.0, -15.0, -60.0], ff=(0.08, 0.03), septa=(0.1, 0.9),
                        gain_spread=0.2)


def cut(data: dict[str, np.ndarray], affine: np.ndarray, z_ranges, gains) -> list[Station]:
    stations = []
    for (z0, z1), gain in zip(z_ranges, gains, strict=True):
        shift = np.eye(4)
        shift[2, 3] = z0
        stations.append(
            Station(
                channels={k: v[:, :, z0:z1] * gain for k, v in data.items()}, affine=affine @ shift
            )
        )
    return stations


def metrics_of(water, fat, labels, affine):
    dixon = dixon_from_arrays(water, fat, affine)
    lm = labelmap_from_array(labels, affine, "mrsegmentator", reference=dixon)
    m = quantify(dixon, lm, groups=("back", "psoas"), with_slices=False).metrics
    return m.set_index("group")[METRICS]


@pytest.mark.parametrize("seed", [0, 1])
def test_three_stations_with_gain_stitch_back_to_the_phantom(seed: int) -> None:
    p = make_phantom(seed, n_slices=30, voxel_size_mm=(4.0, 4.0, 6.0), supersample=1)
    stations = cut(
        {"water": p.water, "fat": p.fat}, p.affine, [(0, 12), (9, 21), (18, 30)], [1.0, 1.35, 1.0]
    )
    res = stitch(stations)
    np.testing.assert_allclose(res.affine, p.affine, atol=1e-9)
    assert res.channels["water"].shape == p.water.shape
    np.testing.assert_allclose(res.scales[1], 1 / 1.35, rtol=1e-3)
    # intensity-matched: the gain of station 2 is gone everywhere, overlaps included
    np.testing.assert_allclose(res.channels["water"], p.water, rtol=1e-3, atol=1e-2)
    ref = metrics_of(p.water, p.fat, p.labels, p.affine)
    got = metrics_of(res.channels["water"], res.channels["fat"], p.labels, res.affine)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=0.01)
    truth = p.truth["metrics"]["back"]["volume_ml"]
    assert got.loc["back", "volume_ml"] == pytest.approx(truth, rel=0.05)


def test_without_intensity_matching_the_gain_shows() -> None:
    water, fat, _, affine = trunk()
    stations = cut(
        {"water": water, "fat": fat}, affine, [(0, 14), (10, 26), (21, 36)], [1.0, 1.35, 1.0]
    )
    res = stitch(stations, intensity_match=False)
    middle = res.channels["water"][:, :, 16:20] / water[:, :, 16:20]
    np.testing.assert_allclose(middle, 1.35, rtol=1e-4)
    # linear blending: inside an overlap the ratio moves between the two gains
    overlap = np.median(res.channels["water"][:, :, 10:14] / water[:, :, 10:14], axis=(0, 1))
    assert np.all(np.diff(overlap) > 0) and 1.0 < overlap[0] < overlap[-1] < 1.35


def test_station_order_and_orientation_do_not_matter() -> None:
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    water, fat, labels, affine = trunk(seed=3)
    stations = cut(
        {"water": water, "fat": fat}, affine, [(0, 14), (10, 26), (21, 36)], [0.8, 1.0, 1.2]
    )
    # store station 3 flipped and permuted (LPI axis codes): same world image
    st = stations[2]
    t = ornt_transform(io_orientation(st.affine), axcodes2ornt(("P", "L", "I")))
    flipped = Station(
        channels={k: apply_orientation(v, t) for k, v in st.channels.items()},
        affine=st.affine @ inv_ornt_aff(t, st.shape),
    )
    shuffled = [flipped, stations[0], stations[1]]
    res = stitch(shuffled)
    assert res.order == (1, 2, 0)
    np.testing.assert_allclose(res.affine, affine, atol=1e-9)
    np.testing.assert_allclose(res.channels["water"], water * 0.8, rtol=1e-4)
    ref = metrics_of(water, fat, labels, affine)
    got = metrics_of(res.channels["water"], res.channels["fat"], labels, res.affine)
    np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=0.01)


def test_union_grid_covers_all_stations() -> None:
    a = np.diag([2.0, 2.0, 4.0, 1.0])
    b = a.copy()
    b[2, 3] = 40.0  # starts 10 slices higher
    grid, shape = union_grid([a, b], [(5, 5, 12), (5, 5, 12)])
    np.testing.assert_allclose(grid, a)
    assert shape == (5, 5, 22)


def test_non_overlapping_stations_and_bad_input_are_errors() -> None:
    water, fat, _, affine = trunk()
    stations = cut({"water": water, "fat": fat}, affine, [(0, 10), (20, 36)], [1.0, 1.0])
    with pytest.raises(GeometryError, match="do not overlap"):
        stitch(stations)
    with pytest.raises(GeometryError, match="channels"):
        stitch([stations[0], Station(channels={"water": water}, affine=affine)])
    with pytest.raises(GeometryError, match="no stations"):
        stitch([])


def test_stitch_dixon_from_files(tmp_path) -> None:
    water, fat, labels, affine = trunk(seed=5)
    stations = cut(
        {"water": water, "fat": fat}, affine, [(0, 14), (10, 26), (21, 36)], [1.0, 0.7, 1.1]
    )
    paths: dict[str, list] = {"water": [], "fat": []}
    for k, st in enumerate(stations, start=1):
        for ch in ("water", "fat"):
            paths[ch].append(
                save_nifti(
                    st.channels[ch].astype(np.float32), st.affine, tmp_path / f"{ch}_{k}.nii.gz"
                )
            )
    dixon = stitch_dixon(paths)
    np.testing.assert_allclose(dixon.affine, affine, atol=1e-6)
    np.testing.assert_allclose(dixon.water, water, rtol=1e-4)
    bad = {"water": paths["water"], "fat": paths["fat"][:2]}
    with pytest.raises(GeometryError, match="different station counts"):
        stitch_dixon(bad)
