"""Batch with vertebra maps (issue 13): manifest columns vertebrae / height_cm, levels.parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from myocomp.pipeline.manifest import read_manifest
from myocomp.pipeline.task import BatchParams, process_participant
from myocomp.synth.phantom import write_phantom

PHANTOM = {"voxel_size_mm": (3.0, 3.0, 4.0), "length_mm": 200.0, "snr": None, "supersample": 1}


def test_batch_participant_with_vertebrae_writes_levels_and_level_groups(tmp_path: Path) -> None:
    write_phantom(tmp_path / "P1", seed=4, **PHANTOM)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "participant_id,water,fat,labels,profile,vertebrae,height_cm\n"
        "P1,P1/water.nii.gz,P1/fat.nii.gz,P1/labels.nii.gz,mrsegmentator,P1/vertebrae.nii.gz,172\n"
        "P2,P1/water.nii.gz,P1/fat.nii.gz,P1/labels.nii.gz,mrsegmentator,,\n"
    )
    man = read_manifest(manifest)
    p1, p2 = man.participants
    assert p1.vertebrae == tmp_path / "P1" / "vertebrae.nii.gz" and p1.height_cm == 172.0
    assert "vertebrae" in p1.input_files()
    out = tmp_path / "out"
    params = BatchParams(groups=("back", "psoas", "back_L2_L4"))
    assert process_participant(p1, out, params, "run1").status == "done"
    folder = out / "participants" / "P1"
    levels = pd.read_parquet(folder / "levels.parquet")
    assert {"L2", "L3", "L4"} <= set(levels.query("kind == 'slice'")["level"])
    assert (levels["participant_id"] == "P1").all()
    metrics = pd.read_parquet(folder / "metrics.parquet").set_index("group")
    assert metrics.loc["back_L2_L4", "volume_ml"] > 0 and not metrics.loc["back_L2_L4", "qc_truncated_fov"]
    assert metrics.loc["back", "qc_truncated_fov"] and "cut by the field of view" in metrics["qc_notes"].iloc[0]
    assert metrics["smi_l3_cm2_m2"].iloc[0] > 0
    assert process_participant(p1, out, params, "run2", resume=True).status == "skipped"
    # a level group without a vertebra map: this participant fails with the reason, the batch goes on
    failed = process_participant(p2, out, params, "run1")
    assert failed.status == "failed" and "needs a vertebra label map" in failed.reason


@pytest.mark.parametrize(("value", "problem"), [("tall", "not a number"), ("17", "100-250")])
def test_manifest_height_is_checked(tmp_path: Path, value: str, problem: str) -> None:
    from myocomp.pipeline.manifest import ManifestError

    (tmp_path / "w.nii.gz").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"participant_id,water,fat,height_cm\nP1,w.nii.gz,w.nii.gz,{value}\n")
    with pytest.raises(ManifestError, match=problem):
        read_manifest(manifest)
