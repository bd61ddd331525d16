"""Quality control of one participant: the flags (the QC image and page are drawn by
:mod:`myocomp.pipeline.qc_page`).

Flags (columns of ``metrics.parquet``, True = suspicious):

``qc_swap_suspected``
    Fat-water swap (tested on the fat-fraction map the metrics were computed from, when
    :func:`assess` is given it): the median fat fraction over all muscle voxels exceeds
    ``swap_ff`` (0.5), or
    a labelled ``subcutaneous_fat`` has a median fat fraction below it (a global swap); or one
    muscle holds a compact region of FF >= ``swap_ff`` of at least ``swap_region_ml`` that
    survives a morphological opening with a ball of radius ``swap_radius_mm`` (a regional
    swap; thin intramuscular fat septa do not survive the opening, but severe confluent fatty
    infiltration can, so the note says both).
``qc_missing_labels``
    A muscle of the requested groups is absent or smaller than ``min_label_ml``.
``qc_volume_out_of_range``
    The row's volume lies outside the plausible range configured for its group or muscle.
``qc_geometry``
    The affine is the identity (a header without geometry) or the voxel anisotropy (largest /
    smallest edge) exceeds ``max_anisotropy``.

``qc_signal``
    The signals are suspicious though usable: water or fat negative in more than
    ``max_negative_fraction`` of tissue voxels, or an in-phase image that departs from W + F by
    more than ``phase_tolerance`` (median ratio where water and fat are both large).
``qc_truncated_fov`` (per row, set by :func:`myocomp.imaging.composition.quantify`)
    A muscle of the row touches the first or last slice (cranio-caudal): its volume is cut by
    the field of view (coverage-normalised groups such as ``back_L1_L5`` avoid this).

``qc_notes`` says in words why a participant was flagged.

:func:`signal_check` also finds impossible inputs, refused with an error instead of a flag: an
all-zero channel, water identical to fat, a channel negative in most tissue voxels (a negated
image), and an in-phase image whose median ratio to W + F is outside ``phase_refuse`` (e.g. an
opposed-phase image given as in-phase, ``|W - F|``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from myocomp.imaging.dixon import strided_sample, voxel_spacing

if TYPE_CHECKING:
    import pandas as pd

FLAG_COLUMNS = (
    "qc_swap_suspected", "qc_missing_labels", "qc_volume_out_of_range", "qc_geometry", "qc_signal",
    "qc_truncated_fov",
)

#: Plausible volume ranges (mL) of whole-body scans; configure for partial fields of view.
DEFAULT_VOLUME_RANGES_ML: dict[str, tuple[float, float]] = {
    "back": (50.0, 8000.0),
    "psoas": (20.0, 3000.0),
    "gluteal": (100.0, 8000.0),
}


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the QC flags (see the module docstring); units mL and fractions."""

    volume_ranges_ml: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_VOLUME_RANGES_ML)
    )
    min_label_ml: float = 1.0
    max_anisotropy: float = 4.0
    swap_ff: float = 0.5
    swap_radius_mm: float = 6.0
    swap_region_ml: float = 5.0
    max_negative_fraction: float = 0.01
    phase_tolerance: float = 0.15
    phase_refuse: tuple[float, float] = (0.7, 1.43)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["volume_ranges_ml"] = {
            k: [float(v[0]), float(v[1])] for k, v in sorted(self.volume_ranges_ml.items())
        }
        return d


@dataclass(frozen=True)
class QCFlags:
    """Participant-level QC results; ``notes`` explain every raised flag."""

    swap_suspected: bool
    missing_labels: bool
    geometry: bool
    muscle_ff_median: float
    subcutaneous_ff_median: float | None
    notes: tuple[str, ...] = ()
    signal: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_swap(
    ff: np.ndarray,
    labels: np.ndarray,
    muscle_ids: Iterable[int],
    fat_ids: Iterable[int] = (),
    threshold: float = 0.5,
) -> tuple[bool, float, float | None]:
    """Fat-water swap test: (suspected, median muscle FF, median labelled-fat FF or None).

    ``ff``: fat fraction map (NaN = invalid); ``labels``: int array of the same shape.
    """
    from myocomp.imaging.metrics import member_mask

    muscle = member_mask(labels, list(muscle_ids)) & np.isfinite(ff)
    m_med = float(np.median(ff[muscle])) if muscle.any() else float("nan")
    fat_ids = list(fat_ids)
    f_med = None
    if fat_ids:
        fat = np.isin(labels, fat_ids) & np.isfinite(ff)
        f_med = float(np.median(ff[fat])) if fat.any() else None
    suspected = bool(m_med > threshold) or (f_med is not None and f_med < threshold)
    return suspected, m_med, f_med


@dataclass(frozen=True)
class SignalCheck:
    """Result of :func:`signal_check`: ``errors`` (role, reason) refuse the input; ``notes`` flag it;
    ``phase_ratio`` is the median IP / (W + F) where water and fat are both large (or None)."""

    errors: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    phase_ratio: float | None = None


def _negative_fraction(role: str, values: np.ndarray, config: QCConfig, errors, notes) -> None:
    frac = float(np.mean(values < 0)) if values.size else 0.0
    if frac > 0.5:
        errors.append((role, f"{role} image is negative in {100 * frac:.0f} % of tissue voxels "
                             "(a negated or signed export?)"))
    elif frac > config.max_negative_fraction:
        notes.append(f"{role} negative in {100 * frac:.1f} % of tissue voxels")


def _phase_ratio(w: np.ndarray, f: np.ndarray, ip: np.ndarray) -> float | None:
    """Median IP / (W + F) over bright voxels (W + F >= 20 % of its 99th percentile) where water
    and fat both hold >= 20 % of the signal (there IP and |W - F| differ most)."""
    total = w + f
    ok = np.isfinite(ip) & (total > 0.2 * np.percentile(total, 99))
    mixed = ok & (np.minimum(w, f) >= 0.2 * total)
    use = mixed if mixed.sum() >= 50 else ok
    return float(np.median(ip[use] / total[use])) if use.any() else None


def _all_zero(arr: np.ndarray) -> bool:
    """True if every finite voxel is 0 (NaN voxels ignored)."""
    return not np.any(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=1.0))


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b, equal_nan=True)``, answered from a strided grid of ~4096 elements
    when they already differ there (two different images almost always do)."""
    if a.shape != b.shape:
        return False
    grid = tuple(slice(None, None, max(1, int(n / 4096 ** (1 / a.ndim)))) for n in a.shape)
    return np.array_equal(a[grid], b[grid], equal_nan=True) and np.array_equal(a, b, equal_nan=True)


def _opposed_like(w: np.ndarray, f: np.ndarray, ip: np.ndarray) -> float:
    """Fraction of voxels (with both water and fat > 0) whose IP lies closer to |W - F| than to W + F."""
    use = np.isfinite(ip) & (w > 0) & (f > 0)
    if not use.any():
        return 0.0
    w, f, ip = w[use], f[use], ip[use]
    return float(np.mean(np.abs(ip - np.abs(w - f)) < np.abs(ip - (w + f))))


def signal_check(dixon, config: QCConfig | None = None) -> SignalCheck:
    """Plausibility of the Dixon signals (see the module docstring); arrays are sampled on a
    stride of at most ~2 million voxels, the all-zero and identity tests use every voxel."""
    config = config or QCConfig()
    channels = {"water": dixon.water, "fat": dixon.fat, "in_phase": dixon.in_phase,
                "opposed_phase": dixon.opposed_phase}
    errors: list[tuple[str, str]] = []
    notes: list[str] = []
    samples = {role: np.asarray(strided_sample(arr), dtype=np.float64) for role, arr in channels.items() if arr is not None}
    for role, sample in samples.items():
        if not np.any(np.nan_to_num(sample, nan=0.0)) and _all_zero(channels[role]):
            errors.append((role, f"{role} image is all zero"))
    if dixon.fat is None or errors:
        return SignalCheck(tuple(errors), tuple(notes))
    w, f = samples["water"], samples["fat"]
    if _identical(w, f) and _identical(dixon.water, dixon.fat):
        return SignalCheck((("fat", "water and fat images are identical (the same file twice?)"),))
    magnitude = np.nan_to_num(np.abs(w) + np.abs(f), nan=0.0)
    tissue = magnitude > 0.05 * np.percentile(magnitude, 99)
    _negative_fraction("water", w[tissue], config, errors, notes)
    _negative_fraction("fat", f[tissue], config, errors, notes)
    ratio = None
    if dixon.in_phase is not None and not errors:
        ip = samples["in_phase"]
        ratio = _phase_ratio(w[tissue], f[tissue], ip[tissue])
        opposed = _opposed_like(w[tissue], f[tissue], ip[tissue])
        lo, hi = config.phase_refuse
        if opposed > 0.5:
            errors.append(("in_phase", f"in-phase image is inconsistent with water + fat: in "
                           f"{100 * opposed:.0f} % of tissue voxels it is closer to |W - F| than to "
                           "W + F (an opposed-phase image given as in-phase?)"))
        elif ratio is not None and not lo <= ratio <= hi:
            errors.append(("in_phase", f"in-phase image is inconsistent with water + fat (median "
                           f"IP / (W + F) = {ratio:.2f} where both are large; an opposed-phase "
                           "image given as in-phase, or differently scaled?)"))
        elif ratio is not None and abs(ratio - 1) > config.phase_tolerance:
            notes.append(f"in-phase / (water + fat) = {ratio:.2f} (expected about 1)")
    return SignalCheck(tuple(errors), tuple(notes), ratio)


def ball(radius_mm: float, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Boolean structuring element: the voxels of an ellipsoid grid within ``radius_mm``."""
    half = [int(np.floor(radius_mm / s)) for s in spacing_mm]
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g * s / radius_mm) ** 2 for g, s in zip(grid, spacing_mm, strict=True)) <= 1.0


def label_boxes(labels: np.ndarray, ids: Iterable[int]) -> dict[int, tuple[slice, ...]]:
    """Bounding box (slices) of each of ``ids`` present in ``labels``, from one pass over the volume."""
    from scipy import ndimage

    ids = sorted(int(i) for i in ids if int(i) > 0)
    if not ids:
        return {}
    boxes = ndimage.find_objects(np.asarray(labels), max_label=ids[-1])
    return {i: boxes[i - 1] for i in ids if boxes[i - 1] is not None}


def ball_opening(mask: np.ndarray, radius_mm: float, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Morphological opening of ``mask`` by :func:`ball` (outside the array counts as background).

    Exact on the voxel grid, by two Euclidean distance transforms: a voxel survives the erosion
    when no background voxel lies within ``radius_mm``, and the dilation adds every voxel within
    ``radius_mm`` of a survivor. The transforms run only around the voxels that survive the
    erosion by the largest box inside the ball (a separable minimum filter; every survivor of the
    ball is one), so thin septa cost one filter pass.
    """
    out = np.zeros(mask.shape, dtype=bool)
    core = _box_eroded(mask, radius_mm, spacing_mm)
    if not core.any():
        return out
    margin = [int(np.ceil(radius_mm / s)) + 1 for s in spacing_mm]
    crop = tuple(
        slice(max(0, int(w.min()) - m), min(n, int(w.max()) + 1 + m))
        for w, m, n in zip(np.nonzero(core), margin, mask.shape, strict=True)
    )
    out[crop] = _exact_opening(mask[crop], radius_mm, spacing_mm)
    return out


def _exact_opening(mask: np.ndarray, radius_mm: float, spacing_mm) -> np.ndarray:
    from scipy import ndimage

    inside = np.pad(mask, 1)
    r = radius_mm * (1 + 1e-9)  # a voxel at exactly radius_mm belongs to the ball
    eroded = ndimage.distance_transform_edt(inside, sampling=spacing_mm) > r
    if not eroded.any():
        return np.zeros(mask.shape, dtype=bool)
    opened = ndimage.distance_transform_edt(~eroded, sampling=spacing_mm) <= r
    return opened[1:-1, 1:-1, 1:-1] & mask


def _box_eroded(mask: np.ndarray, radius_mm: float, spacing_mm) -> np.ndarray:
    """Erosion of ``mask`` by the largest voxel box inside the ball (half-edges radius / sqrt(3),
    so every offset in the box lies within the radius); outside the array is background."""
    from scipy import ndimage

    half = [int(np.floor(radius_mm / np.sqrt(3) / s)) for s in spacing_mm]
    if not any(half) or not mask.any():
        return mask.astype(bool)
    size = tuple(2 * h + 1 for h in half)
    return ndimage.minimum_filter(mask.view(np.uint8), size=size, mode="constant", cval=0).astype(bool)


def compact_fat_regions(
    ff: np.ndarray,
    labels: np.ndarray,
    muscle_ids: Mapping[int, str],
    spacing_mm: tuple[float, float, float],
    *,
    threshold: float = 0.5,
    radius_mm: float = 6.0,
) -> dict[str, float]:
    """Volume (mL) per muscle of FF >= ``threshold`` that survives an opening with a ball of
    ``radius_mm``: compact fatty regions (a regional fat-water swap looks like this), not septa.
    """
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    out: dict[str, float] = {}
    for i, box in label_boxes(labels, muscle_ids).items():
        high = (labels[box] == i) & (np.nan_to_num(ff[box], nan=0.0) >= threshold)
        out[muscle_ids[i]] = float(ball_opening(high, radius_mm, spacing_mm).sum()) * voxel_ml if high.any() else 0.0
    return out


def check_labels(
    labels: np.ndarray,
    names: Mapping[int, str],
    expected: Iterable[str],
    voxel_volume_ml: float,
    min_label_ml: float,
) -> list[str]:
    """Expected muscles that are absent or smaller than ``min_label_ml`` (notes, one per muscle)."""
    by_name = {n: i for i, n in names.items()}
    counts = (
        np.bincount(labels[labels > 0].ravel()) if labels.max(initial=0) > 0 else np.zeros(1, int)
    )
    notes = []
    for name in expected:
        i = by_name.get(name)
        n = int(counts[i]) if i is not None and i < counts.size else 0
        if n == 0:
            notes.append(f"{name} missing")
        elif n * voxel_volume_ml < min_label_ml:
            notes.append(f"{name} tiny ({n * voxel_volume_ml:.2f} mL)")
    return notes


def check_geometry(affine: np.ndarray, max_anisotropy: float = 4.0) -> list[str]:
    """Geometry notes: identity affine, voxel anisotropy above ``max_anisotropy``."""
    affine = np.asarray(affine, dtype=float)
    notes = []
    if np.allclose(affine, np.eye(4)):
        notes.append("identity affine (no geometry in the header?)")
    spacing = voxel_spacing(affine)
    ratio = max(spacing) / min(spacing)
    if ratio > max_anisotropy:
        notes.append(f"voxel anisotropy {ratio:.1f} > {max_anisotropy:g}")
    return notes


def volume_out_of_range(
    metrics: pd.DataFrame, ranges: Mapping[str, tuple[float, float]]
) -> pd.Series:
    """Per row: True if ``volume_ml`` is outside the range configured for the row's ``group``."""
    import pandas as pd  # here, not at the top: the CLI's signal check runs while pandas imports

    bounds = np.array([ranges.get(g, (-np.inf, np.inf)) for g in metrics["group"]], dtype=float)
    vol = metrics["volume_ml"].to_numpy(dtype=float)
    if not len(vol):
        return pd.Series([], index=metrics.index, dtype=bool)
    return pd.Series((vol < bounds[:, 0]) | (vol > bounds[:, 1]), index=metrics.index)


def assess(
    dixon,
    labelmap,
    groups: Iterable[str],
    config: QCConfig | None = None,
    ff: np.ndarray | None = None,
    signal: SignalCheck | None = None,
    box: tuple[slice, ...] | None = None,
) -> QCFlags:
    """Participant-level flags of a Dixon volume and its label map (see the module docstring).

    ``ff``: the fat-fraction map to test (default :func:`qc_fat_fraction` of the whole volume);
    with ``box`` (slices holding every muscle voxel, e.g. ``QuantifyResult.box``) ``ff`` covers
    only ``labels[box]``, the map the metrics were computed from, and the subcutaneous-fat median
    is taken over the part of that label inside the box. Without a fat image (single contrast)
    there is no fat fraction to test and ``ff`` is ignored.
    Impossible signals (:func:`signal_check` errors) raise :class:`~myocomp.errors.DataError`.
    """
    from myocomp.errors import DataError
    from myocomp.imaging.labels import GROUPS, is_muscle

    config = config or QCConfig()
    signal = signal or signal_check(dixon, config)
    if signal.errors:
        raise DataError(signal.errors[0][1], source=dixon.source or None)
    names = labelmap.profile.ids
    labels = labelmap.data if box is None else labelmap.data[box]
    if dixon.fat is None:
        ff = None
    elif ff is None:
        ff, labels = qc_fat_fraction(dixon), labelmap.data
    notes: list[str] = []
    swap, m_med, f_med = False, float("nan"), None
    if ff is not None:
        muscle_ids = [i for i, n in names.items() if is_muscle(n)]
        fat_ids = [i for i, n in names.items() if n == "subcutaneous_fat"]
        swap, m_med, f_med = check_swap(ff, labels, muscle_ids, fat_ids, config.swap_ff)
        if m_med > config.swap_ff:
            notes.append(f"muscle FF median {m_med:.2f} > {config.swap_ff:g} (fat-water swap?)")
        if f_med is not None and f_med < config.swap_ff:
            notes.append(
                f"subcutaneous fat FF median {f_med:.2f} < {config.swap_ff:g} (fat-water swap?)"
            )
        regions = compact_fat_regions(
            ff,
            labels,
            {i: names[i] for i in muscle_ids},
            dixon.spacing_mm,
            threshold=config.swap_ff,
            radius_mm=config.swap_radius_mm,
        )
        for name, ml in sorted(regions.items()):
            if ml >= config.swap_region_ml:
                swap = True
                notes.append(
                    f"compact region of FF >= {config.swap_ff:g} ({ml:.1f} mL) in {name} "
                    "(regional fat-water swap or confluent fatty infiltration?)"
                )
    expected = sorted({m for g in groups for m in (GROUPS.get(g) or ())})
    label_notes = check_labels(labels, names, expected, dixon.voxel_volume_ml, config.min_label_ml)
    geo_notes = check_geometry(dixon.affine, config.max_anisotropy)
    return QCFlags(
        swap_suspected=swap,
        missing_labels=bool(label_notes),
        geometry=bool(geo_notes),
        muscle_ff_median=m_med,
        subcutaneous_ff_median=f_med,
        notes=tuple(notes + label_notes + geo_notes + list(signal.notes)),
        signal=bool(signal.notes),
    )


def qc_fat_fraction(dixon) -> np.ndarray:
    """A whole-volume fat-fraction map for QC without a quantify result (:func:`assess` with no
    ``ff``): F / (W + F), or magnitude discrimination with an in-phase image."""
    from myocomp.imaging.dixon import fat_fraction

    return fat_fraction(dixon.water, dixon.fat, in_phase=dixon.in_phase)


def add_flag_columns(
    metrics: pd.DataFrame, flags: QCFlags, config: QCConfig | None = None
) -> pd.DataFrame:
    """A copy of ``metrics`` with the QC columns (:data:`FLAG_COLUMNS` and ``qc_notes``)."""
    config = config or QCConfig()
    n = len(metrics)
    out_of_range = volume_out_of_range(metrics, config.volume_ranges_ml).to_numpy()
    truncated = (
        metrics["qc_truncated_fov"].to_numpy(dtype=bool)
        if "qc_truncated_fov" in metrics.columns else np.zeros(n, dtype=bool)
    )  # fmt: skip
    groups, volumes = metrics["group"].to_numpy(), metrics["volume_ml"].to_numpy(dtype=float)
    notes = list(flags.notes) + [
        f"{g} volume {v:.1f} mL outside plausible range"
        for g, v in zip(groups[out_of_range], volumes[out_of_range], strict=True)
    ]
    cut = groups[truncated & (metrics["level"].to_numpy() == "group")].tolist()
    if cut:
        notes.append(f"{', '.join(cut)} cut by the field of view (touches the first or last slice)")
    columns = {
        "qc_swap_suspected": np.full(n, flags.swap_suspected),
        "qc_missing_labels": np.full(n, flags.missing_labels),
        "qc_volume_out_of_range": out_of_range,
        "qc_geometry": np.full(n, flags.geometry),
        "qc_signal": np.full(n, flags.signal),
        "qc_truncated_fov": truncated,
        "qc_notes": np.full(n, "; ".join(notes), dtype=object),
    }
    return metrics.assign(**columns)  # existing columns keep their place, new ones follow
