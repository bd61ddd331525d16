"""Dixon water/fat volumes: loading, validation, canonical orientation and the fat-fraction map.

Every volume is reoriented on load to the closest canonical RAS+ orientation
(:func:`nibabel.as_closest_canonical`): array axis 0 runs left->right, 1 posterior->anterior,
2 inferior->superior. The affine travels with the arrays, so geometry is never guessed, and a
volume stored with flipped or permuted axes gives the same arrays (and metrics) as the original.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from myocomp.errors import ConfigError, GeometryError, InputFileError
from myocomp.imaging._nib import nib

#: Largest distance (mm) between corresponding voxel corners of two grids that count as the same
#: grid (:func:`same_grid`). Scanner exports round positions to ~1e-4 mm.
AFFINE_ATOL = 1e-3

#: Largest number of voxels one image may declare (``MYOCOMP_MAX_VOXELS`` overrides it): 2**30,
#: 4 GiB as float32, far above a whole-body scan (~1e8 voxels).
MAX_VOXELS = 2**30

#: Largest ratio of uncompressed to compressed size that deflate can reach (~1032:1), with margin.
GZIP_MAX_RATIO = 1100

#: Volumes of at least this many voxels get their fat fraction computed by two threads.
PARALLEL_FF_VOXELS = 1 << 21

#: Default noise floor of the fat-fraction map, as a fraction of the 99th percentile of W + F.
NOISE_FLOOR_FRACTION = 0.05


@dataclass(frozen=True, eq=False)
class DixonVolume:
    """Water and fat images (and optional in/opposed phase) on one grid, canonical RAS+ orientation.

    Attributes
    ----------
    water, fat : (X, Y, Z) float32 arrays, arbitrary signal units, or the 8/16-bit integer
        arrays of the file as stored (:data:`COMPACT_DTYPES`, kept to save memory: convert with
        ``np.asarray(x, np.float32)`` before arithmetic). ``fat`` is None for a single contrast
        image (then ``water`` holds that image).
    affine : (4, 4) voxel -> world (mm, RAS+) transform.
    in_phase, opposed_phase : optional (X, Y, Z) arrays, as ``water``.
    source : description of where the data came from (a path; never patient identifiers).
    grid : None, or the record of a declared shared grid (:func:`adopt_grid`; ``--grid-from``):
        which image's header was used and how much each replaced header differed.
    """

    water: np.ndarray
    fat: np.ndarray | None
    affine: np.ndarray
    in_phase: np.ndarray | None = None
    opposed_phase: np.ndarray | None = None
    source: str = ""
    grid: dict | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.water.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm) along the three array axes."""
        return voxel_spacing(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (|det| of the affine's 3x3 part, mm^3 / 1000)."""
        return voxel_volume_ml(self.affine)

    @property
    def single_contrast(self) -> bool:
        return self.fat is None

    @functools.cached_property
    def background_noise(self) -> NoiseEstimate:
        """:func:`estimate_noise_sigma` of water and fat, computed once per volume (the arrays
        are not to be changed after loading); a volume without fat has no estimate."""
        if self.fat is None:
            return NoiseEstimate(None, "background", 0, "no fat image")
        return estimate_noise_sigma(self.water, self.fat)

    @functools.cached_property
    def noise_floor(self) -> float:
        """:func:`default_noise_floor` of water and fat, computed once per volume."""
        return default_noise_floor(self.water, self.fat)

    @functools.cached_property
    def negative_counts(self) -> dict[str, int]:
        """:func:`negative_voxels` of the volume, counted once."""
        return negative_voxels(self)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm: the norms of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Voxel volume in mL from an affine: |det(A[:3, :3])| mm^3 / 1000."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def load_nifti(path: str | Path, role: str = "image") -> nib.Nifti1Image:
    """Load a NIfTI file, check it is one 3-D volume with a valid affine, and read its data.

    A trailing singleton 4th dimension is accepted (common in exports). The returned image holds
    its data in memory (so a truncated file fails here, not later). ``role`` names the image in
    error messages (e.g. "water").
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{role} image not found", source=path)
    if not path.is_file():
        raise InputFileError(f"{role} image is not a file", source=path)
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError as exc:
        raise InputFileError(f"{role} image is not a NIfTI file ({exc})", source=path) from exc
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputFileError(f"{role} image cannot be read ({type(exc).__name__}: {exc})", source=path) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputFileError(f"{role} image is a {type(img).__name__}, not NIfTI", source=path)
    check_declared_size(img, path, role=role)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = img.shape
    if len(shape) != 3:
        raise GeometryError(
            f"{role} image has {len(shape)} dimensions {tuple(shape)}; one 3-D volume per channel is needed",
            source=path,
        )
    if min(shape) < 1:
        raise GeometryError(f"{role} image is empty {tuple(shape)}", source=path)
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputFileError(
            f"{role} image is truncated or corrupt ({type(exc).__name__}: {exc})", source=path
        ) from exc
    check_affine(img.affine, source=path, role=role)
    return nib.Nifti1Image(data, img.affine, header=img.header)


def max_voxels() -> int:
    """The voxel limit: ``MYOCOMP_MAX_VOXELS`` from the environment, else :data:`MAX_VOXELS`."""
    import os

    text = os.environ.get("MYOCOMP_MAX_VOXELS", "")
    try:
        return int(float(text)) if text else MAX_VOXELS
    except ValueError:
        raise InputFileError(f"MYOCOMP_MAX_VOXELS={text!r} is not a number") from None


def check_declared_size(img: nib.Nifti1Image, path: str | Path, *, role: str = "image",
                        limit: int | None = None) -> None:
    """Refuse a NIfTI whose header declares more data than the file can hold, before reading it.

    The declared size (voxels x bytes per voxel + data offset) must not exceed ``limit`` voxels
    (default :func:`max_voxels`) nor the file size; for a gzip file, not its size times
    :data:`GZIP_MAX_RATIO` (the most deflate can compress) nor, for a single-member file under
    4 GiB, the uncompressed size in the gzip trailer (ISIZE).
    """
    path = Path(path)
    shape = tuple(int(n) for n in img.header.get_data_shape())
    n_voxels = int(np.prod(shape, dtype=object)) if shape else 0
    limit = max_voxels() if limit is None else limit
    if n_voxels > limit:
        raise InputFileError(
            f"{role} image header declares {'x'.join(map(str, shape))} = {n_voxels:.3g} voxels, "
            f"above the limit of {limit:.3g} (set MYOCOMP_MAX_VOXELS to raise it)", source=path)
    itemsize = np.dtype(img.header.get_data_dtype()).itemsize
    needed = n_voxels * itemsize + int(img.header.get("vox_offset", 0) or 0)
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        isize = _gzip_isize(path)
        if needed > size * GZIP_MAX_RATIO or (isize is not None and needed < 2**32 and isize < needed):
            raise InputFileError(
                f"{role} image header declares {needed:,} bytes of data but the compressed file "
                f"({size:,} bytes) holds {'far less' if isize is None else f'{isize:,} bytes uncompressed'}: "
                "truncated or corrupt", source=path)
    elif needed > size:
        raise InputFileError(f"{role} image header declares {needed:,} bytes but the file has "
                             f"{size:,}: truncated or corrupt", source=path)


def _gzip_isize(path: Path) -> int | None:
    """Uncompressed size from the trailer of a single-member gzip file, else None."""
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0, 2)
        if head != b"\x1f\x8b" or fh.tell() < 18:
            return None
        fh.seek(-4, 2)
        return int.from_bytes(fh.read(4), "little")


def check_affine(affine: np.ndarray, *, source: str | Path | None = None, role: str = "image") -> None:
    """Raise :class:`GeometryError` unless ``affine`` is a finite, invertible 4x4 transform."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(f"{role} image has a non-finite or malformed affine", source=source)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise GeometryError(f"{role} image has a singular affine (zero voxel size)", source=source)


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``data`` to the closest canonical RAS+ orientation; returns (data, affine).

    Only axis permutations and flips are applied (no resampling), so values are unchanged; the
    result may be a view of ``data`` with flipped strides.
    """
    ornt = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, target)
    out = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return out, new_affine


def grid_distance_mm(affine_a: np.ndarray, affine_b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between the positions the two affines give one voxel corner, over the
    8 corners of a grid of ``shape`` (the distance is affine in the index, so it peaks there)."""
    a, b = np.asarray(affine_a, dtype=float), np.asarray(affine_b, dtype=float)
    extent = [(-0.5, n - 0.5) for n in tuple(shape)[:3]]
    corners = np.array([[i, j, k, 1.0] for i in extent[0] for j in extent[1] for k in extent[2]])
    return float(np.linalg.norm(corners @ (a - b)[:3].T, axis=1).max())


def same_grid(affine_a: np.ndarray, affine_b: np.ndarray, atol: float = AFFINE_ATOL,
              shape: tuple[int, ...] | None = None) -> bool:
    """True if every voxel corner of a grid of ``shape`` lies within ``atol`` mm under both affines.

    Without ``shape`` a single voxel at the origin is compared (its corners). A rotation of
    0.3 mrad moves the far corners of a 400 mm field of view by ~0.1 mm: not the same grid.
    """
    shape = (1, 1, 1) if shape is None else shape
    return grid_distance_mm(affine_a, affine_b, shape) <= atol


def dixon_from_arrays(
    water: np.ndarray,
    fat: np.ndarray | None,
    affine: np.ndarray,
    in_phase: np.ndarray | None = None,
    opposed_phase: np.ndarray | None = None,
    source: str = "",
) -> DixonVolume:
    """Validate in-memory channels that share ``affine`` and return a canonical :class:`DixonVolume`.

    Checks: 3-D, identical shapes, a valid affine, and at least one finite voxel per channel.
    Non-finite voxels are kept as NaN and later marked invalid in the fat-fraction map.
    """
    check_affine(affine, source=source or None)
    channels = {"water": water, "fat": fat, "in_phase": in_phase, "opposed_phase": opposed_phase}
    ref_shape = np.shape(water)
    out: dict[str, np.ndarray | None] = {}
    new_affine = np.asarray(affine, dtype=float)
    for role, arr in channels.items():
        if arr is None:
            out[role] = None
            continue
        arr = np.asarray(arr)
        if arr.ndim != 3:
            raise GeometryError(f"{role} image has {arr.ndim} dimensions; 3 are needed", source=source or None)
        if arr.shape != ref_shape:
            raise GeometryError(
                f"{role} image shape {arr.shape} differs from water image shape {ref_shape}",
                source=source or None,
            )
        arr = _compact(arr)
        if not _any_finite(arr):
            raise InputFileError(f"{role} image has no finite voxel (all NaN/inf)", source=source or None)
        out[role], new_affine = canonical(arr, np.asarray(affine, dtype=float))
    return DixonVolume(
        water=out["water"],  # type: ignore[arg-type]
        fat=out["fat"],
        affine=new_affine,
        in_phase=out["in_phase"],
        opposed_phase=out["opposed_phase"],
        source=source,
    )


#: Integer image dtypes kept as stored (float32 holds all their values exactly); others -> float32.
COMPACT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16))


def _compact(arr: np.ndarray) -> np.ndarray:
    """``arr`` itself if of a :data:`COMPACT_DTYPES` dtype, else as float32 (no copy if it is)."""
    return arr if arr.dtype in COMPACT_DTYPES else arr.astype(np.float32, copy=False)


def _any_finite(arr: np.ndarray) -> bool:
    """True if any element is finite; checks a strided sample first (cheap on big volumes)."""
    flat = arr.ravel(order="K")  # NIfTI data are Fortran-ordered: "K" avoids a copy
    return bool(np.isfinite(flat[:: max(1, flat.size // 100_000)]).any() or np.isfinite(flat).any())


def load_dixon(
    water: str | Path,
    fat: str | Path | None = None,
    in_phase: str | Path | None = None,
    opposed_phase: str | Path | None = None,
    *,
    grid_from: str | None = None,
) -> DixonVolume:
    """Load Dixon channels from NIfTI files onto one canonical grid.

    Each image must be one 3-D volume; all must share the water image's shape and affine (to
    :data:`AFFINE_ATOL` mm), otherwise :class:`GeometryError` names the offending file and how
    the headers differ. ``grid_from`` (a channel name) declares that the arrays share one voxel
    grid and only the headers differ: every channel takes that channel's affine, if
    :func:`adopt_grid` allows it; the volume's ``grid`` records what was replaced.
    ``fat=None`` gives a single-contrast volume (e.g. T1w) for the approximate GMM mode.
    Channels are read concurrently (threads; gzip decoding releases the GIL).
    """
    paths = {"water": water, "fat": fat, "in_phase": in_phase, "opposed_phase": opposed_phase}
    paths = {role: p for role, p in paths.items() if p is not None}
    if grid_from is not None and grid_from not in paths:
        raise GeometryError(f"--grid-from {grid_from}: no {grid_from} image given (one of {', '.join(paths)})")
    with ThreadPoolExecutor(max_workers=len(paths)) as pool:  # decompression releases the GIL
        futures = {role: pool.submit(_read_channel, p, role) for role, p in paths.items()}
        channels = {role: future.result() for role, future in futures.items()}
    grid = _declare_grid(channels, paths, grid_from) if grid_from is not None else None
    ref_shape, ref_affine = channels["water"][1:]
    for role, (_, shape, affine) in channels.items():
        if shape != ref_shape:
            raise GeometryError(
                f"{role} image shape {shape} differs from water image shape {ref_shape} ({water})",
                source=paths[role],
            )
        if not same_grid(affine, ref_affine, shape=ref_shape):
            raise GeometryError(
                f"{role} image affine differs from the water image's ({water}): voxel corners up "
                f"to {grid_distance_mm(affine, ref_affine, ref_shape):.3g} mm apart, more than "
                f"{AFFINE_ATOL:g} mm ({affine_difference(affine, ref_affine)}): not the same grid. If both "
                f"arrays are on one voxel grid and only the headers differ, declare it with --grid-from "
                f"water or --grid-from {role} (recorded; nothing is resampled)",
                source=paths[role],
            )
    arrays = {role: channel[0] for role, channel in channels.items()}
    volume = dixon_from_arrays(
        arrays["water"],
        arrays.get("fat"),
        ref_affine,
        in_phase=arrays.get("in_phase"),
        opposed_phase=arrays.get("opposed_phase"),
        source=str(water),
    )
    return dataclasses.replace(volume, grid=grid) if grid is not None else volume


def _declare_grid(channels: dict, paths: dict, grid_from: str) -> dict:
    """Give every channel the affine of ``grid_from`` (in place, as :func:`adopt_grid` allows)."""
    grid_shape, grid_affine = channels[grid_from][1:]
    grid = {"from": grid_from, "file": str(paths[grid_from]), "shape": list(grid_shape),
            "affine": grid_affine.tolist(), "replaced": {}}
    for role, (data, shape, affine) in channels.items():
        if role != grid_from:
            change = adopt_grid(shape, affine, grid_shape, grid_affine, role, grid_from, paths[role])
            if change:
                grid["replaced"][role] = change
            channels[role] = (data, shape, grid_affine)
    return grid


#: Largest relative difference of voxel edge lengths accepted by :func:`adopt_grid`.
GRID_SPACING_RTOL = 1e-3


def affine_difference(affine: np.ndarray, reference: np.ndarray) -> str:
    """How two voxel -> world affines differ, e.g. ``origin by (204.5, 147.9, 192.8) mm (317.6 mm),
    voxel size by up to 1.86e-05 mm`` (also axis directions, in degrees); ``nothing`` if equal."""
    affine, reference = np.asarray(affine, dtype=float), np.asarray(reference, dtype=float)
    origin = affine[:3, 3] - reference[:3, 3]
    size, ref_size = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(reference[:3, :3], axis=0)
    cosines = np.sum(affine[:3, :3] / size * (reference[:3, :3] / ref_size), axis=0)
    angle = float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())
    parts = []
    if np.abs(origin).max() > 0:
        parts.append("origin by (" + ", ".join(f"{v:.4g}" for v in origin) + f") mm ({np.linalg.norm(origin):.4g} mm)")
    if angle > 0:
        parts.append(f"axis directions by up to {angle:.3g} degrees")
    if np.abs(size - ref_size).max() > 0:
        parts.append(f"voxel size by up to {np.abs(size - ref_size).max():.3g} mm")
    return ", ".join(parts) if parts else "nothing"


def adopt_grid(
    shape: tuple[int, ...], affine: np.ndarray, grid_shape: tuple[int, ...], grid_affine: np.ndarray,
    role: str, grid_role: str, source: str | Path | None = None,
) -> dict | None:
    """Check that an image may take ``grid_affine`` (a declared shared grid; never resampled).

    Allowed when the shape is the same, the voxel sizes agree to :data:`GRID_SPACING_RTOL` and the
    axis codes (orientation) are the same, i.e. the arrays index the same voxels and only the
    header differs (e.g. an origin lost in a conversion). Returns None if the affines already agree,
    else the record of what differed (for the provenance); raises :class:`GeometryError` otherwise.
    """
    if tuple(shape) != tuple(grid_shape):
        raise GeometryError(f"--grid-from {grid_role}: {role} image shape {tuple(shape)} differs from "
                            f"{tuple(grid_shape)}; only headers of equal grids can be replaced", source=source)
    size, grid_size = voxel_spacing(affine), voxel_spacing(grid_affine)
    if not np.allclose(size, grid_size, rtol=GRID_SPACING_RTOL, atol=0):
        raise GeometryError(f"--grid-from {grid_role}: {role} voxel size {np.round(size, 5).tolist()} mm differs "
                            f"from {np.round(grid_size, 5).tolist()} mm; only headers of equal grids can be replaced",
                            source=source)
    codes = nib.orientations.aff2axcodes(affine), nib.orientations.aff2axcodes(grid_affine)
    if codes[0] != codes[1]:
        raise GeometryError(f"--grid-from {grid_role}: {role} axes {''.join(codes[0])} differ from "
                            f"{''.join(codes[1])} (a flip or permutation, not a header defect)", source=source)
    if same_grid(affine, grid_affine, shape=tuple(shape)):
        return None
    return {"difference": affine_difference(affine, grid_affine), "affine_replaced": np.asarray(affine).tolist()}


def _read_channel(path: str | Path, role: str) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """(data, shape, affine) of one channel file; data as :func:`_compact` keeps it (8/16-bit
    integers as stored, anything else float32, converted here so both never coexist long)."""
    img = load_nifti(path, role)
    data = _compact(np.asanyarray(img.dataobj))
    if not _any_finite(data):
        raise InputFileError(f"{role} image has no finite voxel (all NaN/inf)", source=path)
    return data, tuple(img.shape), img.affine


def negative_voxels(dixon: DixonVolume) -> dict[str, int]:
    """Number of negative voxels of the water and fat images (signed, real-valued Dixon output).

    Magnitude images have none; the output of a phase-corrected separation (e.g. 3-point Dixon,
    Glover & Schneider) is signed: around zero its noise is Gaussian, so F / (W + F) of the
    signed values has no Rician floor and is used as it is (see :func:`fat_fraction`).
    """
    counts = {}
    for role in ("water", "fat"):
        arr = getattr(dixon, role)
        if arr is None or arr.dtype.kind == "u":
            counts[role] = 0
            continue
        least = np.nanmin if arr.dtype.kind == "f" else np.min  # integers hold no NaN
        negative = bool(least(strided_sample(arr)) < 0 or least(arr) < 0)
        counts[role] = int(np.count_nonzero(arr < 0)) if negative else 0
    return counts


def default_noise_floor(water: np.ndarray, fat: np.ndarray | None = None) -> float:
    """Default noise floor: :data:`NOISE_FLOOR_FRACTION` x the 99th percentile of finite W + F.

    The percentile is taken on a strided sample of at most ~2 million voxels (cheap on
    whole-body volumes; the percentile barely moves).
    """
    total = strided_sample(water).astype(np.float32)
    if fat is not None:
        total += strided_sample(fat)
    finite = total[np.isfinite(total)]
    return float(NOISE_FLOOR_FRACTION * np.percentile(finite, 99)) if finite.size else 0.0


#: Fat-fraction estimators (``--ff-method``); see :func:`fat_fraction`.
FF_METHODS = ("ratio", "noise-corrected", "magnitude-discrimination")

#: Fewest background voxels (non-zero, below the noise floor) for a noise estimate.
MIN_BACKGROUND_VOXELS = 1000

# Design of the noise-corrected ratio (see _rician_ratio_table): knots of the correction in
# units of sigma, the grid of the large signal (units of sigma) and the smoothness penalty.
_KNOT_STEP = 0.25
_KNOT_MAX = 8.0
_LARGE_GRID = np.geomspace(1.0, 400.0, 60)
_SMOOTHNESS = 10.0
_CHUNK = 1 << 18


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise of the magnitude images: ``sigma`` (signal units, per real/imaginary channel).

    ``source`` is ``"background"`` (estimated) or ``"given"``; ``n_voxels`` the background
    voxels used (0 when given). ``sigma`` is None when it could not be estimated (``note`` says why).
    """

    sigma: float | None
    source: str
    n_voxels: int = 0
    note: str = ""


def sample_step(arr: np.ndarray, max_voxels: int = 2_000_000) -> int:
    """The stride, the same along every axis, that leaves at most about ``max_voxels`` voxels."""
    return max(1, int(np.ceil((arr.size / max_voxels) ** (1 / arr.ndim))))


def strided_sample(arr: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    """A view of ``arr`` on the :func:`sample_step` stride along every axis."""
    step = sample_step(arr, max_voxels)
    return arr[(slice(None, None, step),) * arr.ndim]


#: Quantiles (25, 50, 75 %) of chi^2 with 4 degrees of freedom truncated at _CHI2_CUT: the law
#: of (W^2 + F^2) / sigma^2 in background air, below the cut used by estimate_noise_sigma.
_CHI2_CUT = 16.0
_CHI2_QUARTILES = (1.91845, 3.34707, 5.36052)


def estimate_noise_sigma(water: np.ndarray, fat: np.ndarray, noise_floor: float | None = None) -> NoiseEstimate:
    """Noise sigma of Rician magnitude images W, F from the background air (Rayleigh statistics).

    In air both images are pure noise, so P = W^2 + F^2 is sigma^2 x chi^2(4); in tissue W or F
    is large. On a strided sample (at most ~2 million voxels; exactly zero voxels are masked
    exports, not noise, and are left out), sigma starts from the lowest mode of the histogram of
    log P (the mode of log chi^2(4) is log 4) and is refined five times from the median of the
    P below 16 sigma^2 (truncated chi^2(4) median 3.347 sigma^2). The estimate is accepted
    only if at least :data:`MIN_BACKGROUND_VOXELS` voxels were used and their quartile ratio
    matches chi^2(4) (2.79) within 15 %; otherwise ``sigma`` is None and ``note`` says why
    (no air in the field of view, masked background, or noise that is not Rician).
    ``noise_floor`` is unused (kept for symmetry with :func:`fat_fraction`).
    """
    w, f = strided_sample(water).astype(np.float32), strided_sample(fat).astype(np.float32)
    power = np.square(w, out=w).ravel()
    power += np.square(f, out=f).ravel()
    del f
    power = np.sort(power[np.isfinite(power) & (power > 0)])  # sorted: each "P < cut" is a prefix
    if power.size < MIN_BACKGROUND_VOXELS:
        return NoiseEstimate(None, "background", int(power.size), "fewer than "
                             f"{MIN_BACKGROUND_VOXELS} non-zero voxels")
    counts, edges = np.histogram(np.log(power), bins=200)
    smooth = np.convolve(counts, np.ones(5) / 5, mode="same")
    peaks = np.flatnonzero((smooth[1:-1] >= smooth[:-2]) & (smooth[1:-1] > smooth[2:])
                           & (smooth[1:-1] >= 0.05 * smooth.max())) + 1
    first = peaks[0] if peaks.size else int(np.argmax(smooth))
    sigma2 = float(np.exp((edges[first] + edges[first + 1]) / 2)) / 4.0
    for _ in range(5):
        air = power[: np.searchsorted(power, _CHI2_CUT * sigma2)]
        if air.size == 0:
            break
        sigma2 = float(np.median(air)) / _CHI2_QUARTILES[1]
    air = power[: np.searchsorted(power, _CHI2_CUT * sigma2)]
    if air.size < MIN_BACKGROUND_VOXELS:
        return NoiseEstimate(None, "background", int(air.size),
                             f"only {air.size} background voxels (fewer than {MIN_BACKGROUND_VOXELS})")
    q1, q3 = np.percentile(air, [25, 75])
    ratio = q3 / q1 if q1 > 0 else np.inf
    expected = _CHI2_QUARTILES[2] / _CHI2_QUARTILES[0]
    if not abs(ratio / expected - 1) <= 0.15:
        return NoiseEstimate(None, "background", int(air.size), f"the darkest voxels are not Rician "
                             f"noise (quartile ratio {ratio:.2f}, expected {expected:.2f})")
    return NoiseEstimate(float(np.sqrt(sigma2)), "background", int(air.size))


def _tail(m: np.ndarray, large: np.ndarray) -> np.ndarray:
    small = np.sqrt(np.maximum(m * m - 1.0, 0.0))
    return small / (large + small)


#: The designed table, shipped (designing it costs ~0.5 s); tests check it equals the design.
RICIAN_TABLE_FILE = Path(__file__).with_name("rician_ratio_table.json")


@functools.lru_cache(maxsize=1)
def _rician_ratio_table() -> np.ndarray:
    """:func:`design_rician_ratio_table`, as shipped in :data:`RICIAN_TABLE_FILE`.

    Regenerate after a change of the design with ``json.dump({"table":
    design_rician_ratio_table().tolist()}, open(RICIAN_TABLE_FILE, "w"))``.
    """
    import json

    table = np.array(json.loads(RICIAN_TABLE_FILE.read_text())["table"], dtype=float)
    if table.shape != (_LARGE_GRID.size, int(round(_KNOT_MAX / _KNOT_STEP)) + 1):  # pragma: no cover
        raise RuntimeError(f"{RICIAN_TABLE_FILE} does not fit the design grid: regenerate it")
    return table


def design_rician_ratio_table() -> np.ndarray:
    """Correction table r[i, j] = h(m_j, L_i) * L_i of :func:`noise_corrected_fat_fraction`.

    For each large signal L_i (``_LARGE_GRID``, units of sigma) the piecewise-linear h(m) on
    knots m_j (0..``_KNOT_MAX``) solves a penalised least-squares problem so that
    E[h(M) | a] = a / (L + a) for Rician M of amplitude a (0..14 sigma); beyond the knots
    h = s / (L + s) with s = sqrt(m^2 - 1) (unbiased to first order at high SNR).
    """
    knots = np.arange(0.0, _KNOT_MAX + 1e-9, _KNOT_STEP)
    mq = np.linspace(0.0, 26.0, 2601)
    a = np.linspace(0.0, 14.0, 141)
    # Rician density (sigma 1) x quadrature step; np.i0 stays finite here (argument <= 364)
    density = mq * np.exp(-(mq**2 + a[:, None] ** 2) / 2) * np.i0(mq * a[:, None]) * (mq[1] - mq[0])
    basis = np.maximum(0.0, 1.0 - np.abs(mq[:, None] - knots) / _KNOT_STEP)
    beyond = mq > _KNOT_MAX
    basis[beyond] = 0.0
    design = density @ basis
    second = np.diff(np.eye(knots.size), 2, axis=0)
    rows = []
    for large in _LARGE_GRID:
        weight = np.where(a <= 1.5 * large + 2, 1.0, 0.05) * np.where(a < 0.3, 0.1, 1.0)
        target = a / (large + a) - density[:, beyond] @ _tail(mq[beyond], large)
        end = float(_tail(np.array([_KNOT_MAX]), large)[0])
        lhs = np.vstack([design * weight[:, None], np.sqrt(_SMOOTHNESS) * second / large, 30 * np.eye(knots.size)[-1:]])
        rhs = np.concatenate([target * weight, np.zeros(second.shape[0]), [30 * end]])
        rows.append(np.linalg.lstsq(lhs, rhs, rcond=None)[0] * large)
    return np.array(rows)


@functools.lru_cache(maxsize=1)
def _fine_ratio_table() -> tuple[np.ndarray, float, float]:
    """:func:`_rician_ratio_table` resampled to 512 rows in log L (nearest-row lookup is then
    finer than the design's own smoothness): (flat float32 table, log L_min, rows per log unit)."""
    table = _rician_ratio_table()
    log_grid = np.log(_LARGE_GRID)
    fine = np.linspace(log_grid[0], log_grid[-1], 512)
    rows = np.stack([np.interp(fine, log_grid, table[:, j]) for j in range(table.shape[1])], axis=1)
    return rows.astype(np.float32).ravel(), float(log_grid[0]), float((fine.size - 1) / (log_grid[-1] - log_grid[0]))


def _small_over_total(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """h(small, large): mean-unbiased estimate of a / (L + a); float32 magnitudes in units of sigma."""
    flat, log_min, per_log = _fine_ratio_table()
    n_knots = int(round(_KNOT_MAX / _KNOT_STEP)) + 1
    row = np.log(np.maximum(large, np.float32(_LARGE_GRID[0])))
    row -= np.float32(log_min)
    row *= np.float32(per_log)
    row += np.float32(0.5)
    np.minimum(row, np.float32(flat.size // n_knots - 1), out=row)
    index = row.astype(np.intp)
    index *= n_knots
    pos = np.minimum(small, np.float32(_KNOT_MAX - 1e-3)) * np.float32(1 / _KNOT_STEP)
    knot = pos.astype(np.intp)
    pos -= knot
    index += knot
    lower = flat[index]
    r = lower + pos * (flat[index + 1] - lower)
    r /= np.maximum(large, np.float32(_LARGE_GRID[0]))
    beyond = small > _KNOT_MAX
    if beyond.any():
        r[beyond] = _tail(small[beyond], large[beyond])
    return r


def noise_corrected_fat_fraction(water: np.ndarray, fat: np.ndarray, sigma: float) -> np.ndarray:
    """Fat fraction of Rician magnitudes W, F (noise ``sigma`` per channel) without the noise floor.

    Magnitude images of small true signal a carry a Rician floor (E[M] = 1.25 sigma at a = 0),
    which biases F / (W + F) upwards in lean muscle (+0.03 at FF 0.03 and SNR 20). Per voxel,
    the smaller of the two magnitudes (the noisy one) is mapped through a tabulated function h,
    designed so that E[h] = a / (L + a) over the Rician distribution of that magnitude for the
    (high-SNR) larger signal L = sqrt(M_large^2 - sigma^2): FF = h(F, W) where W >= F, else
    1 - h(W, F). Region means of this FF are unbiased to ~0.002 for FF 0.03-0.3 at SNR 20, at
    the price of ~3x the per-voxel noise where FF < 0.1; single voxels may lie slightly
    outside [0, 1] (about -0.3..1.3), which keeps region means unbiased. (X, Y, Z) float32.
    """
    water = np.asarray(water)
    # one element order (C) for inputs and output, whatever the inputs' memory layout
    w_flat, f_flat = np.ravel(water, order="C"), np.ravel(np.asarray(fat), order="C")
    o_flat = np.empty(w_flat.size, dtype=np.float32)
    inv = np.float32(1.0 / float(sigma))
    for start in range(0, w_flat.size, _CHUNK):
        w = np.nan_to_num(w_flat[start:start + _CHUNK] * inv, nan=0.0, posinf=0.0, neginf=0.0)
        f = np.nan_to_num(f_flat[start:start + _CHUNK] * inv, nan=0.0, posinf=0.0, neginf=0.0)
        water_larger = w >= f
        small, large = np.where(water_larger, f, w), np.maximum(w, f)
        large *= large
        large -= np.float32(1.0)
        np.sqrt(np.maximum(large, np.float32(1e-12), out=large), out=large)
        h = _small_over_total(small, large)
        o_flat[start:start + _CHUNK] = np.where(water_larger, h, np.float32(1.0) - h)
    return o_flat.reshape(water.shape)


def fat_fraction(
    water: np.ndarray,
    fat: np.ndarray,
    *,
    in_phase: np.ndarray | None = None,
    noise_floor: float | None = None,
    method: str | None = None,
    noise_sigma: float | None = None,
) -> np.ndarray:
    """Signal fat fraction map (float32, same shape); NaN marks invalid voxels.

    ``method`` (default: ``magnitude-discrimination`` with ``in_phase``, else
    ``noise-corrected`` when ``noise_sigma`` > 0 is given, else ``ratio``):

    - ``ratio``: FF = F / (W + F); in [0, 1] for magnitude images. Signed (real-valued) water
      and fat (:func:`negative_voxels`) are used as they are and not clipped: their noise is
      Gaussian around zero, so region means are unbiased, and clipping at 0 would bring back a
      noise floor.
    - ``magnitude-discrimination`` (needs ``in_phase`` = |W + F| of the same acquisition; Liu et
      al., MRM 2007): FF = 1 - W / IP where W >= F and FF = F / IP where F > W, in [0, 1].
      Taking the small fraction from the two large, high-SNR signals avoids the Rician noise
      floor that biases F / (W + F) upwards in lean muscle at low SNR.
    - ``noise-corrected`` (needs ``noise_sigma``): :func:`noise_corrected_fat_fraction`; values
      may lie slightly outside [0, 1] so that region means stay unbiased.

    A voxel is invalid (NaN) where any input is non-finite or where W + F is below the noise
    floor (default: :func:`default_noise_floor` of W + F, i.e. 5 % of its 99th percentile), where
    the ratio is dominated by noise.
    """
    if method is None:
        method = "magnitude-discrimination" if in_phase is not None else (
            "noise-corrected" if noise_sigma else "ratio")
    if method not in FF_METHODS:
        raise ConfigError(f"unknown fat-fraction method {method!r}; one of {', '.join(FF_METHODS)}")
    if method == "magnitude-discrimination" and in_phase is None:
        raise ConfigError("fat-fraction method magnitude-discrimination needs an in-phase image")
    if method == "noise-corrected" and not (noise_sigma and noise_sigma > 0):
        raise ConfigError("fat-fraction method noise-corrected needs a noise sigma > 0")
    water, fat = np.asarray(water), np.asarray(fat)
    floor = default_noise_floor(water, fat) if noise_floor is None else float(noise_floor)
    if water.ndim == 0:
        return _ff_block(water, fat, in_phase, method, noise_sigma, floor)
    ff = np.empty_like(water, dtype=np.float32)  # same memory layout: slabs stay contiguous
    axis = int(np.argmax(np.abs(water.strides)))  # the slowest-varying axis
    step = max(1, (1 << 18) // max(1, water.size // water.shape[axis]))
    slabs = [(slice(None),) * axis + (slice(k0, k0 + step),) for k0 in range(0, water.shape[axis], step)]

    def one(sl) -> None:
        ip = None if in_phase is None else np.asarray(in_phase)[sl]
        ff[sl] = _ff_block(water[sl], fat[sl], ip, method, noise_sigma, floor)

    if water.size < PARALLEL_FF_VOXELS:
        for sl in slabs:
            one(sl)
    else:  # elementwise, so the slabs are independent; numpy releases the GIL
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(one, slabs))
    return ff


def _ff_block(water, fat, in_phase, method: str, noise_sigma: float | None, floor: float) -> np.ndarray:
    """:func:`fat_fraction` of one slab (keeps the temporaries slab-sized)."""
    water = np.asarray(water, dtype=np.float32)
    fat = np.asarray(fat, dtype=np.float32)
    total = water + fat
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "ratio":
            ff = fat / total
        elif method == "noise-corrected":
            ff = noise_corrected_fat_fraction(water, fat, float(noise_sigma))  # type: ignore[arg-type]
        else:
            ip = np.asarray(in_phase, dtype=np.float32)
            ff = np.where(water >= fat, 1.0 - water / ip, fat / ip).astype(np.float32)
            ff[~np.isfinite(ip) | (ip <= 0)] = np.nan
            ff = np.clip(ff, 0.0, 1.0, out=ff)
    ff[~(total > floor)] = np.nan  # also catches NaN totals
    return ff
