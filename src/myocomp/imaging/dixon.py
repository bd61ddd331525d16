"""Dixon water/fat volumes: loading, validation, canonical orientation and the fat-fraction map.

Every volume is reoriented on load to the closest canonical RAS+ orientation
(:func:`nibabel.as_closest_canonical`): array axis 0 runs left->right, 1 posterior->anterior,
2 inferior->superior. The affine travels with the arrays, so geometry is never guessed, and a
volume stored with flipped or permuted axes gives the same arrays (and metrics) as the original.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from myocomp.errors import GeometryError, InputFileError

#: Largest distance (mm) between corresponding voxel corners of two grids that count as the same
#: grid (:func:`same_grid`). Scanner exports round positions to ~1e-4 mm.
AFFINE_ATOL = 1e-3

#: Largest number of voxels one image may declare (``MYOCOMP_MAX_VOXELS`` overrides it): 2**30,
#: 4 GiB as float32, far above a whole-body scan (~1e8 voxels).
MAX_VOXELS = 2**30

#: Largest ratio of uncompressed to compressed size that deflate can reach (~1032:1), with margin.
GZIP_MAX_RATIO = 1100

#: Default noise floor of the fat-fraction map, as a fraction of the 99th percentile of W + F.
NOISE_FLOOR_FRACTION = 0.05


@dataclass(frozen=True, eq=False)
class DixonVolume:
    """Water and fat images (and optional in/opposed phase) on one grid, canonical RAS+ orientation.

    Attributes
    ----------
    water, fat : (X, Y, Z) float32 arrays, arbitrary signal units. ``fat`` is None for a single
        contrast image (then ``water`` holds that image).
    affine : (4, 4) voxel -> world (mm, RAS+) transform.
    in_phase, opposed_phase : optional (X, Y, Z) float32 arrays.
    source : description of where the data came from (a path; never patient identifiers).
    """

    water: np.ndarray
    fat: np.ndarray | None
    affine: np.ndarray
    in_phase: np.ndarray | None = None
    opposed_phase: np.ndarray | None = None
    source: str = ""

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
        arr = arr.astype(np.float32, copy=False)
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


def _any_finite(arr: np.ndarray) -> bool:
    """True if any element is finite; checks a strided sample first (cheap on big volumes)."""
    flat = arr.ravel(order="K")  # NIfTI data are Fortran-ordered: "K" avoids a copy
    return bool(np.isfinite(flat[:: max(1, flat.size // 100_000)]).any() or np.isfinite(flat).any())


def load_dixon(
    water: str | Path,
    fat: str | Path | None = None,
    in_phase: str | Path | None = None,
    opposed_phase: str | Path | None = None,
) -> DixonVolume:
    """Load Dixon channels from NIfTI files onto one canonical grid.

    Each image must be one 3-D volume; all must share the water image's shape and affine (to
    :data:`AFFINE_ATOL` mm), otherwise :class:`GeometryError` names the offending file.
    ``fat=None`` gives a single-contrast volume (e.g. T1w) for the approximate GMM mode.
    """
    paths = {"water": water, "fat": fat, "in_phase": in_phase, "opposed_phase": opposed_phase}
    imgs = {role: load_nifti(p, role) for role, p in paths.items() if p is not None}
    ref = imgs["water"]
    for role, img in imgs.items():
        if img.shape != ref.shape:
            raise GeometryError(
                f"{role} image shape {img.shape} differs from water image shape {ref.shape} ({water})",
                source=paths[role],
            )
        if not same_grid(img.affine, ref.affine, shape=ref.shape):
            raise GeometryError(
                f"{role} image affine differs from the water image's ({water}): voxel corners up "
                f"to {grid_distance_mm(img.affine, ref.affine, ref.shape):.3g} mm apart, more than "
                f"{AFFINE_ATOL:g} mm: not the same grid",
                source=paths[role],
            )
    arrays = {role: np.asanyarray(img.dataobj) for role, img in imgs.items()}
    for role, arr in arrays.items():
        if not _any_finite(arr):
            raise InputFileError(f"{role} image has no finite voxel (all NaN/inf)", source=paths[role])
    return dixon_from_arrays(
        arrays["water"],
        arrays.get("fat"),
        ref.affine,
        in_phase=arrays.get("in_phase"),
        opposed_phase=arrays.get("opposed_phase"),
        source=str(water),
    )


def default_noise_floor(water: np.ndarray, fat: np.ndarray | None = None) -> float:
    """Default noise floor: :data:`NOISE_FLOOR_FRACTION` x the 99th percentile of finite W + F.

    The percentile is taken on a strided sample of at most ~2 million voxels (cheap on
    whole-body volumes; the percentile barely moves).
    """
    step = max(1, int(np.ceil((water.size / 2_000_000) ** (1 / water.ndim))))
    sample = (slice(None, None, step),) * water.ndim
    total = water[sample].astype(np.float64)
    if fat is not None:
        total = total + fat[sample]
    finite = total[np.isfinite(total)]
    return float(NOISE_FLOOR_FRACTION * np.percentile(finite, 99)) if finite.size else 0.0


def fat_fraction(
    water: np.ndarray,
    fat: np.ndarray,
    *,
    in_phase: np.ndarray | None = None,
    noise_floor: float | None = None,
) -> np.ndarray:
    """Signal fat fraction map in [0, 1] (float32, same shape); NaN marks invalid voxels.

    Without ``in_phase``: FF = F / (W + F).
    With ``in_phase`` (IP = |W + F| from the same acquisition), magnitude discrimination
    (Liu et al., MRM 2007): FF = 1 - W / IP where W >= F and FF = F / IP where F > W. Taking the
    small fraction from the two large, high-SNR signals avoids the Rician noise floor that biases
    F / (W + F) upwards in lean muscle at low SNR.

    A voxel is invalid (NaN) where any input is non-finite or where W + F is below the noise
    floor (default: :func:`default_noise_floor` of W + F, i.e. 5 % of its 99th percentile), where
    the ratio is dominated by noise.
    """
    water = np.asarray(water, dtype=np.float32)
    fat = np.asarray(fat, dtype=np.float32)
    total = water + fat
    floor = default_noise_floor(water, fat) if noise_floor is None else float(noise_floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        if in_phase is None:
            ff = fat / total
        else:
            ip = np.asarray(in_phase, dtype=np.float32)
            ff = np.where(water >= fat, 1.0 - water / ip, fat / ip).astype(np.float32)
            ff[~np.isfinite(ip) | (ip <= 0)] = np.nan
    ff = np.clip(ff, 0.0, 1.0, out=ff)
    ff[~(total > floor)] = np.nan  # also catches NaN totals
    return ff
