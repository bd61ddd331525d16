"""A small cohort of phantoms (NIfTI, DICOM, stations) with three broken participants."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from myocomp.io import save_nifti
from myocomp.synth.dicom import write_dicom_series
from myocomp.synth.phantom import make_phantom, write_phantom

#: Small, fast phantoms: 8 axial slices of 4 x 4 x 6 mm.
PHANTOM = {"n_slices": 8, "voxel_size_mm": (4.0, 4.0, 6.0), "supersample": 1}

#: Patient-identifying values written into the DICOM headers; none may reach any output.
PHI = {
    "PatientName": "Mustermann^Erika",
    "PatientID": "PID-4711-XYZ",
    "PatientBirthDate": "19640812",
    "StudyDate": "20190305",
    "SeriesDate": "20190305",
    "AccessionNumber": "ACC99887766",
    "InstitutionName": "Klinikum Sentinelstadt",
    "ReferringPhysicianName": "Dr^Sentinel",
    "StudyID": "STUDY-SENTINEL",
}
PHI_STRINGS = [v for v in PHI.values()] + ["Mustermann", "Erika", "1964-08-12", "Sentinel"]
N_GOOD_NIFTI = 15
BROKEN = {"P90_truncated": "load", "P91_labelgrid": "labels", "P92_dicom_nofat": "load"}


def write_nifti_cohort(root: Path, n: int, *, bmi: float | None = None) -> Path:
    """``n`` small NIfTI phantoms (seeds 0..n-1) under ``root`` and their manifest ``root/m.csv``
    (relative paths; a bmi column when ``bmi`` is given)."""
    rows = ["participant_id,water,fat,labels,profile" + (",bmi" if bmi is not None else "")]
    for i in range(n):
        write_phantom(root / f"P{i}", seed=i, **PHANTOM)
        row = f"P{i},P{i}/water.nii.gz,P{i}/fat.nii.gz,P{i}/labels.nii.gz,mrsegmentator"
        rows.append(row + (f",{bmi:g}" if bmi is not None else ""))
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def _lattice(a: np.ndarray, slope: float) -> np.ndarray:
    return (np.round(a / slope) * slope).astype(np.float32)


def build_cohort(root: Path) -> Path:
    """Write 20 participants under ``root`` and return the manifest path."""
    data = root / "data"
    rows = ["participant_id,water,fat,dicom_dir,stations,labels,profile,bmi,site"]
    for i in range(N_GOOD_NIFTI):
        paths = write_phantom(data / f"P{i:02d}", seed=i, **PHANTOM)
        rows.append(
            f"P{i:02d},data/P{i:02d}/water.nii.gz,data/P{i:02d}/fat.nii.gz,,,"
            f"data/P{i:02d}/labels.nii.gz,mrsegmentator,{22 + i * 0.5},site{i % 3}"
        )
        assert paths["water"].is_file()

    # DICOM participant (Siemens-style series, LPS storage) carrying identifying header fields
    p = make_phantom(40, orientation="LPS", **PHANTOM)
    d = data / "P15_dicom"
    write_dicom_series(d / "dicom", {"water": _lattice(p.water, 0.5), "fat": _lattice(p.fat, 0.5)},
                       p.affine, slope=0.5, header=PHI, seed=40)  # fmt: skip
    save_nifti(p.labels.astype(np.int16), p.affine, d / "labels.nii.gz")
    rows.append(
        "P15_dicom,,,data/P15_dicom/dicom,,data/P15_dicom/labels.nii.gz,mrsegmentator,27.0,site0"
    )

    # stations participant: three overlapping stations, one with another receiver gain
    p = make_phantom(41, **PHANTOM)
    d = data / "P16_stations"
    for k, (z0, z1, gain) in enumerate([(0, 4, 1.0), (2, 6, 1.4), (4, 8, 1.0)], start=1):
        shift = np.eye(4)
        shift[2, 3] = z0
        save_nifti(p.water[:, :, z0:z1] * gain, p.affine @ shift, d / "st" / f"water_{k}.nii.gz")
        save_nifti(p.fat[:, :, z0:z1] * gain, p.affine @ shift, d / "st" / f"fat_{k}.nii.gz")
    save_nifti(p.labels.astype(np.int16), p.affine, d / "labels.nii.gz")
    rows.append(
        "P16_stations,,,,data/P16_stations/st,data/P16_stations/labels.nii.gz,mrsegmentator,30.0,site1"
    )

    # broken 1: truncated water image
    paths = write_phantom(data / "P90", seed=90, **PHANTOM)
    raw = paths["water"].read_bytes()
    paths["water"].write_bytes(raw[: len(raw) // 3])
    rows.append(
        "P90_truncated,data/P90/water.nii.gz,data/P90/fat.nii.gz,,,data/P90/labels.nii.gz,mrsegmentator,,"
    )
    # broken 2: label map on another grid
    paths = write_phantom(data / "P91", seed=91, **PHANTOM)
    other = make_phantom(91, n_slices=6, voxel_size_mm=(4.0, 4.0, 6.0), supersample=1)
    save_nifti(other.labels.astype(np.int16), other.affine, data / "P91" / "labels.nii.gz")
    rows.append(
        "P91_labelgrid,data/P91/water.nii.gz,data/P91/fat.nii.gz,,,data/P91/labels.nii.gz,mrsegmentator,,"
    )
    # broken 3: DICOM folder with a water series only (and identifying fields)
    p = make_phantom(92, **PHANTOM)
    write_dicom_series(
        data / "P92" / "dicom",
        {"water": _lattice(p.water, 0.5)},
        p.affine,
        slope=0.5,
        header=PHI,
        seed=92,
    )
    save_nifti(p.labels.astype(np.int16), p.affine, data / "P92" / "labels.nii.gz")
    rows.append("P92_dicom_nofat,,,data/P92/dicom,,data/P92/labels.nii.gz,mrsegmentator,,")

    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest
