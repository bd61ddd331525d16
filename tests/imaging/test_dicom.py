"""DICOM Dixon series (myocomp.imaging.dicom): channel recognition, geometry, rescaling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from myocomp.errors import GeometryError, InputFileError
from myocomp.imaging.composition import quantify
from myocomp.imaging.dicom import classify, read_dicom_dixon
from myocomp.imaging.dixon import load_dixon
from myocomp.imaging.labelmap import load_labels
from myocomp.io import save_nifti
from myocomp.synth.dicom import write_dicom_series
from myocomp.synth.phantom import make_phantom

from .helpers import reorient, toy_volume

SLOPE, INTERCEPT = 0.25, -8.0


def lattice(a: np.ndarray) -> np.ndarray:
    """Values representable in uint16 with SLOPE/INTERCEPT (what a DICOM can store exactly)."""
    return (np.round((a - INTERCEPT) / SLOPE) * SLOPE + INTERCEPT).astype(np.float32)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("dicom_case")
    p = make_phantom(4, n_slices=8, voxel_size_mm=(4.0, 4.0, 6.0), supersample=1)
    water, fat, labels, affine = lattice(p.water), lattice(p.fat), p.labels, p.affine
    paths = {
        "water": save_nifti(water, affine, d / "water.nii.gz"),
        "fat": save_nifti(fat, affine, d / "fat.nii.gz"),
        "labels": save_nifti(labels, affine, d / "labels.nii.gz"),
    }
    return water, fat, labels, affine, paths


def metrics(dixon, labels_path):
    lm = load_labels(labels_path, "mrsegmentator", reference=dixon)
    return quantify(dixon, lm, bmi=25.0, with_slices=False).metrics


@pytest.mark.parametrize(
    ("vendor", "axcodes"),
    [("siemens", ("L", "P", "S")), ("philips", ("A", "S", "L")), ("ge", ("R", "I", "P"))],
)
def test_dicom_series_gives_the_nifti_metrics(case, tmp_path: Path, vendor, axcodes) -> None:
    water, fat, labels, affine, paths = case
    w, stored_affine = reorient(water, affine, axcodes)
    f, _ = reorient(fat, affine, axcodes)
    files = write_dicom_series(
        tmp_path / "in",
        {"water": w, "fat": f},
        stored_affine,
        vendor=vendor,
        slope=SLOPE,
        intercept=INTERCEPT,
    )
    # file names and folder layout carry no order: shuffle them into nested folders
    rng = np.random.default_rng(0)
    series = tmp_path / "series"
    for i, src in enumerate(rng.permutation(files)):
        dst = series / f"sub{i % 3}" / f"IM{rng.integers(1e9)}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)
    (series / "notes.txt").write_text("not a DICOM file")
    from_dicom = read_dicom_dixon(series)
    from_nifti = load_dixon(paths["water"], paths["fat"])
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    np.testing.assert_allclose(from_dicom.water, from_nifti.water, rtol=1e-6)
    np.testing.assert_allclose(from_dicom.fat, from_nifti.fat, rtol=1e-6)
    m_dicom, m_nifti = metrics(from_dicom, paths["labels"]), metrics(from_nifti, paths["labels"])
    num = m_nifti.select_dtypes("number").columns
    np.testing.assert_allclose(
        m_dicom[num].to_numpy(float), m_nifti[num].to_numpy(float), rtol=1e-6
    )
    assert list(m_dicom["group"]) == list(m_nifti["group"])


def test_in_and_opposed_phase_channels_are_read(case, tmp_path: Path) -> None:
    water, fat, _, affine, _ = case
    chans = {
        "water": water,
        "fat": fat,
        "in_phase": lattice(water + fat),
        "opposed_phase": lattice(np.abs(water - fat)),
    }
    write_dicom_series(tmp_path, chans, affine, slope=SLOPE, intercept=INTERCEPT)
    vol = read_dicom_dixon(tmp_path)
    np.testing.assert_allclose(vol.in_phase, chans["in_phase"], rtol=1e-6)
    np.testing.assert_allclose(vol.opposed_phase, chans["opposed_phase"], rtol=1e-6)


def test_stations_as_separate_series_are_stitched(tmp_path: Path) -> None:
    water, fat, _, affine = toy_volume(seed=2, shape=(16, 12, 20))
    water, fat = lattice(water), lattice(fat)
    for k, (z0, z1) in enumerate([(0, 12), (8, 20)]):
        shift = np.eye(4)
        shift[2, 3] = z0
        write_dicom_series(
            tmp_path / f"station{k}", {"water": water[:, :, z0:z1], "fat": fat[:, :, z0:z1]},
            affine @ shift, slope=SLOPE, intercept=INTERCEPT, seed=k,
        )  # fmt: skip
    vol = read_dicom_dixon(tmp_path)
    assert vol.shape == water.shape
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    np.testing.assert_allclose(vol.water, water, rtol=1e-5)


def test_broken_series_are_clear_errors(case, tmp_path: Path) -> None:
    water, fat, _, affine, _ = case
    only_water = tmp_path / "w"
    write_dicom_series(only_water, {"water": water}, affine, slope=SLOPE, intercept=INTERCEPT)
    with pytest.raises(InputFileError, match="no fat series"):
        read_dicom_dixon(only_water)

    gap = tmp_path / "gap"
    files = write_dicom_series(
        gap, {"water": water, "fat": fat}, affine, slope=SLOPE, intercept=INTERCEPT
    )
    files[4].unlink()
    with pytest.raises(GeometryError, match="not uniform"):
        read_dicom_dixon(gap)

    dup = tmp_path / "dup"
    files = write_dicom_series(
        dup, {"water": water, "fat": fat}, affine, slope=SLOPE, intercept=INTERCEPT
    )
    shutil.copy(files[3], dup / "copy.dcm")
    with pytest.raises(GeometryError, match="share one slice position"):
        read_dicom_dixon(dup)

    unknown = tmp_path / "unknown"
    write_dicom_series(
        unknown,
        {"water": water, "fat": fat},
        affine,
        header={"ImageType": ["ORIGINAL", "PRIMARY", "M"]},
    )
    with pytest.raises(InputFileError) as unknown_error:
        read_dicom_dixon(unknown)
    message = str(unknown_error.value)
    assert "2 other series found" in message and "ImageType ORIGINAL\\PRIMARY\\M" in message
    assert "no Dixon water/fat marker in ImageType, Philips type or description" in message

    multi = tmp_path / "multi"
    write_dicom_series(multi, {"water": water, "fat": fat}, affine, header={"NumberOfFrames": 2})
    with pytest.raises(InputFileError, match="multi-frame"):
        read_dicom_dixon(multi)
    with pytest.raises(InputFileError, match="not found"):
        read_dicom_dixon(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("image_type", "philips", "description", "expected"),
    [
        (["DERIVED", "PRIMARY", "DIXON", "WATER"], "", "", "water"),
        (["DERIVED", "PRIMARY", "DIXON", "FAT"], "", "", "fat"),
        (["DERIVED", "PRIMARY", "DIXON", "IN_PHASE"], "", "", "in_phase"),
        (["DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"], "", "", "opposed_phase"),
        (["ORIGINAL", "PRIMARY", "M", "ND", "W"], "", "", "water"),
        (["DERIVED", "PRIMARY", "DIXON", "FAT_FRACTION"], "", "", "ignore"),
        (["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], "W", "", "water"),
        (["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], b"OP ", "", "opposed_phase"),
        (["DERIVED", "PRIMARY", "OTHER"], "", "FAT: Ax LAVA-Flex", "fat"),
        (["DERIVED", "PRIMARY", "OTHER"], "", "OutPhase: Ax LAVA-Flex", "opposed_phase"),
        (["DERIVED", "PRIMARY"], "", "Dixon_BH_17s_W", "water"),
        (["DERIVED", "PRIMARY"], "", "Dixon_BH_17s_opp", "opposed_phase"),
        (["DERIVED", "PRIMARY"], "", "Dixon_BH_17s_in", "in_phase"),
        (["DERIVED", "PRIMARY"], "", "FatFrac: Ax IDEAL", "ignore"),
        (["ORIGINAL", "PRIMARY", "M", "FFE"], "", "T1 axial", None),
        ("FAT", "", "", "fat"),  # single-valued ImageType
        ("FFE", "", "", None),  # one value, not the letters F, F, E
    ],
)
def test_channel_recognition(image_type, philips, description, expected) -> None:
    assert classify(image_type, philips, description) == expected
