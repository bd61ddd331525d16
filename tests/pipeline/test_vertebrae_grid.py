"""The vertebra map follows the declared grid (``quantify --grid-from``, the manifest column
``grid_from``) as the muscle label map does: on the declared grid it takes the grid's header and
gives the levels of the undeclared run on a matching grid; on another grid it is refused with
one line naming the file (exit 2 / a failed participant), declared or not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.imaging._nib import nib
from myocomp.io import save_nifti
from myocomp.pipeline.manifest import read_manifest
from myocomp.pipeline.task import BatchParams, process_participant
from myocomp.synth.phantom import write_phantom

PHANTOM = {"voxel_size_mm": (3.0, 3.0, 4.0), "length_mm": 200.0, "snr": None, "supersample": 1}
SHIFT = np.array([2.5, -1.0, 0.5])
LEVEL_KEYS = ["kind", "level", "muscle"]
LEVEL_NUMBERS = ["csa_cm2", "ff_mean", "lean_csa_cm2", "intermat_csa_cm2", "volume_ml",
                 "lean_volume_ml", "intermat_volume_ml"]


def _shifted(src: Path, dst: Path) -> None:
    """``src`` with another origin (SHIFT mm) and voxel size (+5e-6): a header defect only."""
    img = nib.load(src)
    affine = img.affine.copy()
    affine[:3, 3] += SHIFT
    affine[0, 0] *= 1 + 5e-6
    save_nifti(np.asanyarray(img.dataobj), affine, dst)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vgrid")
    paths = write_phantom(root / "P", seed=4, **PHANTOM)
    _shifted(paths["fat"], root / "P" / "fat_shifted.nii.gz")
    _shifted(paths["vertebrae"], root / "P" / "vertebrae_shifted.nii.gz")
    img = nib.load(paths["vertebrae"])
    save_nifti(np.asanyarray(img.dataobj)[:, :, 1:], img.affine, root / "P" / "vertebrae_cropped.nii.gz")
    return root


def quantify(root: Path, out: Path, capsys, fat: str = "fat", vertebrae: str = "vertebrae",
             grid_from: str | None = None) -> tuple[int, str]:
    p = root / "P"
    args = ["quantify", "--water", str(p / "water.nii.gz"), "--fat", str(p / f"{fat}.nii.gz"),
            "--labels", str(p / "labels.nii.gz"), "--vertebrae", str(p / f"{vertebrae}.nii.gz"),
            "--levels", str(out / "levels.csv"), "--out", str(out / "m.csv"),
            "--provenance", str(out / "p.json"), "--bmi", "25"]
    capsys.readouterr()
    code = main([*args, *(["--grid-from", grid_from] if grid_from else [])])
    return code, capsys.readouterr().err.strip()


def levels_of(path: Path) -> pd.DataFrame:
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return table.sort_values(LEVEL_KEYS).reset_index(drop=True)


def assert_same_levels(got: pd.DataFrame, expected: pd.DataFrame, shift_mm: float, rtol: float) -> None:
    pd.testing.assert_frame_equal(got[LEVEL_KEYS], expected[LEVEL_KEYS])
    assert {"L2", "L3", "L4"} <= set(got["level"])
    for col in ("top_mm", "bottom_mm"):  # the declared grid's world frame: shifted in S
        np.testing.assert_allclose(got[col] - expected[col], shift_mm, atol=1e-6)
    for col in LEVEL_NUMBERS:
        np.testing.assert_allclose(got[col].to_numpy(float), expected[col].to_numpy(float), rtol=rtol,
                                   err_msg=col)


@pytest.fixture(scope="module")
def plain(root: Path, tmp_path_factory) -> pd.DataFrame:
    """Levels of the undeclared run with everything on one grid."""
    out = tmp_path_factory.mktemp("plain")
    code = main(["quantify", "--water", str(root / "P/water.nii.gz"), "--fat", str(root / "P/fat.nii.gz"),
                 "--labels", str(root / "P/labels.nii.gz"), "--vertebrae", str(root / "P/vertebrae.nii.gz"),
                 "--levels", str(out / "levels.csv"), "--out", str(out / "m.csv"), "--bmi", "25"])
    assert code == 0
    return levels_of(out / "levels.csv")


def test_quantify_vertebra_map_on_the_declared_grid(root: Path, plain, tmp_path: Path, capsys) -> None:
    # the declared grid is the vertebra map's own (water): the levels of the undeclared run
    code, err = quantify(root, tmp_path / "w", capsys, fat="fat_shifted", grid_from="water")
    assert code == 0, err
    assert_same_levels(levels_of(tmp_path / "w" / "levels.csv"), plain, 0.0, 1e-12)
    # the fat header is declared: water, label map and vertebra map take it (nothing resampled)
    code, err = quantify(root, tmp_path / "f", capsys, fat="fat_shifted", grid_from="fat")
    assert code == 0, err
    assert_same_levels(levels_of(tmp_path / "f" / "levels.csv"), plain, SHIFT[2], 1e-5)
    grid = json.loads((tmp_path / "f" / "p.json").read_text())["grid"]
    assert set(grid["replaced"]) == {"water", "label map", "vertebra map"}
    assert "origin by (" in grid["replaced"]["vertebra map"]["difference"]
    # a vertebra map already carrying the declared header is taken as it is
    code, err = quantify(root, tmp_path / "s", capsys, fat="fat_shifted", vertebrae="vertebrae_shifted",
                         grid_from="fat")
    assert code == 0, err
    assert_same_levels(levels_of(tmp_path / "s" / "levels.csv"), plain, SHIFT[2], 1e-5)


@pytest.mark.parametrize(("fat", "vertebrae", "grid_from", "reason"), [
    ("fat", "vertebrae_shifted", None,
     "vertebra map affine differs from the image's by up to 2.5 mm: vertebrae are on another grid"),
    ("fat_shifted", "vertebrae_cropped", "water",
     "--grid-from water: vertebra map image shape (111, 87, 49) differs from (111, 87, 50)"),
])
def test_quantify_refuses_a_vertebra_map_on_another_grid(root: Path, tmp_path: Path, capsys, fat, vertebrae,
                                                         grid_from, reason) -> None:
    code, err = quantify(root, tmp_path, capsys, fat=fat, vertebrae=vertebrae, grid_from=grid_from)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {root / 'P' / vertebrae}.nii.gz: "), err
    assert reason in err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "levels.csv").exists()


def test_batch_vertebra_map_follows_grid_from(root: Path, plain, tmp_path: Path, capsys) -> None:
    (root / "m.csv").write_text("participant_id,water,fat,labels,profile,bmi,grid_from,vertebrae\n"
                 + "".join(f"{pid},P/water.nii.gz,P/{fat}.nii.gz,P/labels.nii.gz,mrsegmentator,25,{g},"
                           f"P/{v}.nii.gz\n" for pid, fat, g, v in (
                               ("V1", "fat_shifted", "fat", "vertebrae"),
                               ("V2", "fat_shifted", "water", "vertebrae_cropped"),
                               ("V3", "fat", "", "vertebrae_shifted"))))
    v1, v2, v3 = read_manifest(root / "m.csv").participants
    out, params = tmp_path / "out", BatchParams(qc_images="none")
    assert process_participant(v1, out, params, "r").status == "done"
    got = levels_of(out / "participants" / "V1" / "levels.parquet")
    code, err = quantify(root, tmp_path / "q", capsys, fat="fat_shifted", grid_from="fat")
    assert code == 0, err
    assert_same_levels(got, levels_of(tmp_path / "q" / "levels.csv"), 0.0, 1e-12)
    assert_same_levels(got, plain, SHIFT[2], 1e-5)
    record = json.loads((out / "participants" / "V1" / "provenance.json").read_text())
    assert "vertebra map" in record["quantify"]["grid"]["replaced"]
    for p, reason in ((v2, "grid_from water: vertebra map image shape (111, 87, 49) differs"),
                      (v3, "vertebra map affine differs from the image's by up to 2.5 mm: vertebrae are "
                           "on another grid")):
        failed = process_participant(p, out, params, "r")
        assert failed.status == "failed", p.participant_id
        assert str(p.vertebrae) in failed.reason and reason in failed.reason
        assert "--grid-from" not in failed.reason and "\n" not in failed.reason
        assert not (out / "participants" / p.participant_id / "provenance.json").exists()
