"""Batch task: a label map read with the wrong profile fails in the labels stage, naming the
profile that fits; ``auto`` and ``skip_anatomy_check`` work per participant and are recorded."""

from __future__ import annotations

import json
from pathlib import Path

from myocomp.pipeline.manifest import read_manifest
from myocomp.pipeline.task import BatchParams, process_participant
from myocomp.synth.phantom import write_phantom

from .cohort import PHANTOM


def test_wrong_auto_and_skipped_profiles_in_a_batch(tmp_path: Path) -> None:
    write_phantom(tmp_path / "P1", seed=5, profile="totalsegmentator_mr_56", **PHANTOM)
    m = tmp_path / "m.csv"
    row = "P1/water.nii.gz,P1/fat.nii.gz,P1/labels.nii.gz"
    m.write_text(f"participant_id,water,fat,labels,profile,bmi\nwrong,{row},totalsegmentator_mr,24\n"
                 f"auto,{row},auto,24\nright,{row},totalsegmentator_mr_56,24\n")
    man = read_manifest(m)
    out = tmp_path / "out"
    wrong, auto, right = (process_participant(p, out, BatchParams(), "r") for p in man.participants)
    assert wrong.status == "failed" and wrong.stage == "labels"
    assert "does not fit profile 'totalsegmentator_mr'" in wrong.reason
    assert "'totalsegmentator_mr_56'" in wrong.reason
    assert auto.status == "done" and right.status == "done"
    prov = json.loads((out / "participants" / "auto" / "provenance.json").read_text())
    assert prov["quantify"]["parameters"]["label_check"]["profile"] == "totalsegmentator_mr_56"
    assert prov["parameters"]["skip_anatomy_check"] is False
    skipped = process_participant(man.participants[0], out, BatchParams(skip_anatomy_check=True), "r")
    assert skipped.status == "done"
    prov = json.loads((out / "participants" / "wrong" / "provenance.json").read_text())
    assert prov["parameters"]["skip_anatomy_check"] is True
    assert prov["quantify"]["parameters"]["label_check"]["anatomy_check"] is False
