"""Vertebra labels and per-level ground truth of the lumbar-trunk phantom.

The anatomy (:mod:`myocomp.synth.anatomy`) has vertebrae of period ``P`` along z: with
``b = length/2 - phase``, vertebra ``m`` spans ``z`` in ``[b + m P + 9, b + (m + 1) P)`` and the
disc below it ``[b + m P, b + m P + 9)`` (:data:`DISC_MM` = 9). The vertebra whose centre is
nearest ``z = 0`` is L3; cranially follow L2, L1, T12, ...; caudally L4, L5, S1, S2, ... (S1 and
below are fused into the ``sacrum`` label, as in TotalSegmentator's ``vertebrae_mr``).

Labels use the ``totalsegmentator_vertebrae_mr`` ids (1 sacrum, 2 L5, ..., 7 T12); discs are a
separate map whose value is the ``vertebrae_mr`` id of the vertebra above the disc.

Truth is computed from the noise-free fine model only (never by :mod:`myocomp.imaging.levels` or
:mod:`myocomp.imaging.metrics`; the definitions are those of :mod:`myocomp.synth.truth`):
:func:`fine_profile` tabulates per fine slice the sums of every composition metric, so the truth
between any two planes (:func:`truth_between`) is an exact weighted sum of fine slices, and
:func:`truth_csa` paints the model at exactly one plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from myocomp.synth.anatomy import STRUCTURES, LumbarAnatomy, paint_slice
from myocomp.synth.truth import metrics_from_counts

DISC_MM = 9.0
_ORDER = (*(f"T{i}" for i in range(1, 13)), *(f"L{i}" for i in range(1, 6)), *(f"S{i}" for i in range(1, 6)))
_MUSCLES = STRUCTURES[1:5]
TRUTH_ENTITIES = {
    "back": ("autochthon_left", "autochthon_right"),
    "psoas": ("iliopsoas_left", "iliopsoas_right"),
    "all": _MUSCLES,
    **{m: (m,) for m in _MUSCLES},
}


@dataclass(frozen=True)
class PhantomVertebra:
    """One vertebra of the model: body-axis positions (mm) of its endplates and of its lower disc."""

    name: str
    bottom_mm: float
    top_mm: float
    disc_bottom_mm: float

    @property
    def centre_mm(self) -> float:
        return 0.5 * (self.bottom_mm + self.top_mm)

    @property
    def label(self) -> int:
        """Its ``vertebrae_mr`` id (1 for S1 and the fused sacral vertebrae below)."""
        if self.name.startswith("S"):
            return 1
        return 2 + ("L5", "L4", "L3", "L2", "L1", *(f"T{i}" for i in range(12, 0, -1))).index(self.name)


def phantom_vertebrae(anatomy: LumbarAnatomy, z_lo: float, z_hi: float) -> list[PhantomVertebra]:
    """Vertebrae (cranial to caudal) whose body or lower disc overlaps ``[z_lo, z_hi]`` (mm)."""
    period = anatomy.vertebra_period_mm
    b = anatomy.length_mm / 2 - anatomy.vertebra_phase_mm
    m3 = round((-b - (DISC_MM + period) / 2) / period)
    out = []
    for m in range(math.floor((z_lo - b) / period) - 1, math.ceil((z_hi - b) / period) + 1):
        index = _ORDER.index("L3") - (m - m3)
        bottom, top = b + m * period + DISC_MM, b + (m + 1) * period
        if 0 <= index < len(_ORDER) and top > z_lo and bottom - DISC_MM < z_hi:
            out.append(PhantomVertebra(_ORDER[index], bottom, top, bottom - DISC_MM))
    return sorted(out, key=lambda v: -v.centre_mm)


def vertebra_labels(
    anatomy: LumbarAnatomy, spine: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, dz: float
) -> tuple[np.ndarray, np.ndarray]:
    """(vertebrae, discs) uint8 maps on the output grid (RAS axes, world coordinates x, y, z).

    ``spine``: the output voxels labelled as bone of the spine. A voxel gets the vertebra that
    overlaps most of its slab ``[z - dz/2, z + dz/2]``; a disc voxel is one whose centre lies in a
    disc, inside the disc's outline (the model's superellipse of the vertebral body).
    """
    verts = np.zeros(spine.shape, dtype=np.uint8)
    discs = np.zeros(spine.shape, dtype=np.uint8)
    table = phantom_vertebrae(anatomy, float(z.min()) - dz, float(z.max()) + dz)
    for k, zk in enumerate(z):
        overlap = [min(v.top_mm, zk + dz / 2) - max(v.bottom_mm, zk - dz / 2) for v in table]
        if table and max(overlap) > 0:
            verts[:, :, k][spine[:, :, k]] = table[int(np.argmax(overlap))].label
        above = next((v for v in table if v.disc_bottom_mm <= zk < v.bottom_mm), None)
        if above is not None:
            g = anatomy.vertebra(float(zk))
            inside = (np.abs(x[:, None] / g["ax"]) ** 2.4 + np.abs((y[None, :] - g["body_y"]) / g["ay"]) ** 2.4) < 1
            discs[:, :, k][inside] = above.label
    return verts, discs


def fine_profile(ff_true: np.ndarray, st_true: np.ndarray, fat_threshold: float) -> dict[str, np.ndarray]:
    """Per fine slice (axis 2) and truth entity: sums n, n_valid, ff_sum, n_fat, lean (voxel counts).

    ``ff_true`` (NaN where there is no tissue) and ``st_true`` (structure indices) are the
    noise-free fine model. Returns entity -> (n_fine_slices, 5) float64 array.
    """
    out = {}
    for name, members in TRUTH_ENTITIES.items():
        codes = [STRUCTURES.index(m) for m in members]
        mask = np.isin(st_true, codes)
        f = np.where(mask, ff_true, np.nan).astype(np.float64)
        valid = mask & np.isfinite(f)
        fat = valid & (f >= fat_threshold)
        lean = np.where(valid & ~fat, 1.0 - np.nan_to_num(f), 0.0)
        out[name] = np.stack(
            [mask.sum(axis=(0, 1)), valid.sum(axis=(0, 1)), np.nansum(np.where(valid, f, 0.0), axis=(0, 1)),
             fat.sum(axis=(0, 1)), lean.sum(axis=(0, 1))],
            axis=1,
        ).astype(np.float64)
    return out


def truth_between(
    profile: dict[str, np.ndarray], z_fine: np.ndarray, fine_voxel_ml: float, entity: str,
    bottom: float, top: float, bmi: float | None = None,
) -> dict[str, float]:
    """Whole-volume metrics (composition definitions) of ``entity`` between two planes of z (mm).

    Fine slices cut by a plane count with the fraction of their thickness inside.
    """
    step = float(z_fine[1] - z_fine[0])
    w = np.clip((np.minimum(top, z_fine + step / 2) - np.maximum(bottom, z_fine - step / 2)) / step, 0.0, 1.0)
    n, n_valid, ff_sum, n_fat, lean = (float(x) for x in w @ profile[entity])
    return metrics_from_counts(n=n, n_valid=n_valid, ff_sum=ff_sum, n_fat=n_fat, lean=lean, ff_median=float("nan"),
                               band_n=0.0, band_fat=0.0, v=fine_voxel_ml, bmi=bmi)


def truth_csa(
    anatomy: LumbarAnatomy, x_fine: np.ndarray, y_fine: np.ndarray, z: float, fat_threshold: float
) -> dict[str, dict[str, float]]:
    """CSA (cm^2), mean FF and lean CSA (cm^2) of each truth entity in the model plane at ``z``."""
    _, ff, st = paint_slice(anatomy, x_fine, y_fine, float(z))
    area = float((x_fine[1] - x_fine[0]) * (y_fine[1] - y_fine[0])) / 100.0
    out = {}
    for name, members in TRUTH_ENTITIES.items():
        mask = np.isin(st, [STRUCTURES.index(m) for m in members])
        f = ff[mask].astype(np.float64)
        out[name] = {
            "csa_cm2": float(mask.sum()) * area,
            "ff_mean": float(f.mean()) if f.size else float("nan"),
            "lean_csa_cm2": float(np.where(f < fat_threshold, 1.0 - f, 0.0).sum()) * area,
        }
    return out


def level_truth(anatomy, profile, z_fine, x_fine, y_fine, fine_voxel_ml, fat_threshold, z_lo, z_hi):
    """Per-level truth: vertebrae inside ``[z_lo, z_hi]``, mid-vertebral slices, spans between them."""
    verts = [v for v in phantom_vertebrae(anatomy, z_lo, z_hi) if v.bottom_mm >= z_lo and v.top_mm <= z_hi]
    vertebrae = [{"name": v.name, "label": v.label, "top_mm": v.top_mm, "bottom_mm": v.bottom_mm,
                  "centre_mm": v.centre_mm, "disc_below_mm": [v.disc_bottom_mm, v.bottom_mm]} for v in verts]
    slices = {v.name: truth_csa(anatomy, x_fine, y_fine, v.centre_mm, fat_threshold) for v in verts}
    spans = {
        f"{a.name}-{b.name}": {
            e: truth_between(profile, z_fine, fine_voxel_ml, e, b.centre_mm, a.centre_mm) for e in TRUTH_ENTITIES
        }
        for a, b in zip(verts, verts[1:], strict=False)
    }
    return {
        "axis": "body z (mm): the position along the body axis; world = tilt rotation of (x, y, z)",
        "vertebrae": vertebrae,
        "slices": slices,
        "spans": spans,
    }
