"""Small synthetic volumes for imaging tests (no phantom generator needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from myocomp.io import save_nifti

AUTO_L, AUTO_R, PSOAS_L, PSOAS_R, SPINE = 31, 32, 33, 34, 25  # mrsegmentator ids


def blocky_trunk(seed: int, shape, spacing, boxes: dict, origin, *, ff=(0.06, 0.02), septa=(0.08, 0.92),
                 gain_spread: float = 0.1):
    """(water, fat, labels, affine): label id -> box (tuple of slices) on a zero label map; FF
    normal(``ff``) clipped to [0, 1] with a fraction ``septa[0]`` of voxels at FF ``septa[1]``;
    total signal 1000 x (1 + gain_spread x uniform)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int16)
    for label, box in boxes.items():
        labels[box] = label
    fraction = np.clip(rng.normal(*ff, shape), 0, 1)
    fraction[rng.random(shape) < septa[0]] = septa[1]
    total = 1000.0 * (1 + gain_spread * rng.random(shape))
    fat = fraction * total
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return (total - fat).astype(np.float32), fat.astype(np.float32), labels, affine


def toy_volume(seed: int = 0, shape=(24, 20, 10), spacing=(2.0, 2.5, 4.0)):
    """Water, fat, labels and affine of a blocky toy trunk with known composition."""
    boxes = {AUTO_L: np.s_[2:9, 2:8, 1:9], AUTO_R: np.s_[13:20, 2:8, 1:9], PSOAS_L: np.s_[4:8, 12:17, 2:8],
             PSOAS_R: np.s_[15:19, 12:17, 2:8], SPINE: np.s_[10:12, 4:10, :]}
    return blocky_trunk(seed, shape, spacing, boxes, [-40.0, -30.0, 100.0])


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
