"""`myocomp quantify` end to end: real data, and every kind of bad input -> one line, exit 2."""

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
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
    assert m["ff_mean"].between(0, 1).all() and m["lmm"].isna().all()
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
        assert out.exists() and "back" in stdout
    m = pd.read_csv(tmp_path / "m.csv").set_index("group")
    assert m.loc["back", "lmm"] == pytest.approx(m.loc["back", "lean_volume_ml"] / 24.5)
    assert "fat_threshold" in (tmp_path / "prov.json").read_text()


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
