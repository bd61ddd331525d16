"""Real MuscleMap data (../shared/data/real/musclemap_abdomen, MIT; see its README).

- The oblique single-contrast lumbar scan with its 8-muscle labels, read with a profile taken
  from the model JSON it was made with: accepted, metrics equal an independent voxel count,
  ``back`` = erector spinae + multifidus; exchanged sides (in the map or in the table) refused.
- The real whole-body label map (``test_dseg``, MuscleMap 2025-12, ids 5121-8162): accepted with
  the v1.0-v1.3 tables (which agree on every id it holds), refused with v1.4 (8151 tibia would be
  read as lateral gastrocnemius), also when left and right are exchanged.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.errors import LabelError
from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import dixon_from_arrays, load_dixon
from myocomp.imaging.labelmap import labelmap_from_array, load_labels
from myocomp.imaging.labels import get_profile
from myocomp.io import save_nifti

README_ML = {1: 84.5, 2: 78.6, 3: 108.4, 4: 119.8, 5: 78.4, 6: 74.3, 7: 20.8, 8: 26.1}


@pytest.fixture(scope="module")
def abdomen(shared_data):
    folder = shared_data / "real" / "musclemap_abdomen"
    return {
        "image": folder / "sub_0001_abdomen_image.nii.gz",
        "labels": folder / "sub_0001_abdomen_labels.nii.gz",
        "model_json": folder / "contrast_agnostic_abdomen_model.json",
        "wholebody": folder / "wholebody_labels_only" / "test_dseg.nii.gz",
        "wholebody_json": folder / "wholebody_labels_only" / "contrast_agnostic_wholebody_model.json",
    }


def _independent_ml(path) -> dict[int, float]:
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
    ids, counts = np.unique(data[data != 0], return_counts=True)
    return {int(i): float(c) * voxel_ml for i, c in zip(ids, counts, strict=True)}


def test_abdomen_profile_from_the_model_json(abdomen, tmp_path):
    profile = get_profile(abdomen["model_json"])
    assert profile.ids == {1: "multifidus_right", 2: "multifidus_left", 3: "erector_spinae_right",
                           4: "erector_spinae_left", 5: "psoas_major_right", 6: "psoas_major_left",
                           7: "quadratus_lumborum_right", 8: "quadratus_lumborum_left"}
    entries = json.loads(abdomen["model_json"].read_text())["labels"]
    mapping = tmp_path / "abdomen.json"
    mapping.write_text(json.dumps({str(e["value"]): f"{e['muscle']} {e['side']}" for e in entries}))
    assert get_profile(mapping).ids == profile.ids


def test_abdomen_single_contrast_accepted_and_equals_independent_count(abdomen, tmp_path):
    dixon = load_dixon(abdomen["image"])
    lm = load_labels(abdomen["labels"], abdomen["model_json"], reference=dixon)
    assert lm.anatomy["assessed"] == ["side", "back_posterior", "psoas_anterior"]
    metrics = quantify(dixon, lm, groups=("back", "psoas", "all"), with_slices=False).metrics.set_index("group")
    independent = _independent_ml(abdomen["labels"])
    assert {i: round(v, 1) for i, v in independent.items()} == README_ML
    for i, name in lm.profile.ids.items():
        assert metrics.loc[name, "volume_ml"] == pytest.approx(independent[i], rel=1e-6)  # det vs column norms of an oblique affine
    assert metrics.loc["back", "volume_ml"] == pytest.approx(sum(independent[i] for i in (1, 2, 3, 4)), rel=1e-6)
    assert metrics.loc["psoas", "volume_ml"] == pytest.approx(independent[5] + independent[6], rel=1e-6)
    assert metrics["method"].iloc[0].startswith("single_contrast_gmm")
    assert ((metrics["ff_mean"] >= 0) & (metrics["ff_mean"] <= 1)).all()


def test_abdomen_oblique_storage_order_does_not_matter(abdomen, tmp_path):
    """The same scan stored with its first axis reversed (affine adjusted) gives equal metrics."""
    out = {}
    for role in ("image", "labels"):
        img = nib.load(abdomen[role])
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1, img.shape[0] - 1
        data = np.asarray(img.dataobj)[::-1]
        out[role] = save_nifti(np.ascontiguousarray(data), img.affine @ flip, tmp_path / f"{role}.nii.gz")
    results = []
    for paths in (abdomen, out):
        dixon = load_dixon(paths["image"])
        lm = load_labels(paths["labels"], abdomen["model_json"], reference=dixon)
        results.append(quantify(dixon, lm, with_slices=False).metrics.set_index("group"))
    pd.testing.assert_frame_equal(results[0], results[1], rtol=1e-6)


def test_abdomen_exchanged_sides_are_refused(abdomen, tmp_path):
    dixon = load_dixon(abdomen["image"])
    data = np.asarray(nib.load(abdomen["labels"]).dataobj)
    canonical_x = int(np.argmax(np.abs(nib.load(abdomen["labels"]).affine[0, :3])))
    with pytest.raises(LabelError, match="left/right exchanged"):
        labelmap_from_array(np.flip(data, axis=canonical_x), nib.load(abdomen["labels"]).affine,
                            get_profile(abdomen["model_json"]), reference=dixon)
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps({"1": "multifidus left", "2": "multifidus right", "3": "erector spinae left",
                                   "4": "erector spinae right", "5": "psoas left", "6": "psoas right",
                                   "7": "quadratus lumborum left", "8": "quadratus lumborum right"}))
    with pytest.raises(LabelError, match="erector_spinae, multifidus, psoas_major, quadratus_lumborum have '_right'"):
        load_labels(abdomen["labels"], swapped, reference=dixon)


def test_abdomen_map_fits_no_builtin_profile(abdomen, capsys, tmp_path):
    """Its 1-8 scheme is the legacy abdomen model: a built-in table (organs, body composition) is refused."""
    for profile in ("mrsegmentator", "mrsegmentator_bodycomp", "auto"):
        code = main(["quantify", "--water", str(abdomen["image"]), "--labels", str(abdomen["labels"]),
                     "--profile", profile, "--out", str(tmp_path / "m.csv")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "no built-in profile fits" in err
    assert main(["quantify", "--water", str(abdomen["image"]), "--labels", str(abdomen["labels"]),
                 "--profile", str(abdomen["model_json"]), "--out", str(tmp_path / "m.csv")]) == 0


def test_builtin_v12_table_is_the_real_model_json(abdomen):
    real = get_profile(abdomen["wholebody_json"]).ids
    builtin = get_profile("musclemap_v1.2").ids
    assert set(real) == set(builtin) and len(real) == 99
    differ = {i for i in real if real[i] != builtin[i]}
    assert all(builtin[i] == "leg_" + real[i] for i in differ) and differ == {8101, 8102, 8111, 8112, 8121, 8122}
    assert set(get_profile("musclemap_v1.0").ids) == set(builtin) - set(range(6181, 6223))
    assert len(get_profile("musclemap_v1.4").ids) == 113


@pytest.fixture(scope="module")
def wholebody(abdomen):
    img = nib.load(abdomen["wholebody"])
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("version", ["musclemap_v1.0", "musclemap_v1.2"])
def test_wholebody_map_accepted_by_the_tables_it_was_made_with(wholebody, version):
    data, affine = wholebody
    lm = labelmap_from_array(data, affine, version)
    assert set(lm.anatomy["assessed"]) == {"side", "psoas_anterior", "gluteal", "thigh_caudal", "calf_posterior", "thigh_anterior"}
    assert lm.profile.ids[8151] == "tibia_left" and lm.profile.ids[8141] == "gastrocnemius_left"


@pytest.mark.parametrize("version", ["musclemap_v1.4", "musclemap"])
def test_wholebody_map_refused_by_the_v14_table(wholebody, version):
    data, affine = wholebody
    with pytest.raises(LabelError) as err:
        labelmap_from_array(data, affine, version)
    msg = str(err.value)
    assert "lateral_gastrocnemius_left, lateral_gastrocnemius_right are not dorsal of the tibia" in msg
    assert "'musclemap_v1.0'" in msg and "'musclemap_v1.2'" in msg


def test_wholebody_auto_picks_the_v12_reading(wholebody):
    data, affine = wholebody
    lm = labelmap_from_array(data, affine, "auto")
    assert lm.profile.name == "musclemap_v1.2"
    assert lm.anatomy["equivalent_profiles"] == ["musclemap_v1.0", "musclemap_v1.2"]


@pytest.mark.parametrize("version", ["musclemap_v1.0", "musclemap_v1.2", "musclemap_v1.4"])
def test_wholebody_left_right_exchanged_is_refused(wholebody, version):
    data, affine = wholebody
    assert tuple(nib.aff2axcodes(affine)) == ("R", "A", "S")
    with pytest.raises(LabelError, match="left/right exchanged") as err:
        labelmap_from_array(np.flip(data, axis=0), affine, version)
    assert "no built-in profile fits" in str(err.value)


def test_wholebody_volumes_with_a_synthetic_image(wholebody):
    """Its image is not in the snapshot: a uniform FF 0.1 image on its grid gives exact metrics."""
    data, affine = wholebody
    water = np.full(data.shape, 900.0, dtype=np.float32)
    dixon = dixon_from_arrays(water, water / 9.0, affine)
    lm = labelmap_from_array(data, affine, "musclemap_v1.2", reference=dixon)
    metrics = quantify(dixon, lm, groups=("psoas", "gluteal"), with_slices=False).metrics.set_index("group")
    voxel_ml = 1.5**3 / 1000.0
    counts = {n: int((data == i).sum()) for i, n in lm.profile.ids.items() if i in (5121, 5122, 6141, 6142)}
    assert metrics.loc["psoas", "volume_ml"] == pytest.approx(sum(counts.values()) * voxel_ml, rel=1e-9)
    gluteal_ids = [i for i, n in lm.profile.ids.items() if n.startswith("gluteus")]
    assert metrics.loc["gluteal", "volume_ml"] == pytest.approx(np.isin(data, gluteal_ids).sum() * voxel_ml, rel=1e-9)
    assert metrics.loc["gluteal", "ff_mean"] == pytest.approx(0.1, abs=1e-6)


def test_wholebody_map_converted_to_v14_ids_needs_the_v14_table(wholebody):
    """The same real map with its leg structures renumbered as v1.4 numbers them."""
    data, affine = wholebody
    v14 = data.copy()
    for side in (1, 2):  # tibia 8151 -> 8161, fibula 8161 -> 8171 (v1.4); muscles keep their ids
        v14[data == 8150 + side] = 8160 + side
        v14[data == 8160 + side] = 8170 + side
    lm = labelmap_from_array(v14, affine, "musclemap")
    assert lm.profile.name == "musclemap_v1.4" and lm.profile.ids[8161] == "tibia_left"
    assert labelmap_from_array(v14, affine, "auto").profile.name == "musclemap_v1.4"
    for older in ("musclemap_v1.0", "musclemap_v1.2"):
        with pytest.raises(LabelError, match=f"label ids 8171, 8172 are not in profile '{older}'.*'musclemap_v1.4'"):
            labelmap_from_array(v14, affine, older)
