"""Signed water/fat (real 3-point Dixon output, ``ucl_dixon3pt/siemens_hand/reference_output``).

The rule (issue 8 item 4): water and fat with negative values are a phase-corrected, real-valued
separation output whose noise is Gaussian around zero, not Rician, so F / (W + F) of the signed
values has no noise floor to remove. It is used as it is ("ratio"), not clipped (clipping the
noise of lean muscle at 0 would make a floor again: 18 % of these tissue voxels have F < 0); the
noise-corrected method (for magnitudes) is refused for such inputs; the negative voxels are
counted in the provenance. Inside tissue this FF equals the tool's ``fatfraction / 100``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.imaging._nib import nib
from myocomp.imaging.dixon import fat_fraction, load_dixon, negative_voxels
from myocomp.imaging.labels import get_profile

CASE = "real/ucl_dixon3pt/siemens_hand/reference_output"


@pytest.fixture(scope="module")
def hand(shared_data, tmp_path_factory):
    folder = shared_data / CASE
    water_img, fat_img = nib.load(folder / "water.nii.gz"), nib.load(folder / "fat.nii.gz")
    water, fat = (np.asanyarray(i.dataobj).astype(np.float64) for i in (water_img, fat_img))
    reference = np.asanyarray(nib.load(folder / "fatfraction.nii.gz").dataobj) / 100.0
    total = water + fat
    tissue = total > 0.2 * np.percentile(total, 99)  # well above the noise floor
    muscle_id = next(i for i, n in get_profile("mrsegmentator").ids.items() if n == "autochthon_left")
    labels = np.where(tissue, muscle_id, 0).astype(np.uint8)
    path = tmp_path_factory.mktemp("hand") / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, water_img.affine), path)
    return {"folder": folder, "water": water, "fat": fat, "reference": reference, "tissue": tissue,
            "labels": path}


def test_signed_inputs_are_counted(hand):
    dixon = load_dixon(hand["folder"] / "water.nii.gz", hand["folder"] / "fat.nii.gz")
    counts = negative_voxels(dixon)
    assert counts == {"water": int((hand["water"] < 0).sum()), "fat": int((hand["fat"] < 0).sum())}
    assert counts["water"] > 1000 and counts["fat"] > 1000


def test_ff_inside_tissue_equals_the_tools_fatfraction(hand):
    tissue = hand["tissue"]
    dixon = load_dixon(hand["folder"] / "water.nii.gz", hand["folder"] / "fat.nii.gz")
    ours = fat_fraction(dixon.water, dixon.fat, method="ratio", noise_floor=0)[tissue]
    reference = hand["reference"][tissue]
    assert ((reference < 0) | (reference > 1)).mean() > 0.1  # signed noise: kept, as by the tool
    difference = np.abs(ours - reference)
    assert np.median(difference) < 1e-6 and difference.max() < 1e-5
    assert np.corrcoef(ours, reference)[0, 1] > 0.99999


def test_quantify_uses_the_signed_ratio_and_records_it(hand, tmp_path, capsys):
    folder = hand["folder"]
    out, prov = tmp_path / "m.csv", tmp_path / "prov.json"
    args = ["quantify", "--water", str(folder / "water.nii.gz"), "--fat", str(folder / "fat.nii.gz"),
            "--labels", str(hand["labels"]), "--groups", "all", "--out", str(out),
            "--skip-anatomy-check"]  # a hand, labelled with a back-muscle id
    assert main([*args, "--provenance", str(prov)]) == 0
    capsys.readouterr()
    metrics = pd.read_csv(out).set_index("group")
    provenance = json.loads(prov.read_text())
    assert metrics["method"].iloc[0] == "dixon"
    assert provenance["noise"]["negative_voxels"] == {"water": int((hand["water"] < 0).sum()),
                                                      "fat": int((hand["fat"] < 0).sum())}
    assert "signed" in provenance["noise"]["note"]
    tissue = hand["tissue"]
    independent = hand["fat"][tissue] / (hand["water"][tissue] + hand["fat"][tissue])
    row = metrics.loc["autochthon_left"]
    assert row["n_voxels"] == tissue.sum() and row["n_invalid"] == 0
    assert row["ff_mean"] == pytest.approx(independent.mean(), abs=1e-6)
    assert row["ff_mean"] == pytest.approx(hand["reference"][tissue].mean(), abs=1e-6)
    assert main([*args, "--ff-method", "noise-corrected"]) == 2
    err = capsys.readouterr().err
    assert "negative values" in err and "use --ff-method ratio" in err
