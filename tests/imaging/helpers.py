"""Small synthetic volumes for imaging tests (no phantom generator needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from myocomp.io import save_nifti

AUTO_L, AUTO_R, PSOAS_L, PSOAS_R, SPINE = 31, 32, 33, 34, 25  # mrsegmentator ids


def toy_volume(seed: int = 0, shape=(24, 20, 10), spacing=(2.0, 2.5, 4.0)):
    """Water, fat, labels and affine of a blocky toy trunk with known composition."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int16)
    labels[2:9, 2:8, 1:9] = AUTO_L
    labels[13:20, 2:8, 1:9] = AUTO_R
    labels[4:8, 12:17, 2:8] = PSOAS_L
    labels[15:19, 12:17, 2:8] = PSOAS_R
    labels[10:12, 4:10, :] = SPINE
    ff = np.clip(rng.normal(0.06, 0.02, shape), 0, 1)
    septa = rng.random(shape) < 0.08
    ff[septa] = 0.92
    total = 1000.0 * (1 + 0.1 * rng.random(shape))
    fat = ff * total
    water = total - fat
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-40.0, -30.0, 100.0]
    return water.astype(np.float32), fat.astype(np.float32), labels, affine


def write_toy(directory: Path, seed: int = 0, **kw) -> dict[str, Path]:
    water, fat, labels, affine = toy_volume(seed, **kw)
    paths = {name: directory / f"{name}.nii.gz" for name in ("water", "fat", "labels")}
    save_nifti(water, affine, paths["water"])
    save_nifti(fat, affine, paths["fat"])
    save_nifti(labels, affine, paths["labels"])
    return paths


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]):
    """Store the same world image with other axis codes: returns (data, affine)."""
    start = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(axcodes)
    transform = nib.orientations.ornt_transform(start, target)
    out = nib.orientations.apply_orientation(data, transform)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
