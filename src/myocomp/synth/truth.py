"""Ground truth of a phantom: the composition metrics of DESIGN.md section 3, written out
plainly over the voxels of the noise-free fine model.

This is deliberately a second, independent implementation of the definitions: it does not use
:mod:`myocomp.imaging.composition` or :mod:`myocomp.imaging.metrics` (per-label sums, bincounts,
bounding boxes), only boolean masks and direct sums, one entity at a time. The recovery tests
compare what the imaging core measures on the noisy, partial-volume images with this, so they
test the definitions as well as the measurement.

With M the voxels of a muscle or group, FF the fat fraction (NaN where there is no tissue),
tau the fat threshold and v the volume of one fine voxel (mL):

- ``volume_ml`` = |M| v, ``n_voxels`` = |M|, ``n_invalid`` = voxels of M with NaN FF;
- ``ff_mean`` / ``ff_median``: mean / median of FF over the valid voxels of M;
- ``lean_volume_ml`` = v sum over valid M with FF < tau of (1 - FF), and
  ``intramuscular_fat_ml`` = v |valid M with FF >= tau|, both times |M| / |valid M| (the invalid
  voxels are taken to be like the valid ones);
- the band: unlabelled voxels (label 0) whose Euclidean distance (mm) to M is at most
  ``band_mm``; ``perimuscular_fat_ml`` = v |band with FF >= tau| (scaled likewise);
- ``intermat_volume_ml`` = intramuscular + perimuscular, ``intermat_fraction`` = intermat /
  (|M| + |band|) v, ``lmm`` = ``lean_volume_ml`` / BMI.
"""

from __future__ import annotations

import math

import numpy as np

from myocomp.imaging.labels import group_members, is_muscle


def entity_ids(names: dict[int, str], groups: tuple[str, ...]) -> dict[str, list[int]]:
    """Entity name -> label ids: each group, then each member muscle (sorted by name)."""
    muscles = sorted({n for n in names.values() if is_muscle(n)})
    entities = {g: [i for i, n in names.items() if n in group_members(g, muscles)] for g in groups}
    for m in sorted({m for g in groups for m in group_members(g, muscles)}):
        entities[m] = [i for i, n in names.items() if n == m]
    return entities


def truth_metrics(ff: np.ndarray, labels: np.ndarray, names: dict[int, str], voxel_size_mm: tuple[float, float, float],
                  *, bmi: float | None, fat_threshold: float, band_mm: float,
                  groups: tuple[str, ...]) -> dict[str, dict[str, float | int | None]]:
    """Entity -> {metric: value} over the fine model (``ff``, ``labels``: (X, Y, Z) arrays).

    ``voxel_size_mm``: the fine voxel's edges (mm). Undefined values (an absent muscle) are None.
    """
    v = float(np.prod(voxel_size_mm)) / 1000.0
    out = {}
    for name, ids in entity_ids(names, groups).items():
        inside = np.isin(labels, ids) if ids else np.zeros(labels.shape, dtype=bool)
        band = _band(inside, labels, band_mm, voxel_size_mm)
        row = _entity_metrics(ff[inside].astype(np.float64), ff[band].astype(np.float64), v,
                              fat_threshold, bmi)
        out[name] = {k: (None if isinstance(x, float) and not math.isfinite(x) else x) for k, x in row.items()}
    return out


def _band(inside: np.ndarray, labels: np.ndarray, band_mm: float, voxel_size_mm) -> np.ndarray:
    """Unlabelled voxels within ``band_mm`` (Euclidean, mm) of ``inside``; none for 0 mm."""
    if band_mm <= 0 or not inside.any():
        return np.zeros(inside.shape, dtype=bool)
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~inside, sampling=voxel_size_mm)
    return (distance <= band_mm) & ~inside & (labels == 0)


def _entity_metrics(f: np.ndarray, band_f: np.ndarray, v: float, tau: float, bmi: float | None) -> dict:
    """The metrics of one entity from the FF values of its voxels ``f`` and of its band ``band_f``."""
    valid = f[np.isfinite(f)]
    band_valid = band_f[np.isfinite(band_f)]
    band_fat = np.count_nonzero(band_valid >= tau) * band_f.size / band_valid.size if band_valid.size else 0.0
    return metrics_from_counts(
        n=f.size, n_valid=valid.size, ff_sum=float(valid.sum()) if valid.size else 0.0,
        n_fat=np.count_nonzero(valid >= tau), lean=float(np.sum(1.0 - valid[valid < tau])),
        ff_median=float(np.median(valid)) if valid.size else float("nan"),
        band_n=band_f.size, band_fat=float(band_fat), v=v, bmi=bmi,
        ff_mean=float(valid.mean()) if valid.size else float("nan"),
    )


def metrics_from_counts(
    *, n: float, n_valid: float, ff_sum: float, n_fat: float, lean: float, ff_median: float,
    band_n: float, band_fat: float, v: float, bmi: float | None, ff_mean: float | None = None,
) -> dict:
    """The metrics from (possibly fractionally weighted) voxel counts of an entity.

    ``n`` / ``n_valid``: voxels of M (all / valid FF); ``ff_sum``: sum of FF, ``n_fat``: voxels
    with FF >= tau, ``lean``: sum of (1 - FF) over FF < tau, all over the valid voxels of M;
    ``band_n`` / ``band_fat``: band voxels (all / adipose, already scaled for invalid ones);
    ``v``: voxel volume (mL). ``ff_mean`` defaults to ``ff_sum / n_valid``.
    """
    nan = float("nan")
    if n == 0:
        return {"volume_ml": 0.0, "ff_mean": nan, "ff_median": nan, "lean_volume_ml": nan,
                "intermat_volume_ml": nan, "intramuscular_fat_ml": nan, "perimuscular_fat_ml": nan,
                "intermat_fraction": nan, "lmm": nan, "n_voxels": 0, "voxel_volume_ml": v, "n_invalid": 0}
    like_valid = n / n_valid if n_valid else nan  # the invalid voxels are taken to be like the valid
    lean_ml = lean * like_valid * v
    intramuscular = n_fat * like_valid * v
    intermat = intramuscular + band_fat * v
    return {
        "volume_ml": n * v,
        "ff_mean": (ff_sum / n_valid if n_valid else nan) if ff_mean is None else ff_mean,
        "ff_median": ff_median,
        "lean_volume_ml": lean_ml,
        "intermat_volume_ml": intermat,
        "intramuscular_fat_ml": intramuscular,
        "perimuscular_fat_ml": band_fat * v,
        "intermat_fraction": intermat / ((n + band_n) * v),
        "lmm": lean_ml / bmi if bmi is not None else nan,
        "n_voxels": int(n) if float(n).is_integer() else n,
        "voxel_volume_ml": v,
        "n_invalid": int(n - n_valid) if float(n - n_valid).is_integer() else n - n_valid,
    }
