"""Muscle composition metrics (DESIGN.md section 3) from a fat-fraction map and a label map.

Definitions (M = voxels of the muscle or group, FF = fat fraction, tau = ``fat_threshold``,
v = voxel volume):

- ``volume_ml`` = |M| v; ``n_voxels`` = |M|; ``voxel_volume_ml`` = v.
- ``ff_mean``, ``ff_median``: over the valid (finite-FF) voxels of M.
- ``lean_volume_ml`` = sum over M with FF < tau of v (1 - FF): fat-free muscle volume.
- ``intramuscular_fat_ml`` = |{FF >= tau} in M| v; ``perimuscular_fat_ml`` likewise in the band;
  ``intermat_volume_ml`` is their sum; ``intermat_fraction`` = intermat / |M u band| v.
- The band: voxels within ``band_mm`` of M that carry no label (default 0 mm: no band).
- ``lmm`` = ``lean_volume_ml`` / BMI (mL m^2/kg); empty without a BMI.
- Invalid voxels (NaN FF) count in the volume; the fat and lean sums over the valid voxels are
  scaled by |M| / |valid M| (they are assumed to be like the valid voxels); ``n_invalid`` says how
  many there were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from myocomp.errors import ConfigError, DataError, GeometryError, LabelError
from myocomp.imaging.dixon import (
    FF_METHODS,
    DixonVolume,
    NoiseEstimate,
    fat_fraction,
    same_grid,
    voxel_spacing,
    voxel_volume_ml,
)
from myocomp.imaging.labels import LabelMap, group_members, is_muscle
from myocomp.imaging.metrics import (
    METRIC_COLUMNS,
    band_sums,
    band_voxels,
    group_entities,
    member_mask,
    metric_row,
)

SLICE_COLUMNS = ("slice", "z_mm", "muscle", "csa_cm2", "ff_mean", "lean_csa_cm2")
DEFAULT_GROUPS = ("back", "psoas")

DEFINITIONS = {
    "volume_ml": "mL; voxel count of M x voxel volume",
    "ff_mean": "fraction 0-1; mean fat fraction over valid voxels of M",
    "ff_median": "fraction 0-1; median fat fraction over valid voxels of M",
    "lean_volume_ml": "mL; sum over voxels of M with FF < tau of voxel volume x (1 - FF)",
    "intermat_volume_ml": "mL; voxels with FF >= tau in M u band, x voxel volume",
    "intramuscular_fat_ml": "mL; the part of intermat_volume_ml inside M",
    "perimuscular_fat_ml": "mL; the part of intermat_volume_ml in the band",
    "intermat_fraction": "0-1; intermat_volume_ml / volume of M u band",
    "lmm": "mL m^2/kg; lean muscle mass index = lean_volume_ml / BMI",
    "n_voxels": "count; voxels of M",
    "voxel_volume_ml": "mL; volume of one voxel",
    "n_invalid": "count; voxels of M without a valid fat fraction (excluded from FF statistics)",
    "band": "voxels within band_mm of M that carry no other label (band_mm = 0: no band)",
    "csa_cm2": "cm^2; cross-sectional area of M in one slice (voxel count x in-plane voxel area)",
    "lean_csa_cm2": "cm^2; sum over the slice's voxels of M with FF < tau of in-plane area x (1 - FF)",
}


def _check_params(fat_threshold: float, band_mm: float, bmi: float | None) -> None:
    if not 0.0 < fat_threshold < 1.0:
        raise DataError(f"fat_threshold must lie strictly between 0 and 1, got {fat_threshold}")
    if not band_mm >= 0.0:
        raise DataError(f"band_mm must be >= 0, got {band_mm}")
    if bmi is not None and not 10.0 <= bmi <= 100.0:
        raise DataError(f"bmi {bmi} is outside the plausible range 10-100 kg/m^2")


@dataclass
class _Sums:
    """Per-label sums over the voxels of each muscle label (arrays indexed by label id)."""

    n: np.ndarray
    n_valid: np.ndarray
    ff_sum: np.ndarray
    n_fat: np.ndarray
    lean: np.ndarray
    values: dict[int, np.ndarray] = field(default_factory=dict)  # valid FF values per id


def _label_sums(ff: np.ndarray, labels: np.ndarray, ids: list[int], fat_threshold: float) -> _Sums:
    flat_labels = labels.ravel()
    idx = np.flatnonzero(member_mask(flat_labels, ids))
    lab = flat_labels[idx]
    f = ff.ravel()[idx].astype(np.float64)
    valid = np.isfinite(f)
    size = int(labels.max(initial=0)) + 1
    lab_v, f_v = lab[valid], f[valid]
    fat = f_v >= fat_threshold
    sums = _Sums(
        n=np.bincount(lab, minlength=size),
        n_valid=np.bincount(lab_v, minlength=size),
        ff_sum=np.bincount(lab_v, weights=f_v, minlength=size),
        n_fat=np.bincount(lab_v[fat], minlength=size),
        lean=np.bincount(lab_v[~fat], weights=1.0 - f_v[~fat], minlength=size),
    )
    order = np.argsort(lab_v, kind="stable")
    bounds = np.searchsorted(lab_v[order], ids + [size])
    for k, i in enumerate(ids):
        sums.values[i] = f_v[order[bounds[k] : bounds[k + 1]]] if i < size else f_v[:0]
    return sums


def composition_metrics(
    ff: np.ndarray,
    labels: np.ndarray,
    names: dict[int, str],
    voxel_size_mm: tuple[float, float, float],
    *,
    bmi: float | None = None,
    fat_threshold: float = 0.5,
    band_mm: float = 0.0,
    groups: tuple[str, ...] | list[str] = DEFAULT_GROUPS,
) -> pd.DataFrame:
    """Composition metrics per group and per member muscle.

    Parameters
    ----------
    ff : (X, Y, Z) float array, fat fraction in [0, 1]; NaN marks invalid voxels.
    labels : (X, Y, Z) int array of label ids, same shape.
    names : label id -> name (a :class:`LabelProfile`'s ``ids``); muscles by canonical name.
    voxel_size_mm : voxel edge lengths (mm) along the three axes.
    bmi : body-mass index (kg/m^2) for ``lmm``; None leaves ``lmm`` empty (NaN).
    fat_threshold : tau, the FF at and above which a voxel counts as adipose tissue.
    band_mm : width of the perimuscular band (0: none).
    groups : group names (``back``, ``psoas``, ``gluteal``, ``all``).

    Returns
    -------
    DataFrame with column ``group`` (group or muscle name), ``level`` (group | muscle) and
    :data:`METRIC_COLUMNS`; one row per group, then one per member muscle (sorted by name).
    """
    ff = np.asarray(ff)
    labels = np.asarray(labels)
    if ff.shape != labels.shape:
        raise GeometryError(f"fat-fraction map shape {ff.shape} differs from label map shape {labels.shape}")
    _check_params(fat_threshold, band_mm, bmi)
    groups = tuple(groups)
    labels = labels.astype(np.int64, copy=False) if labels.dtype.kind not in "iu" else labels
    muscle_ids = sorted(i for i, n in names.items() if is_muscle(n))
    v = float(np.prod(voxel_size_mm)) / 1000.0
    sums = _label_sums(ff, labels, muscle_ids, fat_threshold)
    present = {i for i in muscle_ids if i < sums.n.size and sums.n[i] > 0}
    entities = group_entities(names, present, groups)
    if not any(entities[g] for g in groups):
        raise LabelError(f"none of the groups {', '.join(groups)} has any voxel in the label map")

    rows = []
    for name, ids in entities.items():
        band_n = band_fat = 0.0
        if band_mm > 0 and ids:
            band = band_voxels(labels, ids, band_mm, tuple(voxel_size_mm))
            band_n, band_fat = band_sums(ff[band], fat_threshold)
        values = np.concatenate([sums.values[i] for i in ids]) if ids else np.empty(0)
        totals = [float(getattr(sums, key)[ids].sum()) if ids else 0.0 for key in ("n", "n_valid", "ff_sum", "n_fat", "lean")]
        row = metric_row(*totals, float(np.median(values)) if values.size else np.nan, band_n, band_fat, v, bmi)
        rows.append({"group": name, "level": "group" if name in groups else "muscle", **row})
    return pd.DataFrame(rows, columns=["group", "level", *METRIC_COLUMNS])


def slice_profile(
    ff: np.ndarray,
    labels: np.ndarray,
    names: dict[int, str],
    affine: np.ndarray,
    *,
    fat_threshold: float = 0.5,
    groups: tuple[str, ...] | list[str] = DEFAULT_GROUPS,
) -> pd.DataFrame:
    """Per-slice cross-sectional areas along array axis 2 (inferior -> superior in RAS+ arrays).

    Returns a long table with :data:`SLICE_COLUMNS`: ``slice`` (index along axis 2), ``z_mm``
    (world z of the slice centre), ``muscle`` (group or muscle name), ``csa_cm2``, ``ff_mean``
    (over valid voxels) and ``lean_csa_cm2``; only slices where the muscle is present. The
    single-slice (e.g. L3-level) measurement is one row of this table.
    """
    ff = np.asarray(ff)
    labels = np.asarray(labels)
    nx, ny, nz = labels.shape
    affine = np.asarray(affine, dtype=float)
    area_cm2 = voxel_volume_ml(affine) * 10.0 / voxel_spacing(affine)[2]
    muscle_ids = sorted(i for i, n in names.items() if is_muscle(n))
    lut = np.full(int(labels.max(initial=0)) + 1, -1, dtype=np.int64)
    known = [i for i in muscle_ids if i < lut.size]
    lut[known] = np.arange(len(known))
    flat_labels = labels.ravel()
    compact = lut[np.clip(flat_labels, 0, None)]
    idx = np.flatnonzero(compact >= 0)
    row = compact[idx]
    k = idx % nz
    f = ff.ravel()[idx].astype(np.float64)
    valid = np.isfinite(f)
    fat = valid & (f >= fat_threshold)
    lean_w = np.where(valid & ~fat, 1.0 - np.nan_to_num(f), 0.0)
    size = len(known) * nz
    key = row * nz + k
    tables = {
        "n": np.bincount(key, minlength=size),
        "n_valid": np.bincount(key[valid], minlength=size),
        "ff_sum": np.bincount(key[valid], weights=f[valid], minlength=size),
        "lean": np.bincount(key, weights=lean_w, minlength=size),
    }
    tables = {name: t.reshape(len(known), nz) for name, t in tables.items()}
    present = {i for j, i in enumerate(known) if tables["n"][j].any()}
    entities = group_entities(names, present, tuple(groups))
    position = {i: j for j, i in enumerate(known)}
    z_mm = (affine @ np.array([(nx - 1) / 2, (ny - 1) / 2, 0, 1.0])[:, None] + affine[:, 2:3] * np.arange(nz))[2]
    frames = []
    for name, ids in entities.items():
        if not ids:
            continue
        rows = [position[i] for i in ids]
        n, n_valid, ff_sum, lean = (tables[t][rows].sum(axis=0) for t in ("n", "n_valid", "ff_sum", "lean"))
        slices = np.flatnonzero(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(n_valid > 0, n / np.maximum(n_valid, 1), np.nan)
            frames.append(
                pd.DataFrame(
                    {
                        "slice": slices,
                        "z_mm": z_mm[slices],
                        "muscle": name,
                        "csa_cm2": n[slices] * area_cm2,
                        "ff_mean": np.where(n_valid[slices] > 0, ff_sum[slices] / np.maximum(n_valid[slices], 1), np.nan),
                        "lean_csa_cm2": lean[slices] * scale[slices] * area_cm2,
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=list(SLICE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(SLICE_COLUMNS)]


def gmm_fat_probability(
    intensity: np.ndarray, sample: np.ndarray, *, fat_is_bright: bool = True, max_iter: int = 200
) -> np.ndarray:
    """Approximate 'fat fraction' for one contrast: posterior of the fat class of a 2-class GMM.

    A 1-D two-component Gaussian mixture is fitted by EM to ``sample`` (intensities of the muscle
    voxels); the component with the higher mean is fat when ``fat_is_bright`` (T1-weighted).
    Returns P(fat | intensity) for every element of ``intensity`` (NaN where not finite). This is
    a classification, not a fat-fraction measurement: results are approximate.
    """
    x = np.asarray(sample, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 10 or np.ptp(x) == 0:
        raise DataError("too few distinct intensities inside the muscles for the 2-class mixture")
    mu = np.percentile(x, [25.0, 97.5])
    var = np.full(2, x.var() / 4 + 1e-12)
    weight = np.array([0.9, 0.1])
    for _ in range(max_iter):
        dens = weight / np.sqrt(2 * np.pi * var) * np.exp(-((x[:, None] - mu) ** 2) / (2 * var))
        resp = dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        nk = resp.sum(axis=0) + 1e-12
        new_mu = (resp * x[:, None]).sum(axis=0) / nk
        var = np.maximum((resp * (x[:, None] - new_mu) ** 2).sum(axis=0) / nk, 1e-12 * x.var() + 1e-12)
        weight = nk / nk.sum()
        converged = np.allclose(new_mu, mu, rtol=1e-7, atol=1e-9 * np.abs(mu).max())
        mu = new_mu
        if converged:
            break
    fat = int(np.argmax(mu)) if fat_is_bright else int(np.argmin(mu))
    y = np.asarray(intensity, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        log_dens = np.log(weight) - 0.5 * np.log(2 * np.pi * var) - (y[..., None] - mu) ** 2 / (2 * var)
        post = np.exp(log_dens[..., fat] - np.logaddexp(log_dens[..., 0], log_dens[..., 1]))
    return post.astype(np.float32)


@dataclass(frozen=True)
class QuantifyResult:
    """Metrics of one participant: ``metrics`` (one row per group/muscle), ``slices``, ``provenance``.

    ``ff`` is the fat-fraction map the metrics were computed from (float32, the shape of
    ``labels[box]``; NaN = invalid) and ``box`` the slices of the muscles' bounding box (plus the
    band), so that QC can test the same map without computing it again; neither is written.
    """

    metrics: pd.DataFrame
    slices: pd.DataFrame | None
    provenance: dict[str, Any]
    levels: pd.DataFrame | None = None  # per vertebral level (with a vertebra map)
    ff: np.ndarray | None = field(default=None, repr=False)
    box: tuple[slice, ...] | None = None


def _muscle_box(labels: np.ndarray, ids: list[int], margin: tuple[int, int, int]) -> tuple[slice, ...]:
    """Bounding box of the voxels labelled with ``ids`` (plus ``margin`` voxels), slab by slab
    along the last axis so that no full-volume temporary is made; all of it if none is."""
    hits = [np.zeros(n, dtype=bool) for n in labels.shape]
    step = max(1, 2_000_000 // max(1, labels.shape[0] * labels.shape[1]))
    for k0 in range(0, labels.shape[2], step):
        mask = member_mask(labels[:, :, k0 : k0 + step], ids)
        hits[0] |= mask.any(axis=(1, 2))
        hits[1] |= mask.any(axis=(0, 2))
        hits[2][k0 : k0 + step] = mask.any(axis=(0, 1))
    box = []
    for axis, hit in enumerate(hits):
        where = np.flatnonzero(hit)
        if where.size == 0:
            return tuple(slice(0, n) for n in labels.shape)
        start, stop = max(0, where[0] - margin[axis]), min(labels.shape[axis], where[-1] + 1 + margin[axis])
        box.append(slice(int(start), int(stop)))
    return tuple(box)


def quantify(
    dixon: DixonVolume,
    labelmap: LabelMap,
    *,
    bmi: float | None = None,
    fat_threshold: float = 0.5,
    band_mm: float = 0.0,
    groups: tuple[str, ...] | list[str] = DEFAULT_GROUPS,
    participant_id: str | None = None,
    with_slices: bool = True,
    noise_floor: float | None = None,
    fat_is_bright: bool = True,
    vertebrae: LabelMap | None = None,
    height_cm: float | None = None,
    level_axis: Any = "world",
    ff_method: str | None = None,
    noise_sigma: float | None = None,
) -> QuantifyResult:
    """Composition metrics (and the per-slice profile) of one participant.

    With a fat image the fat fraction comes from :func:`fat_fraction` (magnitude discrimination
    when an in-phase image is present). Without one (single contrast, e.g. T1w) each voxel's
    'fat fraction' is the posterior of the fat class of a 2-class Gaussian mixture fitted to the
    intensities inside the muscles (:func:`gmm_fat_probability`): approximate, and marked so in
    the ``method`` column. Work is confined to the bounding box of the muscles (plus the band).

    With a ``vertebrae`` label map on the same grid (:mod:`myocomp.imaging.levels`): the
    per-level table ``levels``, coverage-normalised groups such as ``back_L1_L5`` in ``groups``,
    and with ``height_cm`` the L3 skeletal-muscle index ``smi_l3_cm2_m2``. Every metrics row has
    ``qc_truncated_fov``: its muscles touch the first or last slice (axis 2) of the image.

    ``ff_method``/``noise_sigma``: see :func:`_resolve_ff_method` (default: magnitude
    discrimination with an in-phase image, else noise-corrected with sigma estimated from the
    background); sigma, SNR and any fallback are in ``provenance["noise"]``.
    """
    groups, level_groups = _split_level_groups(groups, vertebrae, height_cm)
    _check_params(fat_threshold, band_mm, bmi)
    names = labelmap.profile.ids
    muscle_ids = [i for i, n in names.items() if is_muscle(n)]
    box, labels, affine = _crop_to_muscles(dixon, labelmap, muscle_ids, band_mm)
    noise = negatives = None
    if dixon.fat is not None:
        ff, method, floor, noise, negatives = _dixon_ff(dixon, box, ff_method, noise_sigma, noise_floor)
    else:
        ff, method, floor = _single_contrast_ff(dixon.water[box], labels, names, groups, fat_is_bright)

    metrics = composition_metrics(
        ff, labels, names, dixon.spacing_mm, bmi=bmi, fat_threshold=fat_threshold, band_mm=band_mm, groups=groups
    )
    metrics["qc_truncated_fov"] = _touches_fov_ends(metrics, labelmap.data, names)
    level_table, level_info = None, {}
    if vertebrae is not None:
        edges = (box[2].start == 0, box[2].stop == labelmap.data.shape[2])
        metrics, level_table, level_info = _levels(
            metrics, ff, labels, names, affine, vertebrae, groups, level_groups,
            dict(fat_threshold=fat_threshold, band_mm=band_mm, bmi=bmi, edge_slices=edges), height_cm, level_axis,
        )
        level_table.insert(0, "participant_id", participant_id)
    metrics["smi_l3_cm2_m2"] = level_info.get("smi", {}).get("smi_l3_cm2_m2", np.nan)
    metrics.insert(0, "participant_id", participant_id)
    metrics["method"] = method
    slices = None
    if with_slices:
        slices = slice_profile(ff, labels, names, affine, fat_threshold=fat_threshold, groups=groups)
        slices.insert(0, "participant_id", participant_id)
    parameters = {
        "fat_threshold": fat_threshold, "band_mm": band_mm, "groups": list(groups), "bmi": bmi,
        "label_profile": labelmap.profile.name, "label_check": labelmap.anatomy,
        "fat_fraction_method": method, "noise_floor": floor, "height_cm": height_cm,
        "vertebra_profile": vertebrae.profile.name if vertebrae is not None else None,
    }
    noise_record = _noise_record(noise, negatives, dixon, box, labels, muscle_ids)
    provenance = _provenance(participant_id, parameters, level_info, noise_record, dixon)
    return QuantifyResult(metrics=metrics, slices=slices, provenance=provenance, levels=level_table, ff=ff, box=box)


def _crop_to_muscles(dixon: DixonVolume, labelmap: LabelMap, muscle_ids: list[int], band_mm: float):
    """(box, labels inside it, affine of the box) of the muscles plus the band, on the images' grid."""
    if labelmap.data.shape != dixon.shape or not same_grid(labelmap.affine, dixon.affine, shape=dixon.shape):
        raise GeometryError("label map and images are not on the same grid")
    margin = tuple(int(np.ceil(band_mm / s)) + 1 if band_mm > 0 else 0 for s in dixon.spacing_mm)
    box = _muscle_box(labelmap.data, muscle_ids, margin)  # type: ignore[arg-type]
    origin = np.array([s.start for s in box] + [1.0])
    affine = dixon.affine.copy()
    affine[:, 3] = dixon.affine @ origin
    return box, labelmap.data[box], affine


def _split_level_groups(groups, vertebrae: LabelMap | None, height_cm: float | None):
    """(plain groups to measure, level groups such as ``back_L1_L5``) of :func:`quantify`; the
    plain groups default to the level groups' base groups."""
    from myocomp.imaging import levels as lv

    if height_cm is not None and not 100.0 <= height_cm <= 250.0:
        raise DataError(f"height {height_cm} cm is outside the plausible range 100-250 cm")
    level_groups = tuple(g for g in groups if lv.parse_level_group(g) is not None)
    if level_groups and vertebrae is None:
        raise LabelError(f"group {level_groups[0]} needs a vertebra label map (--vertebrae)")
    plain = tuple(g for g in groups if g not in level_groups)
    return plain or tuple(dict.fromkeys(lv.parse_level_group(g)[0] for g in level_groups)), level_groups


def _single_contrast_ff(image: np.ndarray, labels: np.ndarray, names: dict[int, str], groups, fat_is_bright: bool):
    """(GMM fat probability map, method column, noise floor NaN) of a single-contrast image."""
    muscle_ids = [i for i, n in names.items() if is_muscle(n)]
    inside = np.isin(labels, [i for i in muscle_ids if names[i] in _entity_muscles(names, groups)])
    if not inside.any():
        raise LabelError(f"none of the groups {', '.join(groups)} has any voxel in the label map")
    ff = gmm_fat_probability(image, image[inside], fat_is_bright=fat_is_bright)
    return ff, "single_contrast_gmm (approximate)", float("nan")


def _provenance(participant_id, parameters: dict, level_info: dict, noise_record, dixon: DixonVolume) -> dict:
    """The provenance record of :func:`quantify`: parameters, levels, noise, grid, definitions, versions."""
    from myocomp.imaging import levels as lv

    return {
        "participant_id": participant_id,
        "parameters": parameters,
        **level_info,
        "noise": noise_record,
        "grid": dixon.grid,
        "geometry": {
            "shape": list(dixon.shape), "spacing_mm": list(dixon.spacing_mm),
            "voxel_volume_ml": dixon.voxel_volume_ml, "orientation": "RAS+ (closest canonical)",
        },
        "definitions": {**DEFINITIONS, **lv.DEFINITIONS},
        "versions": _versions(),
    }


def _touches_fov_ends(metrics: pd.DataFrame, labels: np.ndarray, names: dict[int, str]) -> pd.Series:
    """Per metrics row: does a muscle of it touch the first or last slice (axis 2, cranio-caudal)?"""
    ends = np.union1d(np.unique(labels[:, :, 0]), np.unique(labels[:, :, -1]))
    at_end = {names[int(i)] for i in ends if int(i) in names and is_muscle(names[int(i)])}
    muscles = [n for n in names.values() if is_muscle(n)]

    def cut(row) -> bool:
        members = group_members(row["group"], muscles) if row["level"] == "group" else [row["group"]]
        return bool(at_end.intersection(members))

    return metrics.apply(cut, axis=1).astype(bool) if len(metrics) else pd.Series([], dtype=bool)


def _levels(metrics, ff, labels, names, affine, vertebrae, groups, level_groups, options, height_cm, axis):
    """(metrics with the level-group rows, level table, provenance entries) of :func:`quantify`."""
    from myocomp.imaging import levels as lv

    found = lv.find_levels(vertebrae.data, vertebrae.affine, vertebrae.profile.ids, axis=axis, source="vertebra map")
    table, extra = lv.level_metrics(ff, labels, names, affine, found, groups=groups, level_groups=level_groups, **options)
    smi = lv.smi_l3(table, height_cm)
    metrics = pd.concat([metrics, extra], ignore_index=True) if len(extra) else metrics
    return metrics, table, {"levels": found.to_dict(), "smi": smi}


def _dixon_ff(dixon: DixonVolume, box, ff_method, noise_sigma, noise_floor):
    """Fat-fraction map inside ``box`` and what produced it: (ff, method column, floor, noise, negatives)."""
    floor = dixon.noise_floor if noise_floor is None else noise_floor
    ff_method, noise, negatives = _resolve_ff_method(dixon, ff_method, noise_sigma, floor)
    ip = dixon.in_phase[box] if ff_method == "magnitude-discrimination" else None
    ff = fat_fraction(dixon.water[box], dixon.fat[box], in_phase=ip, noise_floor=floor,
                      method=ff_method, noise_sigma=noise.sigma)
    return ff, _METHOD_NAMES[ff_method], floor, noise, negatives


_METHOD_NAMES = {
    "ratio": "dixon",
    "noise-corrected": "dixon_noise_corrected",
    "magnitude-discrimination": "dixon_magnitude_discrimination",
}


def _resolve_ff_method(
    dixon: DixonVolume, ff_method: str | None, noise_sigma: float | None, floor: float
) -> tuple[str, NoiseEstimate, dict[str, int]]:
    """The fat-fraction method to use, the noise estimate it needs (or that was given) and the
    number of negative water/fat voxels (signed inputs are never noise-corrected).

    Without ``ff_method``: magnitude discrimination with an in-phase image, else noise-corrected;
    when that finds no background to estimate sigma from (or the inputs are signed) it falls
    back to the plain ratio and the returned estimate's ``note`` says why."""
    if noise_sigma is not None and not (np.isfinite(noise_sigma) and noise_sigma > 0):
        raise ConfigError(f"noise sigma must be a positive number, got {noise_sigma}")
    if ff_method is not None and ff_method not in FF_METHODS:
        raise ConfigError(f"unknown fat-fraction method {ff_method!r}; one of {', '.join(FF_METHODS)}")
    if ff_method == "magnitude-discrimination" and dixon.in_phase is None:
        raise ConfigError("fat-fraction method magnitude-discrimination needs an in-phase image")
    default = ff_method is None
    if default:
        ff_method = "magnitude-discrimination" if dixon.in_phase is not None else "noise-corrected"
    negatives = dixon.negative_counts
    if any(negatives.values()) and ff_method == "noise-corrected":
        signed = (f"water and fat hold negative values ({negatives['water']} and {negatives['fat']} "
                  "voxels): signed (real-valued) separation output, whose noise is Gaussian with no Rician floor")
        if not default:
            raise ConfigError(f"{signed}; the noise-corrected method is for magnitude images: use --ff-method ratio")
        return "ratio", NoiseEstimate(None, "not estimated", 0, f"{signed}: F/(W+F) of the signed values, "
                                      "not clipped"), negatives
    if noise_sigma is not None:
        noise = NoiseEstimate(float(noise_sigma), "given")
    else:
        noise = dixon.background_noise
    if ff_method == "noise-corrected" and noise.sigma is None:
        if not default:
            raise ConfigError(f"cannot estimate the noise sigma ({noise.note}); give --noise-sigma "
                              "or choose --ff-method ratio")
        ff_method = "ratio"
        noise = NoiseEstimate(None, noise.source, noise.n_voxels,
                              f"{noise.note}: noise sigma unknown, plain F/(W+F) used")
    return ff_method, noise, negatives


def _noise_record(noise, negatives, dixon: DixonVolume, box, labels: np.ndarray, muscle_ids: list[int]) -> dict | None:
    """Provenance of the noise estimate: sigma, its source, the SNR of the muscles' water signal."""
    if noise is None:
        return None
    snr = None
    if noise.sigma:
        water = dixon.water[box][member_mask(labels, muscle_ids)]
        water = water[np.isfinite(water)]
        snr = float(water.mean(dtype=np.float64)) / noise.sigma if water.size else None
    return {"sigma": noise.sigma, "source": noise.source, "n_background_voxels": noise.n_voxels,
            "snr": snr, "snr_definition": "mean water signal in the labelled muscles / sigma",
            "negative_voxels": negatives, "note": noise.note}


def _entity_muscles(names: dict[int, str], groups: tuple[str, ...]) -> set[str]:
    muscles = [n for n in names.values() if is_muscle(n)]
    return {m for g in groups for m in group_members(g, muscles)}


def _versions() -> dict[str, str]:
    import nibabel
    import scipy

    from myocomp import __version__

    return {"myocomp": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "pandas": pd.__version__, "nibabel": nibabel.__version__}
