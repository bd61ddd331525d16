"""Manifest columns ff_map and echoes, and the batch task using them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from myocomp.imaging.composition import quantify
from myocomp.imaging.dixon import fat_fraction, load_dixon
from myocomp.imaging.labelmap import load_labels
from myocomp.io import save_nifti
from myocomp.pipeline.manifest import ManifestError, read_manifest
from myocomp.pipeline.task import BatchParams, process_participant
from myocomp.synth.multiecho import make_multiecho_phantom, write_multiecho_phantom
from myocomp.synth.phantom import write_phantom

GRID = {"voxel_size_mm": (4.0, 4.0, 8.0), "supersample": 1}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("fw_cohort")
    paths = write_phantom(root / "A", seed=1, **GRID)
    w = nib.load(paths["water"])
    water, fat = w.get_fdata(), nib.load(paths["fat"]).get_fdata()
    ff = fat_fraction(water, fat, method="ratio")  # a vendor-like map: F / (W + F) in 0-1
    save_nifti(ff.astype(np.float32), w.affine, root / "A" / "ff.nii.gz")
    write_multiecho_phantom(root / "B", make_multiecho_phantom(2, te_ms=(1.2, 2.2, 3.2), **GRID))
    (root / "m.csv").write_text(
        "participant_id,water,fat,ff_map,echoes,labels,profile\n"
        "A1,A/water.nii.gz,A/fat.nii.gz,,,A/labels.nii.gz,mrsegmentator\n"
        "A2,,,A/ff.nii.gz,,A/labels.nii.gz,mrsegmentator\n"
        "B1,,,,B,B/labels.nii.gz,mrsegmentator\n")
    return root


def test_manifest_reads_ff_map_and_echoes(cohort):
    man = read_manifest(cohort / "m.csv")
    kinds = {p.participant_id: p.kind for p in man.participants}
    assert kinds == {"A1": "nifti", "A2": "ff_map", "B1": "echoes"}
    b1 = man.participants[2]
    assert b1.echoes == cohort / "B"
    assert len(b1.input_files()["echoes"]) > 6


def test_manifest_problems(cohort, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("participant_id,water,fat,ff_map,echoes,labels\n"
                 f"X1,,,{cohort}/A/ff.nii.gz,,\n"
                 f"X2,,,,{cohort}/nope,{cohort}/A/labels.nii.gz\n"
                 f"X3,{cohort}/A/water.nii.gz,{cohort}/A/fat.nii.gz,{cohort}/A/ff.nii.gz,,\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(m, default_profile="mrsegmentator")
    text = str(info.value)
    assert "ff_map needs a labels column" in text
    assert "more than one image source" in text
    assert "X2" not in text  # a missing folder is that row's error (issue 8 item 5), not the manifest's
    m.write_text("participant_id,water,fat,ff_map,echoes,labels\n"
                 f"X2,,,,{cohort}/nope,{cohort}/A/labels.nii.gz\n")
    (row,) = read_manifest(m, default_profile="mrsegmentator").row_errors
    assert row["participant_id"] == "X2" and "echoes: folder not found" in row["reason"]


def test_batch_task_ff_map_equals_water_fat_and_echoes_run(cohort, tmp_path):
    man = read_manifest(cohort / "m.csv")
    out = tmp_path / "out"
    for p in man.participants:
        assert process_participant(p, out, BatchParams(), "r1").status == "done", p
    read = {pid: pd.read_parquet(out / "participants" / pid / "metrics.parquet").set_index("group")
            for pid in ("A1", "A2", "B1")}
    cols = ["volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml"]
    # the map's metrics are the pair's with the same fat fraction (ratio: the batch's water + fat
    # rows are noise-corrected by default, which a vendor map cannot be)
    a = cohort / "A"
    dixon = load_dixon(a / "water.nii.gz", a / "fat.nii.gz")
    pair = quantify(dixon, load_labels(a / "labels.nii.gz", "mrsegmentator", reference=dixon),
                    ff_method="ratio").metrics.set_index("group")
    pd.testing.assert_frame_equal(pair.loc[read["A2"].index, cols], read["A2"][cols], rtol=1e-5)
    assert (read["A1"]["method"] == "dixon_noise_corrected").all()
    assert (read["A2"]["method"] == "ff_map").all()
    assert (read["B1"]["method"] == "separated_pdff").all()
    assert np.isfinite(read["B1"].loc["back", "ff_mean"])
