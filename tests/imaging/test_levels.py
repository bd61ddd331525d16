"""Vertebral levels, per-level metrics, coverage-normalised groups and the L3 SMI (issue 13)."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pytest

from myocomp.errors import LabelError
from myocomp.imaging.dixon import dixon_from_arrays, fat_fraction
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.imaging.labels import get_profile
from myocomp.imaging.levels import (
    find_levels,
    level_metrics,
    parse_level_group,
    slab_cdf,
    vertebra_name,
    vertebrae_from_array,
)
from myocomp.synth import vertebrae as vt
from myocomp.synth.phantom import make_phantom

NAMES = get_profile("mrsegmentator").ids
VNAMES = get_profile("vertebrae_mr").ids
LENGTH = 300.0  # mm: T12 to S1 complete


@lru_cache(maxsize=8)
def phantom(seed=0, voxel=(2.0, 2.0, 4.0), orientation="RAS", tilt=0.0):
    return make_phantom(
        seed, voxel_size_mm=voxel, length_mm=LENGTH, snr=None, bias=0.0, orientation=orientation,
        tilt_deg=tilt, supersample=3,
    )


def measure(ph, axis="world", level_groups=()):
    ff = fat_fraction(ph.water, ph.fat, noise_floor=0.0)
    dixon = dixon_from_arrays(ph.water, ph.fat, ph.affine)
    labels = labelmap_from_array(ph.labels, ph.affine, "mrsegmentator", reference=dixon)
    verts = vertebrae_from_array(ph.vertebrae, ph.affine, "vertebrae_mr", reference=dixon)
    ff = fat_fraction(dixon.water, dixon.fat, noise_floor=0.0)
    levels = find_levels(verts.data, verts.affine, VNAMES, axis=axis)
    table, groups = level_metrics(ff, labels.data, NAMES, dixon.affine, levels, level_groups=level_groups)
    return levels, table, groups


def truth_names(ph):
    z = ph.fine["z"]
    return [v["name"] for v in ph.truth["levels"]["vertebrae"] if z[0] < v["bottom_mm"] and v["top_mm"] < z[-1]]


CASES = [(0, (2.0, 2.0, 4.0), "RAS"), (2, (2.0, 2.0, 4.0), "LPS"), (3, (2.5, 2.5, 3.0), "PIL")]


def check_against_truth(ph, levels, table):
    dz = ph.truth["parameters"]["voxel_size_mm"][2]
    truth = {v["name"]: v for v in ph.truth["levels"]["vertebrae"]}
    found = [v.name for v in levels.vertebrae if v.complete]
    assert found == [n for n in truth_names(ph) if n in found]
    assert {"T12", "L1", "L2", "L3", "L4", "L5", "S1"} <= set(found)
    reported = [levels.get(n) for n in ("T12", "L1", "L2", "L3", "L4", "L5", "S1")]
    for v in reported:
        tolerance = dz if v.name == "S1" else 0.5 * dz + 0.25  # S1: approximated from L5's height
        assert abs(v.centre_mm - truth[v.name]["centre_mm"]) <= tolerance, v
        assert levels.get(v.name).label == truth[v.name]["label"]
    for a, b in itertools.pairwise(reported):  # boundaries: the middle of the true disc
        disc = truth[a.name]["disc_below_mm"]
        assert abs(levels.boundaries()[f"{a.name}/{b.name}"] - sum(disc) / 2) <= 0.5 * dz + 0.25
    fine = ph.fine
    for v in reported:
        true = vt.truth_csa(fine["anatomy"], fine["x"], fine["y"], v.centre_mm, 0.5)
        for entity, rel in (("back", 0.02), ("psoas", 0.02), ("autochthon_left", 0.03), ("iliopsoas_right", 0.03)):
            row = table.query("kind == 'slice' and level == @v.name and muscle == @entity").iloc[0]
            assert row.csa_cm2 == pytest.approx(true[entity]["csa_cm2"], rel=rel), (v.name, entity)
            assert row.lean_csa_cm2 == pytest.approx(true[entity]["lean_csa_cm2"], rel=0.03), (v.name, entity)
    for a, b in itertools.pairwise(reported):
        level = f"{a.name}-{b.name}"
        for entity, rel in (("back", 0.01), ("all", 0.01), ("psoas", 0.015)):
            true = vt.truth_between(fine["profile"], fine["z"], fine["voxel_ml"], entity, b.centre_mm, a.centre_mm)
            if true["volume_ml"] < 50:  # the tip of the psoas at T12: a few voxels of partial volume
                continue
            row = table.query("kind == 'span' and level == @level and muscle == @entity").iloc[0]
            assert row.volume_ml == pytest.approx(true["volume_ml"], rel=rel), (level, entity)
            assert row.lean_volume_ml == pytest.approx(true["lean_volume_ml"], rel=0.015), (level, entity)
            assert row.ff_mean == pytest.approx(true["ff_mean"], abs=0.005), (level, entity)


@pytest.mark.parametrize(("seed", "voxel", "orientation"), CASES)
def test_phantom_levels_and_metrics_match_truth(seed, voxel, orientation):
    ph = phantom(seed, voxel, orientation)
    levels, table, _ = measure(ph)
    check_against_truth(ph, levels, table)
    assert not table["qc_truncated_fov"].any()


def test_truth_spans_add_up_to_the_whole_volume_truth():
    ph = phantom()
    fine = ph.fine
    whole = vt.truth_between(fine["profile"], fine["z"], fine["voxel_ml"], "back", -1e9, 1e9)
    assert whole["volume_ml"] == pytest.approx(ph.truth["metrics"]["back"]["volume_ml"], rel=1e-9)
    assert whole["lean_volume_ml"] == pytest.approx(ph.truth["metrics"]["back"]["lean_volume_ml"], rel=1e-9)


def test_oblique_storage_gives_the_same_levels_and_metrics():
    flat = phantom(0)
    tilted = phantom(0, tilt=12.0)
    axis = tilted.affine[:3, 2] / np.linalg.norm(tilted.affine[:3, 2])  # the tilted body axis
    _, ref, _ = measure(flat)
    levels, table, _ = measure(tilted, axis=axis)
    check_against_truth(tilted, levels, table)
    np.testing.assert_allclose(table["csa_cm2"].to_numpy(float), ref["csa_cm2"].to_numpy(float), rtol=1e-6)
    np.testing.assert_allclose(table["volume_ml"].to_numpy(float), ref["volume_ml"].to_numpy(float), rtol=1e-6)
    spine, _, _ = measure(tilted, axis="spine")  # fitted to the vertebrae
    assert abs(spine.axis @ axis) > np.cos(np.radians(3.0))
    assert [v.name for v in spine.vertebrae] == [v.name for v in levels.vertebrae]
    truth = {v["name"]: v["centre_mm"] for v in tilted.truth["levels"]["vertebrae"]}
    for v in spine.vertebrae:
        if v.complete and v.name != "S1":
            assert abs(v.centre_mm - truth[v.name]) < 4.0
    world, _, _ = measure(tilted)  # world S is not the body axis here: still the right names
    assert [v.name for v in world.vertebrae if v.complete][:7] == [v.name for v in levels.vertebrae if v.complete][:7]


def test_slab_cdf_is_the_exact_box_fraction():
    widths = np.array([1.0, 0.5, 3.0])
    rng = np.random.default_rng(0)
    points = (rng.uniform(-0.5, 0.5, size=(200_000, 3)) * widths).sum(axis=1)
    for x in (-2.0, -1.0, 0.0, 0.3, 1.7):
        assert slab_cdf(np.array([x]), widths)[0] == pytest.approx(np.mean(points <= x), abs=3e-3)
    assert slab_cdf(np.array([0.5]), np.array([4.0, 0.0, 0.0]))[0] == pytest.approx(0.625)


def test_names_and_level_groups():
    assert vertebra_name("vertebrae_T12") == "T12"
    assert vertebra_name("sacrum") == "S1"
    assert vertebra_name("kidney_left") is None
    assert parse_level_group("back_L1_L5") == ("back", "L1", "L5")
    assert parse_level_group("back") is None
    with pytest.raises(LabelError, match="cranial"):
        parse_level_group("back_L5_L1")
    with pytest.raises(LabelError, match="unknown group"):
        parse_level_group("legs_L1_L5")
    assert VNAMES[1] == "sacrum" and VNAMES[2] == "vertebrae_L5" and VNAMES[6] == "vertebrae_L1"
    assert VNAMES[7] == "vertebrae_T12" and VNAMES[25] == "vertebrae_C1"


def test_missing_vertebra_is_an_error():
    ph = phantom()
    verts = ph.vertebrae.copy()
    verts[verts == VNAMES_ID["L3"]] = 0
    with pytest.raises(LabelError, match="L3 missing between L2 and L4"):
        find_levels(verts, ph.affine, VNAMES)


def test_unlabelled_vertebra_with_shifted_labels_is_an_error():
    ph = phantom()
    verts = ph.vertebrae.copy()
    out = np.zeros_like(verts)
    # L3 left unlabelled; everything below it named one level higher (the classic off-by-one)
    for name, new in (("T12", "T12"), ("L1", "L1"), ("L2", "L2"), ("L4", "L3"), ("L5", "L4")):
        out[verts == VNAMES_ID[name]] = VNAMES_ID[new]
    with pytest.raises(LabelError, match="L2 and L3 are .* apart.*unlabelled vertebra"):
        find_levels(out, ph.affine, VNAMES)


def test_merged_vertebrae_are_an_error():
    ph = phantom()
    verts = ph.vertebrae.copy()
    verts[verts == VNAMES_ID["L4"]] = VNAMES_ID["L3"]  # L3 and L4 under one label, L4 then absent
    with pytest.raises(LabelError, match="L3: its label covers 2 bodies"):
        find_levels(verts, ph.affine, VNAMES)
    k3 = np.flatnonzero((ph.vertebrae == VNAMES_ID["L3"]).any(axis=(0, 1)))
    k4 = np.flatnonzero((ph.vertebrae == VNAMES_ID["L4"]).any(axis=(0, 1)))
    footprint = ph.vertebrae[:, :, k3[k3.size // 2]] == VNAMES_ID["L3"]
    solid = ph.vertebrae.copy()  # one solid body from the bottom of L4 to the top of L3, no disc
    solid[(solid == VNAMES_ID["L3"]) | (solid == VNAMES_ID["L4"]) | (solid == VNAMES_ID["S1"])] = 0
    for k in range(k4[0], k3[-1] + 1):
        solid[:, :, k][footprint] = VNAMES_ID["L3"]
    solid[solid == VNAMES_ID["L5"]] = VNAMES_ID["L4"]
    with pytest.raises(LabelError, match="L3 is .* high, more than 1.6 x .* merged"):
        find_levels(solid, ph.affine, VNAMES)


def test_out_of_order_is_an_error():
    ph = phantom()
    verts = ph.vertebrae.copy()
    a, b = verts == VNAMES_ID["L2"], verts == VNAMES_ID["L3"]
    verts[a], verts[b] = VNAMES_ID["L3"], VNAMES_ID["L2"]
    with pytest.raises(LabelError, match="out of order"):
        find_levels(verts, ph.affine, VNAMES)


VNAMES_ID = {"S1": 1, **{f"L{i}": 7 - i for i in range(1, 6)}, **{f"T{i}": 19 - i for i in range(1, 13)}}


def crop(ph, z_lo, z_hi):
    """The RAS phantom's slices whose centres lie in [z_lo, z_hi] (mm): water, fat, labels, vertebrae, affine."""
    z = ph.affine[2, 3] + ph.affine[2, 2] * np.arange(ph.water.shape[2])
    k = np.flatnonzero((z >= z_lo) & (z <= z_hi))
    affine = ph.affine.copy()
    affine[:3, 3] = ph.affine[:3, :3] @ [0, 0, k[0]] + ph.affine[:3, 3]
    part = np.s_[:, :, k[0] : k[-1] + 1]
    return ph.water[part], ph.fat[part], ph.labels[part], ph.vertebrae[part], affine


def run_quantify(water, fat, labels, verts, affine, groups=("back", "psoas"), height_cm=None):
    from myocomp.imaging.composition import quantify

    dixon = dixon_from_arrays(water, fat, affine)
    labelmap = labelmap_from_array(labels, affine, "mrsegmentator", reference=dixon)
    vmap = vertebrae_from_array(verts, affine, "vertebrae_mr", reference=dixon) if verts is not None else None
    return quantify(dixon, labelmap, groups=groups, vertebrae=vmap, height_cm=height_cm, noise_floor=0.0)


def test_cropped_phantom_gives_the_same_coverage_normalised_back_volume():
    ph = phantom()
    truth = {v["name"]: v for v in ph.truth["levels"]["vertebrae"]}
    lo, hi = truth["L4"]["disc_below_mm"][0] + 4.5, truth["L2"]["top_mm"] + 4.5  # mid-disc L4/L5 to mid-disc L1/L2
    groups = ("back", "psoas", "back_L2_L4")
    full = run_quantify(ph.water, ph.fat, ph.labels, ph.vertebrae, ph.affine, groups).metrics.set_index("group")
    cut = run_quantify(*crop(ph, lo, hi), groups).metrics.set_index("group")
    for column in ("volume_ml", "lean_volume_ml", "intermat_volume_ml", "ff_mean"):
        assert cut.loc["back_L2_L4", column] == pytest.approx(full.loc["back_L2_L4", column], rel=0.01), column
    assert not cut.loc["back_L2_L4", "qc_truncated_fov"]
    assert not full.loc["back_L2_L4", "qc_truncated_fov"]
    assert cut.loc["back", "volume_ml"] < 0.7 * full.loc["back", "volume_ml"]
    assert cut.loc["back", "qc_truncated_fov"] and cut.loc["autochthon_left", "qc_truncated_fov"]
    # the whole-FOV phantom's muscles also run off its ends; the span rows do not
    assert full.loc["back", "qc_truncated_fov"]
    vertebrae_only = {"L2", "L3", "L4"}
    true = vt.truth_between(ph.fine["profile"], ph.fine["z"], ph.fine["voxel_ml"], "back",
                            truth["L4"]["bottom_mm"], truth["L2"]["top_mm"])
    assert cut.loc["back_L2_L4", "volume_ml"] == pytest.approx(true["volume_ml"], rel=0.03)
    assert vertebrae_only  # L1 and L5 are not in the crop:
    cropped = run_quantify(*crop(ph, lo, hi), ("back_L1_L5",)).metrics.set_index("group")
    assert np.isnan(cropped.loc["back_L1_L5", "volume_ml"]) and cropped.loc["back_L1_L5", "qc_truncated_fov"]


def test_smi_l3_and_its_provenance():
    ph = phantom()
    result = run_quantify(ph.water, ph.fat, ph.labels, ph.vertebrae, ph.affine, height_cm=175.0)
    l3 = result.levels.query("kind == 'slice' and level == 'L3' and muscle == 'all'").iloc[0]
    smi = result.metrics["smi_l3_cm2_m2"]
    assert smi.nunique() == 1
    assert smi.iloc[0] == pytest.approx(l3.csa_cm2 / 1.75**2)
    centre = next(v["centre_mm"] for v in result.provenance["levels"]["vertebrae"] if v["vertebra"] == "L3")
    true = vt.truth_csa(ph.fine["anatomy"], ph.fine["x"], ph.fine["y"], centre, 0.5)
    assert smi.iloc[0] * 1.75**2 == pytest.approx(true["all"]["csa_cm2"], rel=0.02)
    info = result.provenance["smi"]
    assert info["partial"] and "partial SMI" in info["note"]
    assert info["muscles"] == ["autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"]
    no_height = run_quantify(ph.water, ph.fat, ph.labels, ph.vertebrae, ph.affine)
    assert no_height.metrics["smi_l3_cm2_m2"].isna().all()
    with pytest.raises(Exception, match="height"):
        run_quantify(ph.water, ph.fat, ph.labels, ph.vertebrae, ph.affine, height_cm=17.5)


def test_level_group_without_vertebrae_is_an_error():
    ph = phantom()
    with pytest.raises(LabelError, match="needs a vertebra label map"):
        run_quantify(ph.water, ph.fat, ph.labels, None, ph.affine, ("back_L1_L5",))


def test_quantify_cli_writes_levels_level_groups_and_smi(tmp_path, capsys):
    import pandas as pd

    from myocomp.cli import main
    from myocomp.synth.phantom import write_phantom

    ph = phantom(2, (2.0, 2.0, 4.0), "LPS")
    paths = write_phantom(tmp_path / "ph", phantom=ph)
    assert paths["vertebrae"].is_file() and paths["discs"].is_file()
    base = ["quantify", "--water", str(paths["water"]), "--fat", str(paths["fat"]), "--labels", str(paths["labels"])]
    out, levels = tmp_path / "m.csv", tmp_path / "levels.csv"
    code = main([*base, "--out", str(out), "--vertebrae", str(paths["vertebrae"]), "--levels", str(levels),
                 "--groups", "back,psoas,back_L1_L5", "--height-cm", "180", "--provenance", str(tmp_path / "p.json")])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(levels)
    assert set(table.query("kind == 'slice'")["level"]) >= {"T12", "L1", "L2", "L3", "L4", "L5", "S1"}
    assert {"L3-L4", "L4-L5", "L5-S1"} <= set(table.query("kind == 'span'")["level"])
    metrics = pd.read_csv(out).set_index("group")
    assert metrics.loc["back_L1_L5", "volume_ml"] < metrics.loc["back", "volume_ml"]
    assert not metrics.loc["back_L1_L5", "qc_truncated_fov"] and metrics.loc["back", "qc_truncated_fov"]
    l3 = table.query("kind == 'slice' and level == 'L3' and muscle == 'all'")["csa_cm2"].iloc[0]
    assert metrics["smi_l3_cm2_m2"].iloc[0] == pytest.approx(l3 / 1.8**2)
    # bad inputs: one line, exit 2, nothing written
    verts = np.asarray(__import__("nibabel").load(paths["vertebrae"]).dataobj).copy()
    verts[verts == VNAMES_ID["L3"]] = 0
    from myocomp.io import save_nifti

    save_nifti(verts, __import__("nibabel").load(paths["vertebrae"]).affine, tmp_path / "missing.nii.gz")
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    code = main([*base, "--out", str(bad), "--vertebrae", str(tmp_path / "missing.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and not bad.exists()
    assert err.startswith("error: ") and "missing.nii.gz" in err and "L3 missing between L2 and L4" in err
    assert len(err.strip().splitlines()) == 1
    code = main([*base, "--out", str(bad), "--levels", str(tmp_path / "l.csv")])
    assert code == 2 and "--levels needs --vertebrae" in capsys.readouterr().err
    code = main([*base, "--out", str(bad), "--groups", "back_L1_L5"])
    assert code == 2 and "needs a vertebra label map" in capsys.readouterr().err


def test_study_joins_a_coverage_normalised_group():
    import pandas as pd

    from myocomp.study.phenotypes import StudyConfig, join_metrics, validate_phenotypes
    from myocomp.synth.cohort import simulate_cohort

    ph = phantom()
    one = run_quantify(ph.water, ph.fat, ph.labels, ph.vertebrae, ph.affine, ("back", "back_L1_L5")).metrics
    pheno = validate_phenotypes(simulate_cohort(50, seed=1).data).iloc[:3]
    pheno = pheno.drop(columns=[c for c in pheno.columns if c.endswith("_ml") or c == "group"], errors="ignore")
    metrics = pd.concat([one.assign(participant_id=pid) for pid in pheno["participant_id"]], ignore_index=True)
    assert StudyConfig(group="back_L1_L5").group == "back_L1_L5"
    joined, report = join_metrics(pheno, metrics, group="back_L1_L5")
    restricted = one.set_index("group").loc["back_L1_L5", "lean_volume_ml"]
    assert report.n_joined == 3 and np.allclose(joined["lean_volume_ml"], restricted)
    assert not np.isclose(restricted, one.set_index("group").loc["back", "lean_volume_ml"])


def test_stray_voxels_are_ignored_and_noted():
    ph = phantom()
    verts = ph.vertebrae.copy()
    clean = find_levels(verts, ph.affine, VNAMES)
    k = np.flatnonzero((verts == VNAMES_ID["L1"]).any(axis=(0, 1)))
    verts[10:12, 10:12, k[0] - 20] = VNAMES_ID["L3"]  # a few voxels of "L3" far from L3
    noisy = find_levels(verts, ph.affine, VNAMES)
    assert noisy.get("L3").centre_mm == clean.get("L3").centre_mm
    assert any("L3: 4 stray voxels" in n for n in noisy.notes)
