"""Real lumbar water/fat with manual back-muscle labels (``tum_lumbar``, MyoSegmenTUM; issue 8 item 4).

The water image's header has origin (0, 0, 0) while fat and labels carry the real one: refused with
one line that says which header differs, by how much, and how to proceed. ``--grid-from fat``
declares the shared voxel grid (recorded; nothing resampled); then every muscle's metrics equal an
independent voxel count and an independent F / (W + F), and ``back`` = erector spinae +
multifidus. The profile is an explicit JSON file; its sides rest on the fat header (README).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.imaging._nib import nib

PROFILE = {"1": "erector_spinae_right", "2": "multifidus_right", "3": "multifidus_left", "4": "erector_spinae_left"}


def files(shared_data, subject: str) -> dict:
    folder = shared_data / "real" / "tum_lumbar"
    return {"water": folder / f"{subject}_water_img_img_L2-L5.nii.gz",
            "fat": folder / f"{subject}_fat_img_img_L2-L5.nii.gz",
            "labels": folder / f"{subject}_fat_manual_label_segmentation_L2-L5.nii.gz"}


def args(paths: dict, profile, out, *extra) -> list[str]:
    return ["quantify", "--water", str(paths["water"]), "--fat", str(paths["fat"]), "--labels",
            str(paths["labels"]), "--profile", str(profile), "--groups", "back", "--ff-method", "ratio",
            "--out", str(out), *extra]


@pytest.fixture()
def profile(tmp_path):
    path = tmp_path / "tum_profile.json"
    path.write_text(json.dumps(PROFILE))
    return path


@pytest.mark.parametrize("subject", ["TUM01", "TUM02"])
def test_header_mismatch_is_one_line_naming_the_difference_and_the_way_out(shared_data, subject, profile,
                                                                          tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(args(files(shared_data, subject), profile, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert f"{subject}_fat_img_img_L2-L5.nii.gz: fat image affine differs from the water image's" in err
    assert "origin by (" in err and "voxel size by up to" in err and "--grid-from" in err
    assert not out.exists()


@pytest.mark.parametrize("subject", ["TUM01", "TUM02"])
def test_grid_from_fat_gives_the_independent_metrics(shared_data, subject, profile, tmp_path, capsys):
    paths = files(shared_data, subject)
    out, prov = tmp_path / "m.csv", tmp_path / "prov.json"
    assert main(args(paths, profile, out, "--grid-from", "fat", "--provenance", str(prov))) == 0
    capsys.readouterr()
    metrics = pd.read_csv(out).set_index("group")
    grid = json.loads(prov.read_text())["grid"]
    assert grid["from"] == "fat" and set(grid["replaced"]) == {"water"}
    assert "origin by" in grid["replaced"]["water"]["difference"]

    water = np.asanyarray(nib.load(paths["water"]).dataobj).astype(np.float64)
    fat = np.asanyarray(nib.load(paths["fat"]).dataobj).astype(np.float64)
    fat_img = nib.load(paths["fat"])
    labels = np.asanyarray(nib.load(paths["labels"]).dataobj)
    voxel_ml = abs(np.linalg.det(fat_img.affine[:3, :3])) / 1000
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = fat / (water + fat)
    total = water + fat
    floor = 0.05 * np.percentile(total[::2, ::2, ::2] if total.size > 4e6 else total, 99)
    valid = total > floor
    members = {}
    for label, name in PROFILE.items():
        mask = labels == int(label)
        members[name] = mask
        row = metrics.loc[name]
        assert row["n_voxels"] == mask.sum(), name
        assert row["volume_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-9), name
        assert row["ff_mean"] == pytest.approx(ff[mask & valid].mean(), abs=1e-5), name
        assert row["n_invalid"] == (mask & ~valid).sum(), name
    back = np.logical_or.reduce(list(members.values()))
    assert metrics.loc["back", "n_voxels"] == back.sum()
    assert metrics.loc["back", "ff_mean"] == pytest.approx(ff[back & valid].mean(), abs=1e-5)
    assert 0.05 < metrics.loc["back", "ff_mean"] < 0.25


def test_grid_from_refuses_what_is_not_a_header_defect(shared_data, profile, tmp_path, capsys):
    paths = files(shared_data, "TUM01")
    flipped = tmp_path / "water_flipped.nii.gz"
    img = nib.load(paths["water"])
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([1.0185, 1.0185, 4.0, 1.0])), flipped)
    assert main(args({**paths, "water": flipped}, profile, tmp_path / "m.csv", "--grid-from", "fat")) == 2
    assert "axes RAS differ from LPS" in capsys.readouterr().err
    resized = tmp_path / "water_resized.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine @ np.diag([1.01, 1.0, 1.0, 1.0])), resized)
    assert main(args({**paths, "water": resized}, profile, tmp_path / "m.csv", "--grid-from", "fat")) == 2
    assert "voxel size" in capsys.readouterr().err
