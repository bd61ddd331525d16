"""Whole-body stations: stitch overlapping volumes onto one grid in world coordinates.

NAKO and UK Biobank deliver the body as several overlapping stations per channel, each with its
own affine. :func:`stitch` resamples every station onto a common grid (trilinear,
:func:`scipy.ndimage.map_coordinates`), matches the intensity of adjacent stations (one scale
factor per station, the median voxel ratio in their overlap, applied to all channels alike so
the fat fraction is unchanged) and blends overlaps with linear weights that fall to zero at
each station's edge.

The common grid keeps the orientation and voxel size of the first station (after sorting the
stations along their stacking direction) and covers the union of all stations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from myocomp.errors import GeometryError

#: Voxels whose summed channel signal is below this fraction of the station's 99th percentile
#: are ignored when estimating the intensity scale (background noise has no stable ratio).
SIGNAL_FRACTION = 0.1


@dataclass(frozen=True, eq=False)
class Station:
    """One station: channel arrays (name -> (X, Y, Z) array) sharing ``affine`` (voxel -> mm)."""

    channels: dict[str, np.ndarray]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(next(iter(self.channels.values())).shape)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class StitchResult:
    """Stitched channels on one grid, the grid's affine and the scale applied to each station."""

    channels: dict[str, np.ndarray]
    affine: np.ndarray
    scales: tuple[float, ...]
    order: tuple[int, ...]


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    idx = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    return np.vstack([idx, np.ones(idx.shape[1])])


def union_grid(
    affines: Sequence[np.ndarray], shapes: Sequence[tuple[int, int, int]]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Grid (affine, shape) with the first affine's axes and spacing covering every station.

    Station corners are mapped into the first station's voxel coordinates; the grid spans their
    bounding box (voxel positions within 1e-3 voxel of an integer are snapped to it).
    """
    ref = np.asarray(affines[0], dtype=float)
    inv = np.linalg.inv(ref)
    pts = np.hstack(
        [
            inv @ np.asarray(a, dtype=float) @ _corners(s)
            for a, s in zip(affines, shapes, strict=True)
        ]
    )[:3]
    lo = np.floor(pts.min(axis=1) + 1e-3)
    hi = np.ceil(pts.max(axis=1) - 1e-3)
    shape = tuple(int(v) for v in (hi - lo + 1))
    affine = ref.copy()
    affine[:3, 3] = (ref @ np.append(lo, 1.0))[:3]
    return affine, shape  # type: ignore[return-value]


def _station_axis(affine: np.ndarray, direction: np.ndarray) -> int:
    """The station's voxel axis most parallel to the world ``direction``."""
    cols = np.asarray(affine, dtype=float)[:3, :3]
    cos = np.abs(direction @ cols) / np.linalg.norm(cols, axis=0)
    return int(np.argmax(cos))


def _resample(
    station: Station,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    stack_dir: np.ndarray,
    slab: int = 16,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Resample a station's channels onto the target grid; returns (channels, blend weight).

    Works in slabs of ``slab`` target slices so that memory stays proportional to one slab.
    """
    mapping = np.linalg.inv(np.asarray(station.affine, dtype=float)) @ target_affine
    shape = np.array(station.shape, dtype=float)[:, None]
    axis = _station_axis(station.affine, stack_dir)
    n = shape[axis, 0]
    tol = 1e-3
    sources = {name: np.asarray(arr, dtype=np.float64) for name, arr in station.channels.items()}
    out = {name: np.zeros(target_shape, dtype=np.float64) for name in sources}
    weight = np.zeros(target_shape, dtype=np.float64)
    for z0 in range(0, target_shape[2], slab):
        z1 = min(z0 + slab, target_shape[2])
        sub_shape = (target_shape[0], target_shape[1], z1 - z0)
        grid = np.indices(sub_shape, dtype=np.float64).reshape(3, -1)
        grid[2] += z0
        coords = mapping[:3, :3] @ grid + mapping[:3, 3:4]
        inside = np.all((coords >= -tol) & (coords <= shape - 1 + tol), axis=0)
        if not inside.any():
            continue
        c = coords[axis]
        # Distance (voxels) to the nearer end of the station along its stacking axis, + 1 so
        # that edge voxels still count where no other station covers them.
        w = np.where(inside, np.clip(np.minimum(c, n - 1 - c), 0.0, None) + 1.0, 0.0)
        weight[:, :, z0:z1] = w.reshape(sub_shape)
        sub = coords[:, inside]
        for name, arr in sources.items():
            values = np.zeros(grid.shape[1], dtype=np.float64)
            values[inside] = ndimage.map_coordinates(arr, sub, order=1, mode="nearest")
            out[name][:, :, z0:z1] = values.reshape(sub_shape)
    return out, weight


def _overlap_scale(
    ref: np.ndarray, ref_w: np.ndarray, cur: np.ndarray, cur_w: np.ndarray
) -> float | None:
    """Median of ref / cur over voxels both stations cover with real signal; None if no overlap."""
    both = (ref_w > 0) & (cur_w > 0) & np.isfinite(ref) & np.isfinite(cur)
    if not both.any():
        return None
    thr_ref = SIGNAL_FRACTION * np.nanpercentile(ref[ref_w > 0], 99)
    thr_cur = SIGNAL_FRACTION * np.nanpercentile(cur[cur_w > 0], 99)
    sel = both & (ref > thr_ref) & (cur > thr_cur)
    if sel.sum() < 10:
        return None
    return float(np.median(ref[sel] / cur[sel]))


#: the union grid may hold at most this many times the stations' voxels together (rotated stacks
#: need some slack; far-apart stations need far more and are refused before allocating)
UNION_SLACK = 2.0


def check_union_size(shape: tuple[int, int, int], station_shapes: Sequence[tuple[int, ...]]) -> None:
    """Refuse a union grid far larger than the stations (they do not form a stack) or above the
    voxel limit (:func:`myocomp.imaging.dixon.max_voxels`), before anything is allocated."""
    from myocomp.imaging.dixon import max_voxels

    n_union = int(np.prod(shape, dtype=object))
    n_stations = sum(int(np.prod(s, dtype=object)) for s in station_shapes)
    if n_union > UNION_SLACK * n_stations:
        raise GeometryError(
            f"the stations' union grid would be {'x'.join(map(str, shape))} voxels, "
            f"{n_union / n_stations:.3g} times the stations' own: they lie far apart, not in one "
            "overlapping stack (check their positions)")
    if n_union > max_voxels():
        raise GeometryError(f"the stations' union grid {'x'.join(map(str, shape))} exceeds the "
                            f"voxel limit {max_voxels():.3g} (MYOCOMP_MAX_VOXELS)")


def stitch(stations: Sequence[Station], *, intensity_match: bool = True) -> StitchResult:
    """Stitch overlapping stations (same channel names each) onto one grid.

    Stations are ordered along their stacking direction (the line through the station centres,
    pointing towards increasing world coordinate, e.g. inferior -> superior), whatever order
    they are given in. Station k is scaled so that its overlap with station k-1 (already
    scaled) has a median ratio of 1, using the sum of all channels; the first station keeps its
    intensities. Voxels no station covers are 0. Returns float32 channels.
    """
    names = _check_stations(stations)
    direction, order = _stack_order(stations)
    ordered = [stations[i] for i in order]

    affine, shape = union_grid([s.affine for s in ordered], [s.shape for s in ordered])
    check_union_size(shape, [s.shape for s in ordered])
    acc = {name: np.zeros(shape, dtype=np.float64) for name in names}
    wsum = np.zeros(shape, dtype=np.float64)
    scales: list[float] = []
    prev: tuple[np.ndarray, np.ndarray] | None = None
    for k, st in enumerate(ordered):
        values, weight = _resample(st, affine, shape, direction)
        total = sum(values.values())
        scale = 1.0
        if intensity_match and prev is not None:
            ratio = _overlap_scale(prev[0], prev[1], total, weight)
            if ratio is None:
                raise GeometryError(
                    f"stations {order[k - 1] + 1} and {order[k] + 1} do not overlap; cannot match intensities"
                )
            scale = ratio
        scales.append(scale)
        for name in names:
            acc[name] += weight * scale * values[name]
        wsum += weight
        prev = (total * scale, weight)
    covered = wsum > 0
    out = {}
    for name in names:
        arr = np.zeros(shape, dtype=np.float32)
        arr[covered] = (acc[name][covered] / wsum[covered]).astype(np.float32)
        out[name] = arr
    inv_scales = [0.0] * len(stations)
    for pos, i in enumerate(order):
        inv_scales[i] = scales[pos]
    return StitchResult(channels=out, affine=affine, scales=tuple(inv_scales), order=order)



def _check_stations(stations: Sequence[Station]) -> set[str]:
    """The channel names shared by every station (3-D arrays of one shape, a valid affine each)."""
    if not stations:
        raise GeometryError("no stations to stitch")
    names = set(stations[0].channels)
    for i, st in enumerate(stations):
        if set(st.channels) != names:
            raise GeometryError(
                f"station {i + 1} has channels {sorted(st.channels)}, expected {sorted(names)}"
            )
        shapes = {a.shape for a in st.channels.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise GeometryError(
                f"station {i + 1}: channels must be 3-D arrays of one shape, got {sorted(shapes)}"
            )
        aff = np.asarray(st.affine, dtype=float)
        if (
            aff.shape != (4, 4)
            or not np.all(np.isfinite(aff))
            or abs(np.linalg.det(aff[:3, :3])) < 1e-9
        ):
            raise GeometryError(f"station {i + 1} has an invalid affine")
    return names


def _stack_order(stations: Sequence[Station]) -> tuple[np.ndarray, tuple[int, ...]]:
    """(unit stacking direction towards increasing world coordinate, station order along it)."""
    centres = np.array(
        [
            (np.asarray(s.affine) @ np.append((np.array(s.shape) - 1) / 2.0, 1.0))[:3]
            for s in stations
        ]
    )
    if len(stations) > 1:
        span = centres - centres[0]
        direction = span[np.argmax(np.linalg.norm(span, axis=1))]
        if np.linalg.norm(direction) < 1e-6:
            raise GeometryError("stations share one centre; they do not form a stack")
        direction = direction / np.linalg.norm(direction)
        if direction[np.argmax(np.abs(direction))] < 0:
            direction = -direction  # order from the lower world coordinate (e.g. feet first)
    else:
        direction = np.asarray(stations[0].affine, dtype=float)[:3, 2]
        direction = direction / np.linalg.norm(direction)
    return direction, tuple(int(i) for i in np.argsort(centres @ direction, kind="stable"))


def stitch_dixon(
    stations: dict[str, Sequence[str | Path]], *, intensity_match: bool = True, source: str = ""
):
    """Load station NIfTI files per channel (``{"water": [...], "fat": [...], ...}``), stitch them
    and return a canonical :class:`~myocomp.imaging.dixon.DixonVolume`.

    Station k of every channel must share one grid (checked). Water and fat are required.
    """
    from myocomp.imaging.dixon import dixon_from_arrays, load_nifti, same_grid

    counts = {ch: len(v) for ch, v in stations.items()}
    if not stations.get("water") or not stations.get("fat"):
        raise GeometryError("water and fat stations are both needed", source=source or None)
    if len(set(counts.values())) != 1:
        raise GeometryError(
            f"channels have different station counts {counts}", source=source or None
        )
    loaded: list[Station] = []
    for k in range(counts["water"]):
        imgs = {ch: load_nifti(paths[k], f"{ch} station {k + 1}") for ch, paths in stations.items()}
        ref = imgs["water"]
        for ch, img in imgs.items():
            if img.shape != ref.shape or not same_grid(img.affine, ref.affine, shape=ref.shape):
                raise GeometryError(
                    f"{ch} station {k + 1} is not on the grid of water station {k + 1}",
                    source=stations[ch][k],
                )
        loaded.append(
            Station(
                channels={ch: np.asanyarray(img.dataobj) for ch, img in imgs.items()},
                affine=ref.affine,
            )
        )
    res = stitch(loaded, intensity_match=intensity_match)
    return dixon_from_arrays(
        res.channels["water"],
        res.channels["fat"],
        res.affine,
        in_phase=res.channels.get("in_phase"),
        opposed_phase=res.channels.get("opposed_phase"),
        source=source or f"stitched from {counts['water']} stations",
    )
