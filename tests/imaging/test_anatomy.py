"""Must show: a label map read with the wrong built-in profile is refused, naming the right one.

For every pair of built-in profiles (A, B) whose id ranges overlap and whose muscles the lumbar
phantom contains for A: a phantom written with A's ids and read as B is refused with a message
naming A (unless B gives every id of the map A's name, in which case the result is identical);
read as A or ``auto`` it is accepted and matches the phantom's truth. A left/right-exchanged map
is refused. Plus: the ambiguity of ``auto``, ``--skip-anatomy-check`` and the provenance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from myocomp.cli import main
from myocomp.errors import LabelError
from myocomp.imaging.anatomy import check_anatomy, label_geometry
from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.labels import builtin_profiles, get_profile
from myocomp.io import save_nifti
from myocomp.synth.phantom import make_phantom, write_phantom

PROFILES = {p.name: p for p in builtin_profiles()}
SMALL = dict(voxel_size_mm=(2.5, 2.5, 5.0), snr=20.0, n_slices=16, supersample=1)


def _writable(name: str) -> bool:
    try:
        make_phantom(0, profile=name, voxel_size_mm=(10.0, 10.0, 20.0), n_slices=2, supersample=1)
    except LabelError:
        return False
    return True


WRITABLE = [name for name in PROFILES if _writable(name)]


@pytest.fixture(scope="module", params=WRITABLE)
def phantom_of(request):
    return request.param, make_phantom(3, profile=request.param, **SMALL)


def _dixon(ph):
    return dixon_from_arrays(ph.water, ph.fat, ph.affine, in_phase=ph.in_phase)


def _metrics(dixon, labelmap):
    return quantify(dixon, labelmap, with_slices=False).metrics.set_index("group")


def _assert_truth(metrics, truth, label):
    for group in ("back", "psoas"):
        true = truth["metrics"][group]
        assert metrics.loc[group, "volume_ml"] == pytest.approx(true["volume_ml"], rel=0.01), label
        assert metrics.loc[group, "lean_volume_ml"] == pytest.approx(true["lean_volume_ml"], rel=0.02), label
        assert abs(metrics.loc[group, "ff_mean"] - true["ff_mean"]) <= 0.01, label


def _overlap(a, b) -> bool:
    return min(a.ids) <= max(b.ids) and min(b.ids) <= max(a.ids)


def test_phantoms_exist_for_each_tool_family():
    assert {"mrsegmentator", "totalsegmentator_mr", "totalsegmentator_mr_56", "totalvibeseg",
            "musclemap_v1.0", "musclemap_v1.2", "musclemap_v1.4"} <= set(WRITABLE)


def test_phantom_read_as_its_profile_or_auto_matches_truth(phantom_of):
    name, ph = phantom_of
    dixon = _dixon(ph)
    own = labelmap_from_array(ph.labels, ph.affine, name, reference=dixon)
    auto = labelmap_from_array(ph.labels, ph.affine, "auto", reference=dixon)
    assert own.anatomy["assessed"] == ["side", "back_posterior", "psoas_anterior"]
    assert name in auto.anatomy["equivalent_profiles"]
    assert all(auto.profile.ids[int(i)] == own.profile.ids[int(i)] for i in own.present_ids())
    _assert_truth(_metrics(dixon, own), ph.truth, name)
    _assert_truth(_metrics(dixon, auto), ph.truth, f"{name} auto")


def test_phantom_read_with_another_profile_is_refused_naming_its_own(phantom_of):
    name, ph = phantom_of
    a = PROFILES[name]
    dixon = _dixon(ph)
    present = labelmap_from_array(ph.labels, ph.affine, name, reference=dixon).present_ids()
    reference = _metrics(dixon, labelmap_from_array(ph.labels, ph.affine, name, reference=dixon))
    tried = refused = 0
    for b in PROFILES.values():
        if b.name == name or not _overlap(a, b):
            continue
        tried += 1
        if all(b.ids.get(int(i)) == a.ids[int(i)] for i in present):  # same reading of this map
            same = _metrics(dixon, labelmap_from_array(ph.labels, ph.affine, b, reference=dixon))
            assert same.equals(reference), (name, b.name)
            continue
        with pytest.raises(LabelError) as err:
            labelmap_from_array(ph.labels, ph.affine, b, reference=dixon)
        assert f"'{name}'" in str(err.value), (name, b.name, str(err.value))
        refused += 1
    assert tried >= 1 and (refused >= 2 or name.startswith("musclemap"))


def test_total_mr_50_and_56_are_told_apart_by_anatomy():
    """Both id sets fit; only the anatomy separates them (the confusion of issue 8)."""
    for written, read in (("totalsegmentator_mr", "totalsegmentator_mr_56"), ("totalsegmentator_mr_56", "totalsegmentator_mr")):
        ph = make_phantom(1, profile=written, **SMALL)
        with pytest.raises(LabelError, match=f"does not fit profile '{read}'.*fits the built-in profile '{written}'"):
            labelmap_from_array(ph.labels, ph.affine, read, reference=_dixon(ph))


@pytest.mark.parametrize("name", ["mrsegmentator", "totalsegmentator_mr", "musclemap_v1.4"])
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIL"])
def test_left_right_exchanged_map_is_refused(name, orientation):
    ph = make_phantom(2, profile=name, orientation=orientation, **SMALL)
    dixon = _dixon(ph)
    labelmap_from_array(ph.labels, ph.affine, name, reference=dixon)  # any storage order is fine
    flipped = np.flip(ph.labels, axis=orientation.upper().find("R") if "R" in orientation else orientation.find("L"))
    with pytest.raises(LabelError, match="left/right exchanged") as err:
        labelmap_from_array(flipped, ph.affine, name, reference=dixon)
    assert "no built-in profile fits" in str(err.value)
    with pytest.raises(LabelError, match="no built-in profile fits"):
        labelmap_from_array(flipped, ph.affine, "auto", reference=dixon)


def test_exchanged_side_suffixes_alone_are_refused():
    """Same voxels, but each muscle's left and right ids swapped (a mislabelled table)."""
    ph = make_phantom(0, profile="mrsegmentator", **SMALL)
    swapped = ph.labels.copy()
    for left, right in ((31, 32), (33, 34)):
        swapped[ph.labels == left], swapped[ph.labels == right] = right, left
    with pytest.raises(LabelError, match="autochthon, iliopsoas have '_right' to the left"):
        labelmap_from_array(swapped, ph.affine, "mrsegmentator", reference=_dixon(ph))


def test_back_muscles_anterior_are_refused_by_the_body_outline():
    """Without spine or psoas labels the body outline of the image is the reference."""
    ph = make_phantom(0, profile="mrsegmentator", **SMALL)
    back_only = np.where(np.isin(ph.labels, (31, 32)), ph.labels, 0)
    dixon = _dixon(ph)
    assert labelmap_from_array(back_only, ph.affine, "mrsegmentator", reference=dixon).anatomy["assessed"] == ["side", "back_posterior"]
    mirrored = np.flip(back_only, axis=1)  # dorsal <-> ventral
    with pytest.raises(LabelError, match="autochthon_left, autochthon_right are not dorsal of the body outline centre"):
        labelmap_from_array(mirrored, ph.affine, "mrsegmentator", reference=dixon)
    lm = labelmap_from_array(mirrored, ph.affine, "mrsegmentator", reference=dixon, anatomy_check=False)
    assert lm.anatomy == {"requested": "mrsegmentator", "profile": "mrsegmentator", "anatomy_check": False}


def test_auto_is_ambiguous_when_different_tables_fit():
    """Ids 1-3 in a plausible layout: tissue types, body composition and thigh tables all fit."""
    labels = np.zeros((40, 20, 10), dtype=np.int16)
    labels[5:15, 5:10, 2:8] = 1
    labels[25:35, 5:10, 2:8] = 2
    labels[15:25, 12:18, 2:8] = 3
    affine = np.diag([3.0, 3.0, 4.0, 1.0])  # 1 on the subject's left, 2 on the right
    affine[:3, 3] = [-60.0, -30.0, 0.0]
    with pytest.raises(LabelError, match="ambiguous") as err:
        labelmap_from_array(labels, affine, "auto")
    for name in ("totalsegmentator_tissue_types_mr", "mrsegmentator_bodycomp", "totalsegmentator_thigh_shoulder_mr"):
        assert name in str(err.value)
    lm = labelmap_from_array(labels, affine, "totalsegmentator_tissue_types_mr")
    assert lm.profile.ids[2] == "torso_fat" and lm.profile.ids[1] == "subcutaneous_fat"


def test_geometry_is_world_coordinates_of_the_labels():
    labels = np.zeros((30, 30, 30), dtype=np.int16)
    labels[2:6, 10:20, 0:30] = 7
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 0.0, 5.0]
    g = label_geometry(labels, affine)
    assert g.ids.tolist() == [7]
    assert g.centroid[0] == pytest.approx([-10 + 2 * 3.5, 2 * 14.5, 5 + 2 * 14.5])
    assert g.lo[0] == pytest.approx([-6.0, 20.0, 5.0]) and g.hi[0] == pytest.approx([0.0, 38.0, 63.0])
    assert g.volume_ml[0] == pytest.approx(4 * 10 * 30 * 8 / 1000)
    coarse = label_geometry(labels, affine, max_voxels=1000)
    assert coarse.stride == 3 and np.abs(coarse.centroid - g.centroid).max() < 3.0


def test_check_reports_what_it_assessed():
    ph = make_phantom(0, profile="totalvibeseg", **SMALL)
    g = label_geometry(ph.labels, ph.affine)
    result = check_anatomy(g, get_profile("totalvibeseg"))
    assert result.ok and result.to_dict()["findings"] == []
    assert get_profile("totalvibeseg").ids[65] == "subcutaneous_fat"


def test_quantify_cli_auto_skip_and_provenance(tmp_path, capsys):
    paths = write_phantom(tmp_path / "ph", seed=0, profile="totalsegmentator_mr_56", **SMALL)
    common = ["quantify", "--water", str(paths["water"]), "--fat", str(paths["fat"]),
              "--labels", str(paths["labels"])]
    assert main([*common, "--profile", "totalsegmentator_mr", "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "totalsegmentator_mr_56" in err and "2.2.1-2.4.0" in err
    assert not (tmp_path / "m.csv").exists()
    prov = tmp_path / "p.json"
    assert main([*common, "--profile", "auto", "--out", str(tmp_path / "m.csv"), "--provenance", str(prov)]) == 0
    check = json.loads(prov.read_text())["parameters"]["label_check"]
    assert check["requested"] == "auto" and check["profile"] == "totalsegmentator_mr_56"
    capsys.readouterr()
    assert main([*common, "--profile", "totalsegmentator_mr", "--skip-anatomy-check",
                 "--out", str(tmp_path / "wrong.csv"), "--provenance", str(prov)]) == 0
    assert json.loads(prov.read_text())["parameters"]["label_check"]["anatomy_check"] is False


def test_label_maps_from_files_keep_checks(tmp_path):
    ph = make_phantom(0, profile="mrsegmentator", **SMALL)
    path = save_nifti(np.flip(ph.labels, axis=0).astype(np.int16), ph.affine, tmp_path / "l.nii.gz")
    from myocomp.imaging.labelmap import load_labels

    with pytest.raises(LabelError, match=str(path)):
        load_labels(path, "mrsegmentator")
    assert load_labels(path, "mrsegmentator", anatomy_check=False).anatomy["anatomy_check"] is False


def test_skip_option_is_documented_in_quantify_and_batch(capsys):
    for command in ("quantify", "batch"):
        assert main([command, "--help"]) == 0
        assert "--skip-anatomy-check" in capsys.readouterr().out


def _disc(x, y, cx, cy, r):
    return (x - cx) ** 2 + (y - cy) ** 2 <= r**2


def _toy(kind: str):
    """Axial toy anatomy (3 x 3 x 5 mm, 100 x 80 x 6 voxels, world centre 0) with an image."""
    shape = (100, 80, 6)
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    affine[:3, 3] = [-148.5, -118.5, 0.0]
    x, y = np.meshgrid(affine[0, 0] * np.arange(shape[0]) + affine[0, 3],
                       affine[1, 1] * np.arange(shape[1]) + affine[1, 3], indexing="ij")
    lab = np.zeros(shape[:2], dtype=np.int16)
    if kind == "thigh":  # two thighs at x = -/+ 100; 1/2 quadriceps, 3/4 adductors, 5/6 hamstrings, 7/8 sartorius
        body = _disc(x, y, -100, 0, 60) | _disc(x, y, 100, 0, 60)
        for side, cx in ((0, -100), (1, 100)):
            inward = 1 if cx < 0 else -1
            for k, (dx, dy, r) in enumerate(((0, 25, 22), (30, -5, 16), (0, -35, 20), (28, 35, 7))):
                lab[_disc(x, y, cx + inward * dx, dy, r)] = 1 + 2 * k + side
    else:
        body = (x / 145.0) ** 2 + (y / 110.0) ** 2 <= 1
        lab[body & ((x / 125.0) ** 2 + (y / 92.0) ** 2 > 1)] = 1  # subcutaneous fat ring
        lab[(x / 70.0) ** 2 + ((y - 10) / 50.0) ** 2 <= 1] = 2  # visceral / torso fat
        blobs = ({3: [(-40, -70, 22), (40, -70, 22), (-45, -15, 14), (45, -15, 14)]} if kind == "tissue" else
                 {3: [(-40, 85, 10)], 4: [(40, 85, 10)], 5: [(-105, 20, 12)], 6: [(105, 20, 12)],
                  7: [(-65, -55, 14)], 8: [(65, -55, 14)]})
        for label, discs in blobs.items():
            for cx, cy, r in discs:
                lab[_disc(x, y, cx, cy, r)] = label
    labels = np.repeat(lab[:, :, None], shape[2], axis=2)
    water = np.repeat(np.where(body, 900.0, 0.0)[:, :, None], shape[2], axis=2).astype(np.float32)
    return labels, affine, dixon_from_arrays(water, water / 9.0, affine)


TOYS = {"tissue": "totalsegmentator_tissue_types_mr", "bodycomp": "mrsegmentator_bodycomp",
        "thigh": "totalsegmentator_thigh_shoulder_mr"}


@pytest.mark.parametrize("kind", list(TOYS))
def test_tissue_bodycomp_and_thigh_maps_are_told_apart_with_the_image(kind):
    """The profiles the lumbar phantom cannot write, on toy anatomy with a body outline."""
    labels, affine, dixon = _toy(kind)
    name = TOYS[kind]
    own = labelmap_from_array(labels, affine, name, reference=dixon)
    assert labelmap_from_array(labels, affine, "auto", reference=dixon).profile.name == name
    metrics = quantify(dixon, own, groups=("all",), with_slices=False).metrics.set_index("group")
    expected_ml = np.isin(labels, list(own.profile.muscle_ids())).sum() * 45.0 / 1000.0
    assert metrics.loc["all", "volume_ml"] == pytest.approx(expected_ml)
    assert metrics.loc["all", "ff_mean"] == pytest.approx(0.1)
    present = own.present_ids()
    refused = 0
    for b in PROFILES.values():
        if b.name == name or not _overlap(PROFILES[name], b):
            continue
        if all(b.ids.get(int(i)) == own.profile.ids[int(i)] for i in present):
            continue
        with pytest.raises(LabelError) as err:
            labelmap_from_array(labels, affine, b, reference=dixon)
        assert f"'{name}'" in str(err.value), (b.name, str(err.value))
        refused += 1
    assert refused >= 3
