"""Real DICOM folders without a Dixon water/fat series are refused with the reason (issue 8 item 4).

``siemens_mese_calf``: one Siemens multi-echo spin-echo series (17 echoes, magnitude).
``ge_thigh``: one GE two-echo GRE series stored as magnitude, phase, real and imaginary images.
``quantify --dicom`` exits 2 with one line naming the series found (description, ImageType,
echoes, image kinds) and why none is Dixon; ``batch`` records the same reason as an
``errors.csv`` row and goes on. No patient-identifying header value appears anywhere.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.io import save_nifti
from myocomp.synth.phantom import write_phantom

CASES = {
    "siemens_mese_calf": (
        "MESE_Anon_calf_siemens.tar.xz", "MESE_Anon",
        ['series 4 "Multi_TE-17_Pastiglia Vit E"', "119 images", "ORIGINAL\\SECONDARY\\M\\NORM\\DIS2D",
         "17 echoes TE 10.9-185.3 ms", "multi-echo source images"],
        ["XXXX", "1234", "19700101", "45358"],
    ),
    "ge_thigh": (
        "GE_MEGRE_thigh.tar.xz", "mb",
        ['series 18 "Ax B0map pos3"', "256 images", "2 echoes TE 3.9-6.3 ms",
         "magnitude + phase + real + imaginary", "complex multi-echo source images"],
        ["mpMRI-16"],
    ),
}


def extract(shared_data: Path, case: str, out: Path) -> Path:
    archive, folder, _, _ = CASES[case]
    with tarfile.open(shared_data / "real" / case / archive) as tar:
        tar.extractall(out, filter="data")
    return out / folder


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("real_dicom")
    return {case: extract(shared_data, case, out / case) for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_quantify_dicom_without_dixon_names_the_series_and_why(folders, case, tmp_path, capsys):
    labels = save_nifti(np.ones((2, 2, 2), np.uint8), np.eye(4), tmp_path / "labels.nii.gz")
    code = main(["quantify", "--dicom", str(folders[case]), "--labels", str(labels),
                 "--out", str(tmp_path / "m.csv")])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "no water or fat series found among 0 Dixon images" in err
    assert "Not a Dixon water/fat export" in err
    for expected in CASES[case][2]:
        assert expected in err, expected
    for phi in CASES[case][3]:
        assert phi not in err + captured.out
    assert not (tmp_path / "m.csv").exists()


def test_quantify_takes_water_or_dicom(tmp_path, capsys):
    assert main(["quantify", "--labels", "l.nii.gz", "--out", str(tmp_path / "m.csv")]) == 2
    assert "give either --water (NIfTI) or --dicom" in capsys.readouterr().err
    assert main(["quantify", "--dicom", str(tmp_path), "--fat", "f.nii.gz", "--labels", "l.nii.gz",
                 "--out", str(tmp_path / "m.csv")]) == 2
    assert "go with --water, not with --dicom" in capsys.readouterr().err


def test_batch_records_the_reason_as_an_errors_row(folders, tmp_path, capsys):
    good = write_phantom(tmp_path / "good", seed=0, n_slices=8)
    rows = ["participant_id,water,fat,dicom_dir,labels,profile",
            f"P1,{good['water']},{good['fat']},,{good['labels']},mrsegmentator"]
    for k, case in enumerate(CASES, start=2):
        rows.append(f"P{k},,,{folders[case]},{good['labels']},mrsegmentator")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(["batch", str(manifest), "--out", str(out), "--workers", "1", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    errors = pd.read_csv(out / "errors.csv")
    reasons = dict(zip(errors["participant_id"], errors["reason"], strict=True))
    assert set(reasons) == {"P2", "P3"}
    assert set(errors["stage"]) == {"load"}
    for pid, case in (("P2", "siemens_mese_calf"), ("P3", "ge_thigh")):
        assert "no water or fat series found" in reasons[pid]
        for expected in CASES[case][2]:
            assert expected in reasons[pid], (pid, expected)
        for phi in CASES[case][3]:
            assert phi not in reasons[pid]
    assert pd.read_parquet(out / "metrics.parquet")["participant_id"].unique().tolist() == ["P1"]
