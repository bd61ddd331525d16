"""Vertebral levels from a vertebra label map, and muscle metrics per level.

Geometry (all positions in mm, world RAS+):

- The *body axis* ``u`` (unit vector, pointing cranially, ``u[2] > 0``) is by default world S
  (``axis="world"``: RAS/LPS world coordinates are patient coordinates, S is cranial, so axial
  cross-sections are the usual ones); ``axis="spine"`` takes the principal direction of the
  centroids of the labelled vertebrae (sacrum excluded; for a patient tilted in the scanner), or
  give a unit vector. Each voxel's cranio-caudal position is ``t = x . u`` with ``x`` its world
  centre, so oblique and permuted storage give the same levels.
- A vertebra's extent ``[bottom_mm, top_mm]`` is the extent along ``u`` of its voxels (each
  voxel counted with its own projected thickness); ``centre_mm`` is the middle, the
  *mid-vertebral plane* (perpendicular to ``u``). The sacrum label covers S1-S5: S1 is taken as
  its cranial ``h`` mm, ``h`` = the height of L5 (else the median lumbar height), flagged
  ``approximate``.
- A vertebra touching the border of the image is *truncated*: its extent is not known, so it
  gives no mid-vertebral plane, span or boundary.
- The boundary between two consecutive vertebrae is the middle of the gap between them.

Checks (raise :class:`LabelError`, never a silent shift by one level): a vertebra missing
between two present ones, two vertebrae merged into one label (two bodies separated by a gap
along ``u``, or a height more than :data:`MERGED_HEIGHT_RATIO` x the median), centres out of
anatomical order (L1 above L2 ...), and an unlabelled vertebra between two consecutive labels
(centre distance more than :data:`GAP_RATIO` x their mean height).

Per-level metrics (:func:`level_metrics`) weight each voxel by the exact fraction of its
volume between two planes perpendicular to ``u`` (the voxel is a box; the fraction is the
distribution function of a sum of uniform variables), so a plane through the middle of a slice
takes half of it:

- ``slice`` rows (level ``L3``): a slab of thickness ``slab_mm`` (one projected voxel thickness)
  centred on the mid-vertebral plane; ``csa_cm2`` = slab volume / thickness (for slices
  perpendicular to ``u``, the linear interpolation of the neighbouring slices' areas),
  ``lean_csa_cm2`` and ``intermat_csa_cm2`` likewise, ``ff_mean`` the weighted mean.
- ``span`` rows (level ``L3-L4``): the volume between the mid-vertebral planes of two
  consecutive vertebrae, with every whole-volume metric of :mod:`composition`.
- Coverage-normalised groups ``<group>_<A>_<B>`` (e.g. ``back_L1_L5``): the group between the
  top of vertebra A and the bottom of vertebra B, with the whole-volume metric columns.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp.errors import DataError, GeometryError, LabelError
from myocomp.imaging.labels import LabelMap, LabelProfile, get_profile, group_members, is_muscle
from myocomp.imaging.metrics import (
    METRIC_COLUMNS,
    band_sums,
    band_voxels,
    group_entities,
    metric_row,
)

#: Vertebrae from cranial to caudal (S1: the top of the sacrum).
VERTEBRA_ORDER = (
    *(f"C{i}" for i in range(1, 8)), *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)), "S1",
)
#: Levels for which per-level metrics are reported.
REPORTED_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5", "S1")
DEFAULT_VERTEBRA_PROFILE = "totalsegmentator_vertebrae_mr"
MERGED_HEIGHT_RATIO = 1.6
GAP_RATIO = 2.0
#: Pieces of one vertebra label smaller than this fraction of its voxels are ignored as strays.
STRAY_FRACTION = 0.05
#: Base names of abdominal-wall muscles; without them (or a whole ``muscle`` label) the L3 SMI is partial.
ABDOMINAL_WALL = frozenset(
    {"rectus_abdominis", "external_oblique", "internal_oblique", "transversus_abdominis", "muscle"}
)
LEVEL_COLUMNS = (
    "kind", "level", "muscle", "top_mm", "bottom_mm", "csa_cm2", "ff_mean", "lean_csa_cm2",
    "intermat_csa_cm2", "volume_ml", "ff_median", "lean_volume_ml", "intermat_volume_ml",
    "intramuscular_fat_ml", "perimuscular_fat_ml", "intermat_fraction", "qc_truncated_fov",
)
DEFINITIONS = {
    "level_slice": "slab of one voxel thickness along the body axis centred on the mid-vertebral plane",
    "level_span": "between the mid-vertebral planes of two consecutive vertebrae (e.g. L3-L4)",
    "level_group": "<group>_<A>_<B>: the group between the top of vertebra A and the bottom of vertebra B",
    "intermat_csa_cm2": "cm^2; adipose (FF >= tau) area in M u band in the level slice",
    "smi_l3_cm2_m2": "cm^2/m^2; CSA of all skeletal-muscle labels at the L3 mid-vertebral slice / height^2",
    "qc_truncated_fov": "the muscle/group touches the first or last slice (cranio-caudal): volume cut by the field of view",
}
_NAME = re.compile(r"^(?:vertebra(?:e)?_)?([ctls])(\d{1,2})$")


def vertebra_name(name: str) -> str | None:
    """Standard vertebra name of a label name, or None: ``vertebrae_L3`` -> ``L3``, ``sacrum`` -> ``S1``.

    >>> vertebra_name("vertebrae_L3"), vertebra_name("sacrum"), vertebra_name("liver")
    ('L3', 'S1', None)
    """
    key = name.strip().lower()
    if key == "sacrum":
        return "S1"
    m = _NAME.match(key)
    if m is None:
        return None
    vname = f"{m.group(1).upper()}{int(m.group(2))}"
    return vname if vname in VERTEBRA_ORDER else None


def parse_level_group(name: str) -> tuple[str, str, str] | None:
    """``back_L1_L5`` -> ('back', 'L1', 'L5'); None for a plain group name.

    Raises LabelError when the vertebrae are unknown or not in cranio-caudal order.
    """
    m = re.match(r"^(.+)_([A-Za-z]\d{1,2})_([A-Za-z]\d{1,2})$", name)
    if m is None:
        return None
    top, bottom = (vertebra_name(v) for v in m.group(2, 3))
    if top is None or bottom is None:
        raise LabelError(f"group {name!r}: {m.group(2)} / {m.group(3)} are not vertebra names (C1-L5, S1)")
    if VERTEBRA_ORDER.index(top) > VERTEBRA_ORDER.index(bottom):
        raise LabelError(f"group {name!r}: {top} must be cranial of {bottom} (e.g. back_L1_L5)")
    group_members(m.group(1), [])  # unknown base group -> LabelError
    return m.group(1), top, bottom


@dataclass(frozen=True)
class Vertebra:
    """One labelled vertebra: positions (mm) along the body axis, cranial positive."""

    name: str
    label: int
    top_mm: float
    bottom_mm: float
    n_voxels: int
    complete: bool
    approximate: bool = False

    @property
    def centre_mm(self) -> float:
        """Position of the mid-vertebral plane along the body axis (mm)."""
        return 0.5 * (self.top_mm + self.bottom_mm)

    @property
    def height_mm(self) -> float:
        return self.top_mm - self.bottom_mm


@dataclass(frozen=True, eq=False)
class Levels:
    """Vertebrae found in a label map, ordered cranial to caudal, and the body axis."""

    axis: np.ndarray
    axis_source: str
    vertebrae: tuple[Vertebra, ...]
    notes: tuple[str, ...] = ()

    def get(self, name: str) -> Vertebra | None:
        """The vertebra named ``name`` (complete or not), or None."""
        return next((v for v in self.vertebrae if v.name == name), None)

    def complete(self, name: str) -> Vertebra | None:
        v = self.get(name)
        return v if v is not None and v.complete else None

    def boundaries(self) -> dict[str, float]:
        """``{"L3/L4": mm}``: middle of the gap between two consecutive complete vertebrae."""
        out = {}
        for a, b in itertools.pairwise(self.vertebrae):
            if a.complete and b.complete and _consecutive(a.name, b.name):
                out[f"{a.name}/{b.name}"] = 0.5 * (a.bottom_mm + b.top_mm)
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per vertebra: name, label, top/bottom/centre/height (mm), voxels, flags."""
        rows = [
            {"vertebra": v.name, "label": v.label, "top_mm": v.top_mm, "bottom_mm": v.bottom_mm,
             "centre_mm": v.centre_mm, "height_mm": v.height_mm, "n_voxels": v.n_voxels,
             "complete": v.complete, "approximate": v.approximate}
            for v in self.vertebrae
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": [float(a) for a in self.axis],
            "axis_source": self.axis_source,
            "vertebrae": self.to_frame().to_dict(orient="records"),
            "boundaries_mm": self.boundaries(),
            "notes": list(self.notes),
        }


def _consecutive(a: str, b: str) -> bool:
    return VERTEBRA_ORDER.index(b) - VERTEBRA_ORDER.index(a) == 1


def vertebra_ids(names: dict[int, str]) -> dict[int, str]:
    """Label id -> standard vertebra name for the ids of a profile that denote vertebrae."""
    out = {i: vertebra_name(n) for i, n in names.items()}
    return {i: v for i, v in out.items() if v is not None}


def _axis_from_centroids(centroids: np.ndarray, axis: Any) -> tuple[np.ndarray, str]:
    if not isinstance(axis, str):
        axis = np.asarray(axis, dtype=float)
        if axis.shape != (3,) or not np.all(np.isfinite(axis)) or np.linalg.norm(axis) == 0:
            raise DataError(f"body axis must be 'world', 'spine' or a 3-vector, got {axis}")
        source = "given"
    elif axis == "world":
        axis, source = np.array([0.0, 0.0, 1.0]), "world S"
    elif axis != "spine":
        raise DataError(f"body axis must be 'world', 'spine' or a 3-vector, got {axis!r}")
    elif len(centroids) >= 2:
        centred = centroids - centroids.mean(axis=0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        source = "spine (principal direction of the vertebra centroids)"
    else:
        axis, source = np.array([0.0, 0.0, 1.0]), "world S (fewer than two vertebrae for the spine axis)"
    axis = axis / np.linalg.norm(axis)
    if abs(axis[2]) < 1e-6:
        raise GeometryError("the body axis is perpendicular to world S: cannot tell cranial from caudal")
    return axis * np.sign(axis[2]), source


def slab_cdf(x: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Fraction of a box-shaped voxel on the low side of a plane at signed distance ``x`` (mm).

    ``widths`` are the voxel's edge vectors projected on the plane normal (mm); the fraction is
    the distribution function of a sum of uniform variables (exact for a parallelepiped).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.abs(np.asarray(widths, dtype=np.float64))
    w = w[w > 1e-3 * w.sum()]
    y = x + w.sum() / 2
    n = w.size
    total = np.zeros_like(y)
    for k in range(n + 1):
        for subset in itertools.combinations(w, k):
            total += (-1) ** k * np.maximum(y - sum(subset), 0.0) ** n
    return np.clip(total / (math.factorial(n) * float(np.prod(w))), 0.0, 1.0)


@dataclass
class _Voxels:
    """Flat indices, label ids and positions along the body axis of selected voxels."""

    idx: np.ndarray
    lab: np.ndarray
    t: np.ndarray
    on_face: np.ndarray | None = None


def _positions(idx: np.ndarray, shape: tuple[int, ...], affine: np.ndarray, axis: np.ndarray) -> np.ndarray:
    ijk = np.unravel_index(idx, shape)
    g = np.asarray(affine, dtype=float)[:3, :3].T @ axis
    return float(np.asarray(affine, dtype=float)[:3, 3] @ axis) + sum(g[d] * ijk[d] for d in range(3))


def _select(labels: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    flat = labels.ravel()
    lut = np.zeros(int(flat.max(initial=0)) + 1, dtype=bool)
    lut[[i for i in ids if 0 < i < lut.size]] = True
    idx = np.flatnonzero(lut[np.clip(flat, 0, None)])
    return idx, flat[idx].astype(np.int64)


def find_levels(
    labels: np.ndarray, affine: np.ndarray, names: dict[int, str], *, axis: Any = "world",
    source: str | None = None,
) -> Levels:
    """Vertebrae, their extents along the body axis and checks (see the module docstring).

    Parameters
    ----------
    labels : (X, Y, Z) integer vertebra label map; ``affine`` its (4, 4) voxel -> world (mm).
    names : label id -> name (``vertebrae_L3``, ``sacrum``, ...; other names are ignored).
    axis : ``"world"`` (world S, default), ``"spine"`` (fitted to the vertebra centroids) or a
        3-vector (world RAS) pointing cranially.
    source : file name for error messages.
    """
    labels = np.asarray(labels)
    ids = vertebra_ids(names)
    idx, lab = _select(labels, list(ids))
    if idx.size == 0:
        raise LabelError("no vertebra label present in the vertebra map", source=source)
    ijk = np.unravel_index(idx, labels.shape)
    world = (np.asarray(affine, dtype=float)[:3, :3] @ np.vstack(ijk)).T + np.asarray(affine)[:3, 3]
    present = sorted(set(lab.tolist()), key=lambda i: VERTEBRA_ORDER.index(ids[i]))
    if len({ids[i] for i in present}) < len(present):
        raise LabelError("two label ids name the same vertebra in the vertebra profile", source=source)
    centroids = np.array([world[lab == i].mean(axis=0) for i in present if ids[i] != "S1"])
    axis, axis_source = _axis_from_centroids(centroids, axis)
    t = world @ axis
    on_face = np.zeros(idx.size, dtype=bool)
    for d, n in enumerate(labels.shape):
        on_face |= (ijk[d] == 0) | (ijk[d] == n - 1)
    half = 0.5 * float(np.abs(np.asarray(affine, dtype=float)[:3, :3].T @ axis).sum())
    notes: list[str] = []
    vertebrae = [
        _one_vertebra(ids[i], i, t[lab == i], on_face[lab == i], half, notes, source) for i in present
    ]
    vertebrae = _finish_sacrum(vertebrae, half, t, lab, on_face)
    _check_levels(vertebrae, source)
    return Levels(axis=axis, axis_source=axis_source, vertebrae=tuple(vertebrae), notes=tuple(notes))


def _one_vertebra(name, label, t, on_face, half, notes, source) -> Vertebra:
    order = np.argsort(t)
    ts = t[order]
    cuts = np.flatnonzero(np.diff(ts) > 2.02 * half + 0.5) + 1
    pieces = np.split(np.arange(ts.size), cuts)
    big = [p for p in pieces if p.size >= STRAY_FRACTION * ts.size] or [max(pieces, key=len)]
    if len(big) > 1 and name != "S1":
        gap = ts[big[1][0]] - ts[big[0][-1]] - 2 * half
        raise LabelError(
            f"vertebra {name}: its label covers {len(big)} bodies separated by a {gap:.0f} mm gap "
            "along the spine (two vertebrae merged into one label?)",
            source=source,
        )
    keep = np.concatenate(big)  # the sacrum keeps all its segments (S1-S5 with fused discs)
    if keep.size < ts.size:
        notes.append(f"{name}: {ts.size - keep.size} stray voxels away from the vertebra ignored")
    ts = ts[keep]
    face = on_face[order][keep]
    return Vertebra(name, int(label), float(ts[-1] + half), float(ts[0] - half), int(ts.size), not face.any())


def _finish_sacrum(vertebrae: list[Vertebra], half: float, t, lab, on_face) -> list[Vertebra]:
    """S1 = the cranial part of the sacrum label, as high as L5 (else the median lumbar height)."""
    sacrum = next((v for v in vertebrae if v.name == "S1"), None)
    if sacrum is None:
        return vertebrae
    l5 = next((v for v in vertebrae if v.name == "L5" and v.complete), None)
    heights = [v.height_mm for v in vertebrae if v.complete and v.name != "S1"]
    if l5 is not None:
        height = l5.height_mm
    elif heights:
        height = float(np.median(heights))
    else:
        return [v if v.name != "S1" else Vertebra("S1", v.label, v.top_mm, v.bottom_mm, v.n_voxels, False, True)
                for v in vertebrae]
    bottom = sacrum.top_mm - height
    mine = (lab == sacrum.label) & (t >= bottom - half)
    s1 = Vertebra("S1", sacrum.label, sacrum.top_mm, bottom, int(mine.sum()), not on_face[mine].any(), True)
    return [s1 if v.name == "S1" else v for v in vertebrae]


def _check_levels(vertebrae: list[Vertebra], source: str | None) -> None:
    for a, b in itertools.pairwise(vertebrae):
        ia, ib = VERTEBRA_ORDER.index(a.name), VERTEBRA_ORDER.index(b.name)
        if ib - ia > 1:
            missing = ", ".join(VERTEBRA_ORDER[ia + 1 : ib])
            raise LabelError(f"vertebra {missing} missing between {a.name} and {b.name}", source=source)
        if a.centre_mm <= b.centre_mm:
            raise LabelError(
                f"vertebrae out of order: {a.name} (centre {a.centre_mm:.0f} mm) is not cranial of "
                f"{b.name} ({b.centre_mm:.0f} mm) along the spine",
                source=source,
            )
    whole = [v for v in vertebrae if v.complete and not v.approximate]
    heights = np.array([v.height_mm for v in whole])
    if heights.size >= 2:
        median = float(np.median(heights))
        for v in whole:
            others = np.median([h for w, h in zip(whole, heights, strict=True) if w is not v])
            if v.height_mm > MERGED_HEIGHT_RATIO * others:
                raise LabelError(
                    f"vertebra {v.name} is {v.height_mm:.0f} mm high, more than "
                    f"{MERGED_HEIGHT_RATIO:g} x the others' median {others:.0f} mm (two vertebrae merged?)",
                    source=source,
                )
        for a, b in itertools.pairwise(vertebrae):
            if a.complete and b.complete and a.centre_mm - b.centre_mm > GAP_RATIO * median:
                raise LabelError(
                    f"vertebrae {a.name} and {b.name} are {a.centre_mm - b.centre_mm:.0f} mm apart, more than "
                    f"{GAP_RATIO:g} x the median height {median:.0f} mm: an unlabelled vertebra lies between "
                    "them (labels shifted by one level?)",
                    source=source,
                )


def load_vertebrae(
    path: str | Path,
    profile: LabelProfile | str = DEFAULT_VERTEBRA_PROFILE,
    reference: Any | None = None,
    axis: Any = "world",
) -> LabelMap:
    """Load a vertebra label map NIfTI onto the canonical grid of ``reference`` (a DixonVolume).

    Under a declared shared grid (``reference.grid``, ``--grid-from``) it takes the grid's
    header as the muscle label map does (:func:`~myocomp.imaging.labelmap.label_grid`: same
    shape, voxel size and axes, else refused). The levels are checked here
    (:func:`find_levels` with ``axis``), so errors name the file.
    """
    from myocomp.imaging.dixon import load_nifti
    from myocomp.imaging.labelmap import label_grid

    img = load_nifti(path, role="vertebra map")
    affine = label_grid(img, getattr(reference, "grid", None), path, role="vertebra map")
    vmap = vertebrae_from_array(np.asanyarray(img.dataobj), affine, profile, reference, source=str(path))
    find_levels(vmap.data, vmap.affine, vmap.profile.ids, axis=axis, source=str(path))
    return vmap


def vertebrae_from_array(
    data: np.ndarray,
    affine: np.ndarray,
    profile: LabelProfile | str = DEFAULT_VERTEBRA_PROFILE,
    reference: Any | None = None,
    source: str | None = None,
) -> LabelMap:
    """Validate an in-memory vertebra label volume: integer ids known to ``profile``, at least one
    vertebra, and (with ``reference``) the reference's grid after canonical reorientation."""
    from myocomp.imaging.dixon import canonical, check_affine
    from myocomp.imaging.labelmap import check_on_grid
    from myocomp.imaging.labels import present_label_ids

    profile = get_profile(profile) if isinstance(profile, str) else profile
    data = np.asarray(data)
    if data.ndim != 3:
        raise GeometryError(f"vertebra map has {data.ndim} dimensions; 3 are needed", source=source)
    check_affine(affine, source=source, role="vertebra map")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise LabelError("vertebra map holds non-integer values", source=source)
        data = data.astype(np.int32)
    data, new_affine = canonical(data, np.asarray(affine, dtype=float))
    if reference is not None:
        check_on_grid(data.shape, new_affine, reference, "vertebra map", "vertebrae", source)
    present = [int(i) for i in present_label_ids(data)]
    unknown = [i for i in present if i not in profile.ids]
    if unknown:
        raise LabelError(
            f"label ids {', '.join(map(str, unknown[:12]))} are not in vertebra profile {profile.name!r}: "
            "wrong --vertebrae-profile?",
            source=source,
        )
    if not any(i in vertebra_ids(profile.ids) for i in present):
        raise LabelError(f"no vertebra of profile {profile.name!r} present", source=source)
    return LabelMap(data=data, affine=new_affine, profile=profile)


# --- metrics per level ---------------------------------------------------------------------


@dataclass
class _Region:
    """A part of the volume between two planes: rows of the level table or a level group."""

    kind: str
    level: str
    top: float
    bottom: float
    slab: float | None = None  # thickness (mm) for slice rows
    entities: dict[str, list[int]] = field(default_factory=dict)


def _regions(levels: Levels, slab_mm: float) -> list[_Region]:
    out = []
    for v in levels.vertebrae:
        if v.complete and v.name in REPORTED_LEVELS:
            c = v.centre_mm
            out.append(_Region("slice", v.name, c + slab_mm / 2, c - slab_mm / 2, slab_mm))
    for a, b in itertools.pairwise(levels.vertebrae):
        if a.complete and b.complete and a.name in REPORTED_LEVELS and b.name in REPORTED_LEVELS:
            out.append(_Region("span", f"{a.name}-{b.name}", a.centre_mm, b.centre_mm))
    return out


def _weights(t: np.ndarray, top: float, bottom: float, widths: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices into t, weights): the fraction of each voxel's volume between the two planes."""
    sel = np.flatnonzero((t < top + half) & (t > bottom - half))
    ts = t[sel]
    upper, lower = np.ones(sel.size), np.zeros(sel.size)
    edge = ts > top - half
    upper[edge] = slab_cdf(top - ts[edge], widths)
    edge = ts < bottom + half
    lower[edge] = slab_cdf(bottom - ts[edge], widths)
    w = upper - lower
    keep = w > 1e-12
    return sel[keep], w[keep]


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    if values.size == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _region_row(region: _Region, sums, band, v: float, bmi: float | None) -> dict[str, Any]:
    row = metric_row(*sums, *band, v, bmi)
    out = {"kind": region.kind, "level": region.level, "top_mm": region.top, "bottom_mm": region.bottom}
    if region.slab is not None:
        area = 10.0 * v / region.slab  # cm^2 per (weighted) voxel
        out.update(csa_cm2=sums[0] * area, ff_mean=row["ff_mean"],
                   lean_csa_cm2=row["lean_volume_ml"] / v * area if sums[0] > 0 else np.nan,
                   intermat_csa_cm2=row["intermat_volume_ml"] / v * area if sums[0] > 0 else np.nan)
    else:
        out.update(row)
    return out


def _band_table(labels, ids, band_mm, affine, axis, ff):
    """Band voxels of an entity: (positions along the axis, FF values)."""
    from myocomp.imaging.dixon import voxel_spacing

    band = band_voxels(labels, ids, band_mm, voxel_spacing(affine))
    flat = np.ravel_multi_index(band, labels.shape)
    return _positions(flat, labels.shape, affine, axis), ff[band]


@dataclass
class _Context:
    """The muscle voxels of one volume: positions along the axis, FF, entity membership, bands."""

    t: np.ndarray
    f: np.ndarray
    on_edge: np.ndarray
    members: dict[str, np.ndarray]
    bands: dict[str, tuple[np.ndarray, np.ndarray]]
    widths: np.ndarray
    half: float
    v: float
    bmi: float | None
    fat_threshold: float

    def measure(self, region: _Region, name: str, weights=None) -> tuple[dict[str, Any], bool] | None:
        """(row, touches the first/last slice) of entity ``name`` in ``region``; None if absent.

        ``weights``: the region's (indices, weights) from :func:`_weights`, if already known.
        """
        sel, w = weights or _weights(self.t, region.top, region.bottom, self.widths, self.half)
        m = self.members[name][sel]
        if not m.any():
            return None
        sums = _region_sums(self.f[sel][m], w[m], self.fat_threshold)
        band = (0.0, 0.0)
        if name in self.bands:
            bsel, bw = _weights(self.bands[name][0], region.top, region.bottom, self.widths, self.half)
            band = band_sums(self.bands[name][1][bsel], self.fat_threshold, weights=bw)
        return _region_row(region, sums, band, self.v, self.bmi), bool(self.on_edge[sel][m].any())


def _context(ff, labels, names, affine, levels, bases, fat_threshold, band_mm, bmi, edge_slices):
    from myocomp.imaging.dixon import voxel_volume_ml

    idx, lab = _select(np.asarray(labels), sorted(i for i, n in names.items() if is_muscle(n)))
    k = idx % labels.shape[2]
    widths = np.asarray(affine, dtype=float)[:3, :3].T @ levels.axis
    entities = {n: ids for n, ids in group_entities(names, set(lab.tolist()), bases).items() if ids}
    return _Context(
        t=_positions(idx, labels.shape, affine, levels.axis),
        f=np.asarray(ff).ravel()[idx].astype(np.float64),
        on_edge=((k == 0) & edge_slices[0]) | ((k == labels.shape[2] - 1) & edge_slices[1]),
        members={n: np.isin(lab, ids) for n, ids in entities.items()},
        bands={n: _band_table(labels, ids, band_mm, affine, levels.axis, ff) for n, ids in entities.items()}
        if band_mm > 0 else {},
        widths=widths, half=0.5 * float(np.abs(widths).sum()), v=voxel_volume_ml(affine), bmi=bmi,
        fat_threshold=fat_threshold,
    )


def level_metrics(
    ff: np.ndarray,
    labels: np.ndarray,
    names: dict[int, str],
    affine: np.ndarray,
    levels: Levels,
    *,
    groups: tuple[str, ...] | list[str] = ("back", "psoas"),
    level_groups: tuple[str, ...] | list[str] = (),
    fat_threshold: float = 0.5,
    band_mm: float = 0.0,
    bmi: float | None = None,
    edge_slices: tuple[bool, bool] = (True, True),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics per vertebral level and of coverage-normalised groups (see the module docstring).

    Parameters
    ----------
    ff, labels : (X, Y, Z) fat fraction (NaN invalid) and muscle label ids on the grid ``affine``.
    names : label id -> canonical name; ``levels`` from :func:`find_levels` (same world frame).
    groups : groups whose rows (and members') the level table holds; ``all`` is always added.
    level_groups : names like ``back_L1_L5`` (:func:`parse_level_group`).
    edge_slices : whether array slices 0 / -1 (axis 2) are the first / last slice of the image
        (``qc_truncated_fov`` is set for a row whose voxels lie there).

    Returns
    -------
    (levels table with :data:`LEVEL_COLUMNS` - ``slice`` and ``span`` rows per entity -,
    level-group rows with ``group``, ``level`` and the whole-volume metric columns).
    """
    parsed = {g: parse_level_group(g) for g in level_groups}
    bases = tuple(dict.fromkeys([*groups, "all", *(p[0] for p in parsed.values() if p)]))
    ctx = _context(ff, labels, names, affine, levels, bases, fat_threshold, band_mm, bmi, edge_slices)
    rows = []
    for region in _regions(levels, 2 * ctx.half):
        weights = _weights(ctx.t, region.top, region.bottom, ctx.widths, ctx.half)
        for name in ctx.members:
            got = ctx.measure(region, name, weights)
            if got is not None:
                rows.append({**got[0], "muscle": name, "qc_truncated_fov": got[1]})
    table = pd.DataFrame(rows, columns=list(LEVEL_COLUMNS))
    return table, _level_group_rows(ctx, levels, parsed)


def _level_group_rows(ctx: _Context, levels: Levels, parsed: dict) -> pd.DataFrame:
    """One row per coverage-normalised group; empty (NaN) and flagged without its vertebrae."""
    rows = []
    for gname, (base, top, bottom) in parsed.items():
        vt, vb = levels.complete(top), levels.complete(bottom)
        row = {"group": gname, "level": "group", **dict.fromkeys(METRIC_COLUMNS, np.nan), "qc_truncated_fov": True}
        got = None
        if vt is not None and vb is not None and base in ctx.members:
            got = ctx.measure(_Region("group", gname, vt.top_mm, vb.bottom_mm), base)
        if got is not None:
            row.update({c: got[0][c] for c in METRIC_COLUMNS}, qc_truncated_fov=got[1])
        rows.append(row)
    return pd.DataFrame(rows, columns=["group", "level", *METRIC_COLUMNS, "qc_truncated_fov"])


def _region_sums(f: np.ndarray, w: np.ndarray, fat_threshold: float) -> tuple[float, ...]:
    """Weighted (n, n_valid, ff_sum, n_fat, lean, median) of the voxels of one entity in one region."""
    valid = np.isfinite(f)
    fv, wv = f[valid], w[valid]
    fat = fv >= fat_threshold
    return (float(w.sum()), float(wv.sum()), float((wv * fv).sum()), float(wv[fat].sum()),
            float((wv[~fat] * (1.0 - fv[~fat])).sum()), _weighted_median(fv, wv))


def smi_l3(table: pd.DataFrame, height_cm: float | None) -> dict[str, Any]:
    """L3 skeletal-muscle index from a level table: CSA of all muscle labels at mid-L3 / height^2.

    Returns ``{"smi_l3_cm2_m2", "csa_l3_cm2", "muscles", "partial", "note"}``; the SMI is NaN
    without a height or without a complete L3. ``partial`` is True when no abdominal-wall muscle
    (or whole-muscle) label is present: the SMI then covers only the listed muscles.
    """
    from myocomp.imaging.labels import base_name

    if height_cm is not None and not 100.0 <= height_cm <= 250.0:
        raise DataError(f"height {height_cm} cm is outside the plausible range 100-250 cm")
    at_l3 = table[(table["kind"] == "slice") & (table["level"] == "L3")]
    all_row = at_l3[at_l3["muscle"] == "all"]
    muscles = sorted(m for m in at_l3["muscle"] if m not in ("all", "back", "psoas", "gluteal") and is_muscle(m))
    csa = float(all_row["csa_cm2"].iloc[0]) if len(all_row) else float("nan")
    partial = not any(base_name(m) in ABDOMINAL_WALL for m in muscles)
    smi = csa / (height_cm / 100.0) ** 2 if height_cm is not None else float("nan")
    if not len(all_row):
        note = "no complete L3 in the vertebra map: no SMI"
    elif partial:
        note = "partial SMI: no abdominal-wall muscle label; covers only " + ", ".join(muscles)
    else:
        note = "SMI over " + ", ".join(muscles)
    return {"smi_l3_cm2_m2": smi, "csa_l3_cm2": csa, "muscles": muscles, "partial": partial, "note": note}
