"""Loading at the I/O limit (issue 14 item 1): ISA-L gzip through nibabel's opener registry,
channels read concurrently, 8/16-bit images kept as stored, nibabel without the eager pydicom."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from myocomp.errors import InputFileError
from myocomp.imaging import _nib
from myocomp.imaging.dixon import load_dixon, load_nifti


def write(path, data, affine=None):
    img = _nib.nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(data.dtype)
    _nib.nib.save(img, path)
    return path


def test_gz_reads_through_isal_in_pieces(tmp_path, monkeypatch):
    assert _nib.igzip is not None
    assert _nib.nib.openers.ImageOpener.compress_ext_map[".gz"][0] is _nib._gzip_open
    monkeypatch.setattr(_nib, "_PIECE", 1000)  # many pieces: the read must still be exact
    data = np.random.default_rng(0).integers(-3000, 3000, size=(31, 17, 9)).astype(np.int16)
    img = load_nifti(write(tmp_path / "a.nii.gz", data), "water")
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)


def test_truncated_gz_is_an_input_error(tmp_path):
    path = write(tmp_path / "a.nii.gz", np.ones((40, 40, 40), np.int16))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputFileError, match="truncated or corrupt"):
        load_nifti(path, "water")


def test_channels_keep_compact_dtypes_and_equal_a_plain_load(tmp_path):
    rng = np.random.default_rng(1)
    water = rng.integers(0, 2000, size=(20, 30, 12)).astype(np.int16)
    fat = rng.integers(0, 2000, size=(20, 30, 12)).astype(np.uint16)
    other = rng.normal(100, 10, size=(20, 30, 12))
    dixon = load_dixon(write(tmp_path / "w.nii.gz", water), write(tmp_path / "f.nii.gz", fat),
                       in_phase=write(tmp_path / "ip.nii.gz", other))
    assert dixon.water.dtype == np.int16 and dixon.fat.dtype == np.uint16
    assert dixon.in_phase.dtype == np.float32
    np.testing.assert_array_equal(dixon.water, water)
    np.testing.assert_array_equal(dixon.fat, fat)


def test_nibabel_is_imported_without_pydicom_and_pydicom_still_works():
    code = ("import sys; import myocomp.imaging.dixon; assert 'pydicom' not in sys.modules; "
            "import pydicom; print(pydicom.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pydicom"


def test_quantify_help_imports_no_heavy_module():
    code = ("import sys; from myocomp.cli import main; main(['quantify', '--help']); "
            "print(sorted(m for m in ('pandas', 'scipy', 'nibabel', 'pydicom', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
