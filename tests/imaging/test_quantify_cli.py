"""`myocomp quantify` end to end: real data, and every kind of bad input -> one line, exit 2."""

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.imaging.composition import gmm_fat_probability, quantify
from myocomp.imaging.dixon import dixon_from_arrays
from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.io import save_nifti

from .helpers import AUTO_L, SPINE, toy_volume, write_toy

EXAMPLE = "totalsegmentator_mr_example"


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_real_data_volumes_equal_an_independent_voxel_count(shared_data, tmp_path, capsys):
    image = shared_data / EXAMPLE / "example_mr_sm.nii.gz"
    seg = shared_data / EXAMPLE / "example_seg_mr.nii.gz"
    out = tmp_path / "m.parquet"
    code, _, err = run(["quantify", "--water", str(image), "--labels", str(seg), "--profile", "total_mr",
                        "--out", str(out), "--slices", str(tmp_path / "s.csv"), "--participant-id", "ts1"], capsys)
    assert code == 0, err
    m = pd.read_parquet(out).set_index("group")
    img = nib.load(seg)
    data = np.asarray(img.dataobj)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
    expected = {"autochthon_left": 46, "autochthon_right": 47, "iliopsoas_left": 48, "iliopsoas_right": 49}
    for name, label in expected.items():
        assert m.loc[name, "volume_ml"] == pytest.approx((data == label).sum() * voxel_ml, rel=1e-12)
        assert m.loc[name, "n_voxels"] == (data == label).sum()
    assert m.loc["back", "volume_ml"] == pytest.approx(np.isin(data, [46, 47]).sum() * voxel_ml)
    assert m.loc["psoas", "volume_ml"] == pytest.approx(np.isin(data, [48, 49]).sum() * voxel_ml)
    # single-contrast (no fat image) mode ran, and says it is approximate
    assert set(m["method"]) == {"single_contrast_gmm (approximate)"}
    # ff_mean is the mean fat posterior of the 2-class mixture fitted to the muscle voxels
    water = np.asarray(nib.load(image).dataobj, dtype=np.float32)
    post = gmm_fat_probability(water, water[np.isin(data, list(expected.values()))])
    for name, label in expected.items():
        assert m.loc[name, "ff_mean"] == pytest.approx(float(post[data == label].mean()), rel=1e-5)
    assert m["lmm"].isna().all()
    assert (m["participant_id"] == "ts1").all()
    slices = pd.read_csv(tmp_path / "s.csv")
    assert set(slices["muscle"]) == {"back", "psoas", *expected}
    # a group the label map does not contain is named as such (not a mixture-fit failure)
    code, _, err = run(["quantify", "--water", str(image), "--labels", str(seg), "--profile", "total_mr",
                        "--groups", "gluteal", "--out", str(tmp_path / "g.csv")], capsys)
    assert code == 2 and "none of the groups gluteal has any voxel" in err


def test_dixon_quantify_writes_all_formats(tmp_path, capsys):
    paths = write_toy(tmp_path)
    for suffix in (".csv", ".json", ".tsv"):
        out = tmp_path / f"m{suffix}"
        code, stdout, err = run(["quantify", "--water", str(paths["water"]), "--fat", str(paths["fat"]),
                                 "--labels", str(paths["labels"]), "--bmi", "24.5", "--out", str(out),
                                 "--provenance", str(tmp_path / "prov.json")], capsys)
        assert code == 0, err
        assert "back" in stdout
    water, fat, labels, affine = toy_volume(0)
    dixon = dixon_from_arrays(water, fat, affine)
    expected = quantify(dixon, labelmap_from_array(labels, affine, "mrsegmentator", reference=dixon), bmi=24.5)
    tables = {".csv": pd.read_csv(tmp_path / "m.csv"), ".tsv": pd.read_csv(tmp_path / "m.tsv", sep="\t"),
              ".json": pd.read_json(tmp_path / "m.json", orient="records")}
    for suffix, table in tables.items():
        assert set(expected.metrics.columns) <= set(table.columns), suffix  # the CLI adds QC flags
        for col in expected.metrics.columns:
            want = expected.metrics[col]
            if pd.api.types.is_numeric_dtype(want):
                np.testing.assert_allclose(table[col].to_numpy(float), want.to_numpy(float),
                                           rtol=1e-8 if suffix == ".json" else 1e-12,  # JSON: 10 decimals
                                           atol=1e-10, err_msg=f"{suffix} {col}")
            else:
                assert table[col].astype(str).tolist() == want.astype(str).tolist(), f"{suffix} {col}"
    m = pd.read_csv(tmp_path / "m.csv").set_index("group")
    assert m.loc["back", "lmm"] == pytest.approx(m.loc["back", "lean_volume_ml"] / 24.5)
    assert "fat_threshold" in (tmp_path / "prov.json").read_text()


def test_single_contrast_classifies_a_known_two_tissue_mixture(tmp_path, capsys):
    """Water-only image whose muscle voxels are drawn from two tissues with a known class map:
    the mixture's ff_mean of each muscle is its true share of the bright (fat) tissue."""
    _, _, labels, affine = toy_volume(0)
    rng = np.random.default_rng(3)
    share = {AUTO_L: 0.30, AUTO_L + 1: 0.10, AUTO_L + 2: 0.05, AUTO_L + 3: 0.20}
    is_fat = np.zeros(labels.shape, bool)
    for label, p in share.items():
        is_fat[labels == label] = rng.random(int((labels == label).sum())) < p
    image = np.where(is_fat, rng.normal(900.0, 40.0, labels.shape), rng.normal(300.0, 30.0, labels.shape))
    image[labels == 0] = 50.0
    save_nifti(image.astype(np.float32), affine, tmp_path / "t1.nii.gz")
    save_nifti(labels, affine, tmp_path / "labels.nii.gz")
    code, _, err = run(["quantify", "--water", str(tmp_path / "t1.nii.gz"), "--labels",
                        str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path / "m.csv")], capsys)
    assert code == 0, err
    m = pd.read_csv(tmp_path / "m.csv").set_index("group")
    names = {AUTO_L: "autochthon_left", AUTO_L + 1: "autochthon_right", AUTO_L + 2: "iliopsoas_left",
             AUTO_L + 3: "iliopsoas_right"}
    for label, name in names.items():
        truth = float(is_fat[labels == label].mean())
        assert m.loc[name, "ff_mean"] == pytest.approx(truth, abs=0.005), name
        assert m.loc[name, "intermat_volume_ml"] == pytest.approx(truth * m.loc[name, "volume_ml"], rel=0.02)


def _bad_inputs(tmp_path):
    paths = write_toy(tmp_path)
    water, fat, labels, affine = toy_volume(0)
    bad = {}
    (tmp_path / "text.nii.gz").write_text("this is not an image")
    bad["not a NIfTI"] = (dict(water=tmp_path / "text.nii.gz"), "not a NIfTI")
    raw = gzip.decompress(paths["water"].read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    bad["truncated"] = (dict(water=trunc), "truncated or corrupt")
    four_d = tmp_path / "4d.nii.gz"
    save_nifti(np.stack([water, water], axis=-1), affine, four_d)
    bad["4-D"] = (dict(water=four_d), "4 dimensions")
    small = tmp_path / "small_fat.nii.gz"
    save_nifti(fat[:-1], affine, small)
    bad["shape mismatch"] = (dict(fat=small), "shape")
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    moved = tmp_path / "moved_fat.nii.gz"
    save_nifti(fat, shifted, moved)
    bad["affine mismatch"] = (dict(fat=moved), "affine differs")
    other_grid = tmp_path / "labels_other.nii.gz"
    save_nifti(labels, np.diag([1.0, 1.0, 1.0, 1.0]), other_grid)
    bad["labels on another grid"] = (dict(labels=other_grid), "another grid")
    nan = tmp_path / "nan.nii.gz"
    save_nifti(np.full_like(water, np.nan), affine, nan)
    bad["all NaN"] = (dict(water=nan), "no finite voxel")
    empty = tmp_path / "empty_labels.nii.gz"
    save_nifti(np.where(labels == SPINE, SPINE, 0).astype(np.int16), affine, empty)
    bad["empty muscle labels"] = (dict(labels=empty), "empty muscle labels")
    bad["unknown profile"] = (dict(profile="nosuchtool"), "unknown label profile")
    bad["labels absent from profile"] = (dict(profile="musclemap"), "not in profile")
    bad["missing file"] = (dict(water=tmp_path / "missing.nii.gz"), "not found")
    assert AUTO_L in labels
    return paths, bad


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    paths, bad = _bad_inputs(tmp_path)
    assert len(bad) == 11
    for case, (override, message) in bad.items():
        args = {"water": paths["water"], "fat": paths["fat"], "labels": paths["labels"], "profile": "mrsegmentator"}
        args.update(override)
        out = tmp_path / f"out_{case.replace(' ', '_')}.csv"
        argv = ["quantify", "--out", str(out)] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
        code, stdout, err = run(argv, capsys)
        assert code == 2, f"{case}: exit {code}"
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"{case}: {err}"
        assert lines[0].startswith("error: ") and message in lines[0], f"{case}: {lines[0]}"
        assert "Traceback" not in err + stdout
        assert not out.exists(), f"{case}: output written"
    assert not list(tmp_path.glob(".*.tmp")), "temp files left behind"
