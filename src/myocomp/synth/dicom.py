"""Synthetic Dixon DICOM series (test data): write channels as classic single-frame MR images.

The counterpart of :func:`myocomp.imaging.dicom.read_dicom_dixon`, for tests and demos: each
vendor's way of marking the Dixon channels (Siemens ImageType tokens, Philips private
(2005,1011), GE SeriesDescription prefixes) is reproduced so that the reader can be checked
against known arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from myocomp.imaging.dicom import _PHILIPS_TYPE, LPS_TO_RAS

_VENDOR_MARKERS = {
    "siemens": {
        "water": ("DERIVED", "PRIMARY", "DIXON", "WATER"),
        "fat": ("DERIVED", "PRIMARY", "DIXON", "FAT"),
        "in_phase": ("DERIVED", "PRIMARY", "DIXON", "IN_PHASE"),
        "opposed_phase": ("DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"),
    },
}
_GE_PREFIX = {"water": "WATER", "fat": "FAT", "in_phase": "InPhase", "opposed_phase": "OutPhase"}
_PHILIPS_CODE = {v: k for k, v in _PHILIPS_TYPE.items()}


def write_dicom_series(
    out_dir: str | Path,
    channels: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    vendor: str = "siemens",
    slope: float = 1.0,
    intercept: float = 0.0,
    header: Mapping[str, str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write Dixon channels as classic single-frame MR DICOM series (one series per channel).

    ``channels`` maps channel names (:data:`myocomp.imaging.channels.CHANNELS`) to (X, Y, Z)
    arrays on the RAS+ grid ``affine``; slices run along array axis 2. Stored values are ``round((v - intercept) /
    slope)`` as uint16 with RescaleSlope/Intercept, so the read-back image is exact for values
    on that lattice. ``vendor`` chooses how channels are marked: ``"siemens"`` (ImageType
    tokens), ``"philips"`` (private (2005,1011)) or ``"ge"`` (SeriesDescription prefix).
    ``header`` adds or overrides top-level attributes (e.g. to test de-identification). UIDs are
    derived from ``seed``, so the same call writes the same files.
    """
    from pydicom.uid import generate_uid

    if vendor not in ("siemens", "philips", "ge"):
        raise ValueError(f"unknown vendor {vendor!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    uids = {
        "StudyInstanceUID": generate_uid(entropy_srcs=[f"myocomp-study-{seed}"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[f"myocomp-frame-{seed}"]),
    }
    written: list[Path] = []
    for number, (channel, data) in enumerate(channels.items(), start=1):
        stored = _stored_values(data, slope, intercept)
        uids["SeriesInstanceUID"] = generate_uid(entropy_srcs=[f"myocomp-series-{seed}-{channel}"])
        for k in range(stored.shape[2]):
            sop_uid = generate_uid(entropy_srcs=[f"myocomp-sop-{seed}-{channel}-{k}"])
            ds = _slice_dataset(sop_uid, uids, vendor, channel, number, k)
            _set_geometry(ds, lps, k, slope, intercept)
            ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            for key, value in (header or {}).items():
                setattr(ds, key, value)
            path = out / f"{channel}_{k + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def _stored_values(data: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``round((v - intercept) / slope)`` as little-endian uint16 (NaN stored as 0)."""
    data = np.asarray(data, dtype=np.float64)
    stored = np.round((data - intercept) / slope)
    if np.nanmin(stored) < 0 or np.nanmax(stored) > 65535:
        raise ValueError("values do not fit uint16 with this slope/intercept")
    return np.nan_to_num(stored).astype("<u2")


def _slice_dataset(sop_uid: str, uids: Mapping[str, str], vendor: str, channel: str, number: int, k: int):
    """The dataset of slice ``k`` of series ``number``: UIDs, vendor, placeholder patient, channel marks."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    for key, uid in uids.items():
        setattr(ds, key, uid)
    ds.Modality = "MR"
    ds.Manufacturer = {"siemens": "SIEMENS", "philips": "Philips", "ge": "GE MEDICAL SYSTEMS"}[vendor]
    ds.SeriesNumber = number
    ds.InstanceNumber = k + 1
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "ANONYMOUS"
    if vendor == "siemens":
        ds.ImageType = list(_VENDOR_MARKERS["siemens"][channel])
        ds.SeriesDescription = "Dixon"
    elif vendor == "philips":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]
        ds.SeriesDescription = "mDIXON"
        ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
        ds.add_new((0x2005, 0x1011), "CS", _PHILIPS_CODE[channel])
    else:
        ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
        ds.SeriesDescription = f"{_GE_PREFIX[channel]}: Ax LAVA-Flex"
    return ds


def _set_geometry(ds, lps: np.ndarray, k: int, slope: float, intercept: float) -> None:
    """Orientation, position of slice ``k``, spacing and rescale of the LPS voxel->patient ``lps``."""
    from pydicom.valuerep import DSfloat

    def ds_(v: float) -> DSfloat:
        return DSfloat(float(v), auto_format=True)

    col_spacing, row_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = [*(lps[:3, 0] / col_spacing), *(lps[:3, 1] / row_spacing)]
    ds.ImageOrientationPatient = [ds_(v) for v in orientation]
    ds.ImagePositionPatient = [ds_(v) for v in (lps[:3, 3] + k * lps[:3, 2])]
    ds.PixelSpacing = [ds_(row_spacing), ds_(col_spacing)]
    ds.SliceThickness = ds_(np.linalg.norm(lps[:3, 2]))
    ds.RescaleSlope = ds_(slope)
    ds.RescaleIntercept = ds_(intercept)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
