"""The manifest column ``grid_from``: batch's ``quantify --grid-from`` (issue 8, "headers that differ").

A participant whose fat header differs slightly from the water header (a lost origin, a rounded
voxel size) fails without the column, with a reason naming the column; with it, it gives the
metrics of ``myocomp quantify --grid-from`` on the same files, records the declared grid, and a
changed value recomputes the participant on ``--resume``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.imaging._nib import nib
from myocomp.io import save_nifti
from myocomp.pipeline.manifest import ManifestRowError, read_manifest
from myocomp.pipeline.task import BatchParams, process_participant
from myocomp.synth.phantom import write_phantom

from .cohort import PHANTOM

HEADER = "participant_id,water,fat,labels,profile,bmi,grid_from\n"
#: Metric columns compared between batch and quantify (the batch adds QC columns).
COMPARED = ["n_voxels", "volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml", "lmm"]


@pytest.fixture()
def shifted(tmp_path: Path) -> Path:
    """A phantom whose fat image carries another origin (2.5 mm) and voxel size (+2e-5 mm)."""
    paths = write_phantom(tmp_path / "P", seed=4, **PHANTOM)
    img = nib.load(paths["fat"])
    affine = img.affine.copy()
    affine[:3, 3] += (2.5, -1.0, 0.5)
    affine[0, 0] *= 1 + 5e-6
    save_nifti(np.asanyarray(img.dataobj), affine, tmp_path / "P" / "fat_shifted.nii.gz")
    return tmp_path


def manifest(root: Path, *grid_from: str) -> Path:
    """One row per value of ``grid_from`` (participant ids G0, G1, ...) on the shifted phantom."""
    rows = [f"G{i},P/water.nii.gz,P/fat_shifted.nii.gz,P/labels.nii.gz,mrsegmentator,25,{g}\n"
            for i, g in enumerate(grid_from)]
    path = root / "m.csv"
    path.write_text(HEADER + "".join(rows))
    return path


def quantify_grid_from(root: Path, grid_from: str, out: Path) -> pd.DataFrame:
    code = main(["quantify", "--water", str(root / "P/water.nii.gz"), "--fat", str(root / "P/fat_shifted.nii.gz"),
                 "--labels", str(root / "P/labels.nii.gz"), "--bmi", "25", "--grid-from", grid_from,
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    return pd.read_csv(out).set_index("group")


def participant_metrics(out: Path, pid: str) -> pd.DataFrame:
    return pd.read_parquet(out / "participants" / pid / "metrics.parquet").set_index("group")


def prov(out: Path, pid: str) -> dict:
    return json.loads((out / "participants" / pid / "provenance.json").read_text())


def test_batch_grid_from_fails_without_and_equals_quantify_with_it(shifted: Path, capsys) -> None:
    m = manifest(shifted, "", "water", "fat", "Fat", "in_phase")
    out = shifted / "out"
    assert main(["batch", str(m), "--out", str(out), "--no-progress", "--qc-images", "none"]) == 0
    capsys.readouterr()
    errors = pd.read_csv(out / "errors.csv").set_index("participant_id")
    assert sorted(errors.index) == ["G0", "G3", "G4"]
    assert errors.loc["G0", "stage"] == "load"
    reason = errors.loc["G0", "reason"]
    assert "fat_shifted.nii.gz: fat image affine differs from the water image's" in reason
    assert "declare it with the manifest column grid_from (water or fat)" in reason
    assert "--grid-from" not in reason
    assert errors.loc["G3", "stage"] == "manifest"
    assert "grid_from: 'Fat' is not one of water, fat, in_phase, opposed_phase" in errors.loc["G3", "reason"]
    assert errors.loc["G4", "stage"] == "manifest"
    assert "grid_from: in_phase, but the row has no in_phase image" in errors.loc["G4", "reason"]

    for pid, grid_from, replaced in (("G1", "water", {"fat"}), ("G2", "fat", {"water", "label map"})):
        expected = quantify_grid_from(shifted, grid_from, shifted / f"{grid_from}.csv")
        got = participant_metrics(out, pid)
        assert list(got.index) == list(expected.index)
        for column in COMPARED:
            np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float),
                                       rtol=1e-12, err_msg=f"{pid} {column}")  # fmt: skip
        record = prov(out, pid)
        assert record["parameters"]["grid_from"] == grid_from
        grid = record["quantify"]["grid"]
        assert grid["from"] == grid_from and set(grid["replaced"]) == replaced
        assert "origin by (" in grid["replaced"]["water" if grid_from == "fat" else "fat"]["difference"]
    # the declared grids differ by 2.7 mm: same voxels, so the same volumes and fat fractions
    np.testing.assert_allclose(participant_metrics(out, "G1")["ff_mean"], participant_metrics(out, "G2")["ff_mean"])


def test_label_map_under_grid_from_is_checked_like_quantify(shifted: Path, capsys) -> None:
    img = nib.load(shifted / "P/labels.nii.gz")
    flipped = img.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    save_nifti(np.asanyarray(img.dataobj), flipped, shifted / "P" / "labels.nii.gz")
    man = read_manifest(manifest(shifted, "water"))
    outcome = process_participant(man.participants[0], shifted / "out", BatchParams(), "r")
    assert (outcome.status, outcome.stage) == ("failed", "labels")
    assert "grid_from water: label map axes" in outcome.reason and "--grid-from" not in outcome.reason


def test_changed_grid_from_recomputes_on_resume(shifted: Path) -> None:
    out, params = shifted / "out", BatchParams(qc_images="none")
    (p,) = read_manifest(manifest(shifted, "water")).participants
    assert process_participant(p, out, params, "r1").status == "done"
    assert process_participant(p, out, params, "r2", resume=True).status == "skipped"
    (p,) = read_manifest(manifest(shifted, "fat")).participants
    assert process_participant(p, out, params, "r3", resume=True).status == "done"
    assert prov(out, "G0")["quantify"]["grid"]["from"] == "fat"
    assert process_participant(p, out, params, "r4", resume=True).status == "skipped"


def test_an_empty_grid_from_keeps_earlier_results_current(tmp_path: Path) -> None:
    """Results made before the column existed are not recomputed because it was added empty."""
    write_phantom(tmp_path / "P", seed=1, **PHANTOM)
    row = "G0,P/water.nii.gz,P/fat.nii.gz,P/labels.nii.gz,mrsegmentator,25"
    (tmp_path / "old.csv").write_text(HEADER.replace(",grid_from", "") + row + "\n")
    (tmp_path / "new.csv").write_text(HEADER + row + ",\n")
    out, params = tmp_path / "out", BatchParams(qc_images="none")
    (old,) = read_manifest(tmp_path / "old.csv").participants
    assert process_participant(old, out, params, "r1").status == "done"
    assert "grid_from" not in prov(out, "G0")["parameters"]
    (new,) = read_manifest(tmp_path / "new.csv").participants
    assert process_participant(new, out, params, "r2", resume=True).status == "skipped"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("A,,,dcm,,water", "grid_from: goes with water + fat NIfTI images only, not with dicom_dir"),
        ("A,,,,st,fat", "grid_from: goes with water + fat NIfTI images only, not with stations"),
        ("A,w.nii.gz,f.nii.gz,,,T1", "grid_from: 'T1' is not one of water, fat, in_phase, opposed_phase"),
        ("A,w.nii.gz,f.nii.gz,,,opposed_phase", "grid_from: opposed_phase, but the row has no opposed_phase"),
    ],
)
def test_unusable_grid_from_is_that_rows_manifest_error(tmp_path: Path, row: str, reason: str) -> None:
    (tmp_path / "dcm").mkdir()
    (tmp_path / "st").mkdir()
    for name in ("w.nii.gz", "f.nii.gz", "st/water_1.nii.gz", "st/fat_1.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text(f"participant_id,water,fat,dicom_dir,stations,grid_from\n{row}\nB,w.nii.gz,f.nii.gz,,,\n")
    man = read_manifest(m)
    assert man.ids == ["B"] and man.participants[0].grid_from is None
    (error,) = man.row_errors
    assert error["participant_id"] == "A" and error["stage"] == "manifest"
    assert error["reason"].startswith("line 2: ") and reason in error["reason"]
    with pytest.raises(ManifestRowError, match="A: line 2: grid_from: "):
        read_manifest(m, strict=True)


def test_real_tum_lumbar_row_with_grid_from_fat_equals_quantify(shared_data: Path, tmp_path: Path, capsys) -> None:
    """The real case (``tum_lumbar``: the water header lost its origin): refused without the column,
    with ``grid_from = fat`` the batch row gives ``quantify --grid-from fat``'s metrics."""
    folder = shared_data / "real" / "tum_lumbar"
    water, fat = folder / "TUM01_water_img_img_L2-L5.nii.gz", folder / "TUM01_fat_img_img_L2-L5.nii.gz"
    labels = folder / "TUM01_fat_manual_label_segmentation_L2-L5.nii.gz"
    profile = tmp_path / "tum.json"
    profile.write_text(json.dumps({"1": "erector_spinae_right", "2": "multifidus_right",
                                   "3": "multifidus_left", "4": "erector_spinae_left"}))
    m = tmp_path / "m.csv"
    m.write_text(HEADER + "".join(f"{pid},{water},{fat},{labels},{profile},25,{g}\n"
                                  for pid, g in (("T0", ""), ("T1", "fat"))))
    params, out = BatchParams(groups=("back",), qc_images="none"), tmp_path / "out"
    without, with_fat = read_manifest(m).participants
    failed = process_participant(without, out, params, "r")
    assert (failed.status, failed.stage) == ("failed", "load")
    assert "the manifest column grid_from (water or fat)" in failed.reason
    assert process_participant(with_fat, out, params, "r").status == "done"
    code = main(["quantify", "--water", str(water), "--fat", str(fat), "--labels", str(labels),
                 "--profile", str(profile), "--groups", "back", "--bmi", "25", "--grid-from", "fat",
                 "--out", str(tmp_path / "q.csv")])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    expected, got = pd.read_csv(tmp_path / "q.csv").set_index("group"), participant_metrics(out, "T1")
    assert list(got.index) == list(expected.index) and "back" in got.index
    for column in COMPARED:
        np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-12)
    assert set(prov(out, "T1")["quantify"]["grid"]["replaced"]) == {"water"}
