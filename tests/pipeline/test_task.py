"""The per-participant task without Dask: resume rules, model path, failures as outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from myocomp.imaging.labelmap import labelmap_from_array
from myocomp.pipeline.manifest import read_manifest
from myocomp.pipeline.store import ResultStore, hash_inputs
from myocomp.pipeline.task import BatchParams, process_participant
from myocomp.synth.phantom import make_phantom, write_phantom

from .cohort import PHANTOM


@pytest.fixture()
def one(tmp_path: Path):
    write_phantom(tmp_path / "P1", seed=3, **PHANTOM)
    m = tmp_path / "m.csv"
    m.write_text(
        "participant_id,water,fat,labels,profile,bmi\n"
        "P1,P1/water.nii.gz,P1/fat.nii.gz,P1/labels.nii.gz,mrsegmentator,24\n"
        "P2,P1/water.nii.gz,P1/fat.nii.gz,,,\n"
    )
    return read_manifest(m), tmp_path / "out"


def prov(out: Path, pid: str) -> dict:
    return json.loads((out / "participants" / pid / "provenance.json").read_text())


def test_resume_skips_only_when_inputs_and_parameters_match(one, tmp_path: Path) -> None:
    man, out = one
    p1 = man.participants[0]
    params = BatchParams()
    assert process_participant(p1, out, params, "run1").status == "done"
    assert process_participant(p1, out, params, "run2", resume=True).status == "skipped"
    assert prov(out, "P1")["run_id"] == "run1"
    # without --resume everything is recomputed
    assert process_participant(p1, out, params, "run3").status == "done"
    assert prov(out, "P1")["run_id"] == "run3"
    # a parameter change -> recompute
    changed = BatchParams(fat_threshold=0.6)
    assert process_participant(p1, out, changed, "run4", resume=True).status == "done"
    assert prov(out, "P1")["parameters"]["fat_threshold"] == 0.6
    assert process_participant(p1, out, changed, "run5", resume=True).status == "skipped"
    # an input change (same file name, other bytes) -> recompute
    import nibabel as nib

    from myocomp.io import save_nifti

    img = nib.load(p1.labels)
    labels = np.asarray(img.dataobj).copy()
    labels[labels == 34] = 0  # iliopsoas_right removed
    save_nifti(labels.astype(np.int16), img.affine, p1.labels)
    assert process_participant(p1, out, changed, "run6", resume=True).status == "done"
    assert prov(out, "P1")["run_id"] == "run6"
    assert prov(out, "P1")["qc"]["missing_labels"] is True
    # a half-written participant (no provenance yet) is redone
    (out / "participants" / "P1" / "provenance.json").unlink()
    assert process_participant(p1, out, changed, "run7", resume=True).status == "done"
    assert prov(out, "P1")["run_id"] == "run7"


def test_missing_labels_without_model_is_a_clear_failure(one) -> None:
    man, out = one
    outcome = process_participant(man.participants[1], out, BatchParams(), "r")
    assert (outcome.status, outcome.stage) == ("failed", "segment")
    assert outcome.reason == "no labels in the manifest row and no --model to segment with"
    assert not (out / "participants" / "P2" / "provenance.json").exists()


def test_rows_without_labels_are_segmented_with_the_model(one, monkeypatch) -> None:
    import myocomp.segment

    man, out = one
    phantom = make_phantom(3, **PHANTOM)
    calls = []

    def fake_segment(dixon, model, device="auto"):
        calls.append((model, device, dixon.shape))
        return labelmap_from_array(phantom.labels, phantom.affine, "mrsegmentator", reference=dixon)

    monkeypatch.setattr(myocomp.segment, "segment_dixon", fake_segment)
    outcome = process_participant(
        man.participants[1], out, BatchParams(model="tiny-model", device="cpu"), "r"
    )
    assert outcome.status == "done", outcome.reason
    assert calls == [("tiny-model", "cpu", phantom.water.shape)]
    p = prov(out, "P2")
    assert p["parameters"]["model"] == "tiny-model" and p["parameters"]["labels_from"] == "model"
    assert "labels" not in p["input_sha256"]


def test_unknown_model_fails_in_the_segment_stage(one) -> None:
    man, out = one
    outcome = process_participant(
        man.participants[1], out, BatchParams(model="no-such-model-xyz"), "r"
    )
    assert (outcome.status, outcome.stage) == ("failed", "segment")
    assert "no-such-model-xyz" in outcome.reason and "\n" not in outcome.reason


def test_input_hashes_do_not_depend_on_where_the_cohort_lives(tmp_path: Path) -> None:
    for root in ("a", "b"):
        for k in (1, 2):
            f = tmp_path / root / "st" / f"water_{k}.nii.gz"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(bytes([k]) * 10)
    ha = hash_inputs({"water_stations": sorted((tmp_path / "a" / "st").iterdir())})
    hb = hash_inputs({"water_stations": sorted((tmp_path / "b" / "st").iterdir())})
    assert ha == hb
    (tmp_path / "b" / "st" / "water_2.nii.gz").write_bytes(b"changed")
    assert hash_inputs({"water_stations": sorted((tmp_path / "b" / "st").iterdir())}) != ha


def test_store_merge_sorts_and_reports_current(tmp_path: Path) -> None:
    import pandas as pd

    from myocomp.io import write_table

    store = ResultStore(tmp_path)
    for pid, groups in (("B", ["psoas", "back"]), ("A", ["psoas", "back"])):
        write_table(pd.DataFrame({"participant_id": pid, "group": groups, "volume_ml": [1.0, 2.0]}),
                    store.path(pid, "metrics.parquet"))  # fmt: skip
    qc = store.merge(["B", "A"])
    assert [pid for pid, _, _ in qc] == ["A", "B"]
    merged = pd.read_parquet(tmp_path / "metrics.parquet")
    assert list(zip(merged["participant_id"], merged["group"], strict=True)) == [
        ("A", "back"), ("A", "psoas"), ("B", "back"), ("B", "psoas")
    ]  # fmt: skip
    assert not store.is_current("A", {}, {})


def test_provenance_time_honours_source_date_epoch(one, monkeypatch) -> None:
    man, out = one
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1735689600")
    assert process_participant(man.participants[0], out, BatchParams(), "run1").status == "done"
    assert prov(out, "P1")["created_utc"] == "2025-01-01T00:00:00+00:00"


def test_batch_refuses_a_malformed_source_date_epoch(one, tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    from myocomp.cli import main

    _, out = one
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "2025-01-01")
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: SOURCE_DATE_EPOCH: '2025-01-01' is not an integer number of "
                   "seconds since 1970-01-01 UTC")
    assert not out.exists()
