"""Dixon phantoms of the lumbar trunk with exact ground truth of every composition metric.

Signal model (in this order):

1. The analytic anatomy (:mod:`myocomp.synth.anatomy`) is sampled at ``supersample`` x finer
   resolution in each axis: true water ``PD (1 - FF)`` and fat ``PD FF`` per subvoxel.
2. Partial volume: water and fat are averaged over the subvoxels of each output voxel; the label
   of a voxel is the label with the most subvoxels (so label volume ~ true volume).
3. A smooth multiplicative coil bias field ``1 + bias f(x, y, z)`` (``|f| <= 1``, low-order
   polynomial with random coefficients) scales both images alike.
4. Noise: independent complex Gaussian noise of standard deviation ``sigma`` per real/imaginary
   channel is added to the (real, positive) water and fat signals; the stored images are the
   magnitudes (Rician). The in-phase and opposed-phase images are the magnitudes of
   ``water +- fat`` with the same noise, as from a two-point Dixon reconstruction.
   ``SNR = mean noise-free water signal in the labelled muscles / sigma``.
5. Artefacts on request: a fat-water swap (water and fat exchanged inside a sphere of radius
   ``SWAP_RADIUS_MM`` centred in one autochthon muscle) and NaN voxels (all channels).

Ground truth: :func:`myocomp.synth.truth.truth_metrics`, the metric definitions written out plainly
(independently of :mod:`myocomp.imaging.composition`) over the noise-free fine model (true FF and
fine labels, cropped to the muscles), with the parameters (``bmi``, ``fat_threshold``,
``band_mm``) that are to be used on the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from myocomp.errors import ConfigError, LabelError
from myocomp.synth.anatomy import (
    FASCIA_MM,
    STRUCTURES,
    LumbarAnatomy,
    paint_slice,
)
from myocomp.synth.truth import truth_metrics

#: Signal of a voxel of pure soft tissue (PD 1) without bias field.
SIGNAL_SCALE = 1000.0
#: Radius (mm) of the fat-water swap sphere.
SWAP_RADIUS_MM = 20.0
#: Groups whose metrics are in the truth (each member muscle as well).
TRUTH_GROUPS = ("back", "psoas")
_MUSCLES = STRUCTURES[1:5]
_ALIASES = {
    "spine": ("spine", "vertebrae", "vertebra_body"),
    **{f"autochthon_{side}": (f"autochthon_{side}", f"erector_spinae_{side}") for side in ("left", "right")},
    **{f"iliopsoas_{side}": (f"iliopsoas_{side}", f"psoas_major_{side}") for side in ("left", "right")},
}
_AXES = {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic Dixon scan and its ground truth.

    Attributes
    ----------
    water, fat : (X, Y, Z) float32 magnitude images, signal units (about 1000 for pure tissue).
    labels : (X, Y, Z) int16 label ids of the label profile (0 = unlabelled).
    affine : (4, 4) voxel -> world (mm, RAS+) transform of the stored arrays.
    truth : ``{"parameters": {...}, "metrics": {name: {metric: value}}}`` for the groups
        ``back``, ``psoas`` and each of their muscles (exact, from the noise-free fine model).
    seed : the seed it was generated from.
    in_phase, opposed_phase : (X, Y, Z) float32 magnitudes of water +- fat (same noise).
    """

    water: np.ndarray
    fat: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    truth: dict
    seed: int
    in_phase: np.ndarray | None = None
    opposed_phase: np.ndarray | None = None
    vertebrae: np.ndarray | None = None  # vertebrae_mr ids (synth.vertebrae)
    discs: np.ndarray | None = None  # vertebrae_mr id of the vertebra above each disc
    fine: dict | None = None  # the noise-free fine model's per-slice sums (synth.vertebrae)

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths (mm) along the stored array axes."""
        from myocomp.imaging.dixon import voxel_spacing

        return voxel_spacing(self.affine)


@dataclass(frozen=True)
class PhantomOptions:
    """Options of :func:`make_phantom` (checked on construction; ``snr`` inf is stored as None).

    Attributes
    ----------
    voxel_size_mm : output voxel size (mm) along R, A, S.
    n_slices : number of axial slices, centred on the modelled trunk; default
        ``round(length_mm / voxel_size_mm[2])``. Slices beyond the trunk's ends repeat its end
        cross-sections (the vertebrae go on), e.g. for large benchmark volumes.
    length_mm : cranio-caudal length of the modelled trunk (mm), about L1 to L5 by default.
    shape : (X, Y, Z) output grid size in RAS order, centred on the body; overrides ``n_slices``
        and the automatic in-plane field of view (which fits the body with an 8 mm margin).
    snr : mean noise-free muscle water signal / noise sigma; None or inf: no noise.
    infiltration : mean diffuse fat fraction of the back muscles (psoas 0.8x); varies smoothly
        in space by about +-50 %.
    intermat : approximate fraction of each muscle's volume in intramuscular fat streaks
        (FF >= 0.5); the exact value is in ``truth``.
    bias : amplitude of the smooth multiplicative coil bias field (signal x [1 - bias, 1 + bias]).
    orientation : nibabel axis codes of the stored arrays (e.g. RAS, LPS, SAR, PIL); data and
        affine are permuted/flipped consistently, so world geometry is unchanged.
    swap_region : exchange water and fat inside a sphere in one autochthon muscle (artefact).
    nan_voxels : number of voxels set to NaN in every image (artefact; positions random).
    supersample : fine-model subvoxels per output voxel edge (partial volume; 1 = none).
    profile : label profile whose ids the label map uses (muscles must exist in it; a profile
        without autochthon / iliopsoas gets erector spinae / psoas major, as MuscleMap's).
    bmi : body-mass index (kg/m^2): sets fat thicknesses and the truth's ``lmm``.
    fat_threshold, band_mm : the metric parameters the truth is computed with.
    tilt_deg : rotate the whole phantom (arrays unchanged, affine rotated about the world origin
        about the axis (1, 1, 0)) by this angle: oblique storage with the body axis tilted in the
        world. Level positions in ``truth["levels"]`` are along the body axis (= the rotated z).
    """

    voxel_size_mm: tuple[float, float, float] = (2.0, 2.0, 4.0)
    n_slices: int | None = None
    length_mm: float = 160.0
    shape: tuple[int, int, int] | None = None
    snr: float | None = 40.0
    infiltration: float = 0.1
    intermat: float = 0.05
    bias: float = 0.2
    orientation: str = "RAS"
    swap_region: bool = False
    nan_voxels: int = 0
    supersample: int = 3
    profile: str = "mrsegmentator"
    bmi: float = 25.0
    fat_threshold: float = 0.5
    band_mm: float = 0.0
    tilt_deg: float = 0.0

    def __post_init__(self) -> None:
        voxel = tuple(float(v) for v in self.voxel_size_mm)
        object.__setattr__(self, "voxel_size_mm", voxel)
        if self.snr is not None and math.isinf(self.snr):
            object.__setattr__(self, "snr", None)
        if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
            raise ConfigError(f"voxel_size_mm must be three positive numbers (mm), got {voxel}")
        if self.snr is not None and not self.snr > 0:
            raise ConfigError(f"snr must be > 0 (or None / inf for no noise), got {self.snr}")
        for name, high in (("infiltration", "mean muscle fat fraction"), ("intermat", "fraction of muscle volume")):
            if not 0.0 <= getattr(self, name) <= 0.4:
                raise ConfigError(f"{name} ({high}) must lie in [0, 0.4], got {getattr(self, name)}")
        if not 0.0 <= self.bias < 1.0:
            raise ConfigError(f"bias (bias field amplitude) must lie in [0, 1), got {self.bias}")
        self._check_geometry()
        if not 15.0 <= self.bmi <= 60.0:
            raise ConfigError(f"bmi must lie in [15, 60] kg/m^2, got {self.bmi}")
        if not (math.isfinite(self.tilt_deg) and abs(self.tilt_deg) <= 40.0):
            raise ConfigError(f"tilt_deg must lie in [-40, 40] degrees, got {self.tilt_deg}")

    def _check_geometry(self) -> None:
        codes = str(self.orientation).upper()
        if len(codes) != 3 or any(ch not in _AXES for ch in codes) or len({_AXES[ch] for ch in codes}) != 3:
            raise ConfigError(
                f"orientation {self.orientation!r} is not three axis codes naming R/L, A/P and S/I once "
                "each (e.g. RAS, LPS, PIL)"
            )
        if int(self.supersample) != self.supersample or self.supersample < 1:
            raise ConfigError(f"supersample must be an integer >= 1, got {self.supersample}")
        if self.nan_voxels < 0:
            raise ConfigError(f"nan_voxels must be >= 0, got {self.nan_voxels}")
        if self.shape is not None and (len(self.shape) != 3 or any(int(n) < 1 for n in self.shape)):
            raise ConfigError(f"shape must be three positive integers, got {self.shape}")
        if self.n_slices is not None and self.n_slices < 1:
            raise ConfigError(f"n_slices must be >= 1, got {self.n_slices}")
        if not self.length_mm > 0:
            raise ConfigError(f"length_mm must be > 0, got {self.length_mm}")


def _structure_ids(profile: str) -> tuple[dict[int, str], np.ndarray, str]:
    """(profile ids, lookup table structure index -> label id, profile name)."""
    from myocomp.imaging.labels import get_profile

    prof = get_profile(profile)
    by_name = {name: i for i, name in sorted(prof.ids.items(), reverse=True)}
    lut = np.zeros(len(STRUCTURES), dtype=np.int16)
    for k, name in enumerate(STRUCTURES[1:], start=1):
        for alias in _ALIASES.get(name, (name,)):
            if alias in by_name:
                lut[k] = by_name[alias]
                break
        else:
            if name in _MUSCLES:
                raise LabelError(
                    f"label profile {prof.name!r} has no label {name!r}; the phantom needs it"
                )
    return prof.ids, lut, prof.name


def _axis(n: int, step: float, centre: float) -> np.ndarray:
    return centre + (np.arange(n) - (n - 1) / 2.0) * step


def _fine(coords: np.ndarray, step: float, ss: int) -> np.ndarray:
    offsets = (np.arange(ss) - (ss - 1) / 2.0) * step / ss
    return (coords[:, None] + offsets[None, :]).ravel()


def _bias_polynomial(rng: np.random.Generator, x, y, z):
    """Smooth low-order polynomial: (slice function z_k -> f on the (X, Y) grid, max |f|)."""
    hx, hy, hz = (max(float(np.abs(v).max()), 1e-9) for v in (x, y, z))
    xi = (x / hx).astype(np.float32)[:, None]
    eta = (y / hy).astype(np.float32)[None, :]
    c = rng.normal(size=6).astype(np.float32)

    def f(zk: float) -> np.ndarray:
        zeta = np.float32(zk / hz)
        return (
            c[0] * xi
            + (c[1] + c[5] * zeta) * eta
            + c[2] * zeta
            + abs(c[3]) * (xi**2 + eta**2)
            + c[4] * xi * eta
        )

    peak = max(float(np.abs(f(zk)).max()) for zk in z)
    return f, peak


def _add_rician_noise(water, fat, sigma: float, rng: np.random.Generator):
    """Magnitudes of (water + n1) and (fat + n2) and of their sum/difference (in/opposed phase).

    n1, n2: complex Gaussian, ``sigma`` per real/imaginary part. Works in slabs along z to keep
    memory low; water and fat are overwritten. Returns (water, fat, in_phase, opposed_phase).
    """
    nx, ny, nz = water.shape
    in_phase, opposed_phase = np.empty_like(water), np.empty_like(water)
    step = max(1, 4_000_000 // (nx * ny))
    for k0 in range(0, nz, step):
        sl = np.s_[:, :, k0 : k0 + step]
        n = rng.standard_normal((4, *water[sl].shape), dtype=np.float32)
        n *= np.float32(sigma)
        wr, fr = water[sl] + n[0], fat[sl] + n[2]
        in_phase[sl] = np.hypot(wr + fr, n[1] + n[3])
        opposed_phase[sl] = np.hypot(wr - fr, n[1] - n[3])
        water[sl] = np.hypot(wr, n[1])
        fat[sl] = np.hypot(fr, n[3])
    return water, fat, in_phase, opposed_phase


def _majority(st: np.ndarray, shape: tuple[int, int], ss: int) -> np.ndarray:
    """Structure index with the most subvoxels in each block of ss x ss x ss (ties: lower index).

    ``st``: (X * ss, Y * ss, ss) structure indices of one output slice; returns (X, Y) uint8.
    """
    nx, ny = shape
    if ss == 1:
        return st[:, :, 0].copy()
    blocks = st.reshape(nx, ss, ny, ss, ss).transpose(0, 2, 1, 3, 4).reshape(nx * ny, ss**3)
    out = blocks[:, 0].copy()
    mixed = np.flatnonzero(blocks.min(axis=1) != blocks.max(axis=1))
    if mixed.size:
        n = len(STRUCTURES)
        sub = blocks[mixed].astype(np.intp)
        keys = (np.arange(mixed.size)[:, None] * n + sub).ravel()
        counts = np.bincount(keys, minlength=mixed.size * n).reshape(mixed.size, n)
        out[mixed] = counts.argmax(axis=1)
    return out.reshape(nx, ny)


def _block_mean(plane: np.ndarray, shape: tuple[int, int], ss: int) -> np.ndarray:
    nx, ny = shape
    return plane.reshape(nx, ss, ny, ss).sum(axis=3).sum(axis=1) / np.float32(ss**3)


def _reorient(arrays: dict[str, np.ndarray], affine: np.ndarray, orientation: str):
    import nibabel as nib

    codes = tuple(orientation.upper())
    if codes == ("R", "A", "S"):
        return arrays, affine
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(codes)
    )
    shape = next(iter(arrays.values())).shape
    out = {
        k: np.ascontiguousarray(nib.orientations.apply_orientation(v, transform))
        for k, v in arrays.items()
    }
    return out, affine @ nib.orientations.inv_ornt_aff(transform, shape)


def make_phantom(seed: int = 0, **options: Any) -> Phantom:
    """Generate a lumbar-trunk Dixon phantom and its exact composition metrics.

    Parameters
    ----------
    seed : seeds every random choice (anatomy, bias field, noise, artefacts): same seed and
        options give identical arrays.
    **options : the fields of :class:`PhantomOptions` (voxel size, SNR, artefacts, profile,
        truth parameters ...).

    Vertebrae (:mod:`myocomp.synth.vertebrae`): ``vertebrae`` holds per-vertebra labels in the
    ``totalsegmentator_vertebrae_mr`` ids, ``discs`` the discs, ``truth["levels"]`` the true
    vertebra extents, mid-vertebral CSAs and span metrics from the noise-free fine model.

    Returns
    -------
    :class:`Phantom`.
    """
    o = PhantomOptions(**options)
    names, lut, profile_name = _structure_ids(o.profile)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]
    rng_anatomy, rng_bias, rng_noise, rng_artefact = streams
    anatomy = LumbarAnatomy.sample(
        rng_anatomy, length_mm=o.length_mm, bmi=o.bmi, infiltration=o.infiltration, intermat=o.intermat
    )
    grid = _Grid.around(anatomy, o.voxel_size_mm, o.shape, o.n_slices, o.length_mm, int(o.supersample))
    if o.nan_voxels > math.prod(grid.shape):
        raise ConfigError(f"nan_voxels {o.nan_voxels} exceeds the {math.prod(grid.shape)} voxels of the grid")
    crop = grid.truth_crop(anatomy, FASCIA_MM + o.band_mm + 2 * max(o.voxel_size_mm[:2]))
    water, fat, structure, ff_true, st_true = _sample_model(anatomy, grid, crop)
    _apply_bias(water, fat, rng_bias, grid, o.bias)
    water, fat, in_phase, opposed_phase, sigma = _noisy_images(water, fat, structure, o.snr, rng_noise)
    swap_info = _swap_region(water, fat, anatomy, grid, rng_artefact) if o.swap_region else None
    if o.nan_voxels:
        flat = rng_artefact.choice(water.size, size=int(o.nan_voxels), replace=False)
        for arr in (water, fat, in_phase, opposed_phase):
            arr.reshape(-1)[flat] = np.nan

    from myocomp.synth import vertebrae as vt

    spine = structure == STRUCTURES.index("spine")
    verts, discs = vt.vertebra_labels(anatomy, spine, grid.x, grid.y, grid.z, grid.voxel[2])
    metrics = truth_metrics(ff_true, lut[st_true], names, grid.fine_voxel, bmi=o.bmi,
                            fat_threshold=o.fat_threshold, band_mm=o.band_mm, groups=TRUTH_GROUPS)
    fine, levels_truth = _fine_truth(anatomy, grid, crop, ff_true, st_true, o.fat_threshold)
    affine = _rotation(o.tilt_deg) @ grid.affine if o.tilt_deg else grid.affine
    arrays = {
        "water": water, "fat": fat, "labels": lut[structure], "vertebrae": verts, "discs": discs,
        "in_phase": in_phase, "opposed_phase": opposed_phase,
    }
    arrays, affine = _reorient(arrays, affine, o.orientation)
    parameters = _parameters(seed, o, arrays["water"].shape, sigma, swap_info, profile_name, grid)
    truth = {"parameters": parameters, "metrics": metrics, "definitions": _definitions(),
             "levels": _plain_tree(levels_truth)}
    return Phantom(
        water=arrays["water"], fat=arrays["fat"], labels=arrays["labels"], affine=affine, truth=truth,
        seed=int(seed), in_phase=arrays["in_phase"], opposed_phase=arrays["opposed_phase"],
        vertebrae=arrays["vertebrae"], discs=arrays["discs"], fine=fine,
    )


def _parameters(seed, o: PhantomOptions, shape, sigma, swap_info, profile_name, grid) -> dict[str, Any]:
    """The ``truth["parameters"]`` record: every option as used, and what was derived from it."""
    return {
        "seed": int(seed), "voxel_size_mm": list(o.voxel_size_mm), "shape": list(shape),
        "orientation": str(o.orientation).upper(), "length_mm": float(o.length_mm), "snr": o.snr,
        "noise_sigma": sigma, "signal_scale": SIGNAL_SCALE, "infiltration": float(o.infiltration),
        "intermat": float(o.intermat), "bias": float(o.bias), "swap_region": swap_info,
        "nan_voxels": int(o.nan_voxels), "supersample": int(o.supersample), "profile": profile_name,
        "bmi": float(o.bmi), "fat_threshold": float(o.fat_threshold), "band_mm": float(o.band_mm),
        "truth_voxel_size_mm": list(grid.fine_voxel), "fascia_mm": FASCIA_MM,
        "deposit_peak_ff": "1 - local muscle FF", "tilt_deg": float(o.tilt_deg),
    }


@dataclass(frozen=True)
class _Grid:
    """The output grid (voxel centres ``x, y, z`` in mm, RAS) and its ``ss``-times finer model grid."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    voxel: tuple[float, float, float]
    ss: int

    @classmethod
    def around(cls, anatomy: LumbarAnatomy, voxel, shape, n_slices, length_mm, ss) -> _Grid:
        """The grid of ``shape`` (default: the body with an 8 mm margin, ``n_slices`` slices)."""
        dx, dy, dz = voxel
        half_x, y_post, y_ant = anatomy.extent_mm()
        if shape is None:
            nz = int(n_slices) if n_slices is not None else max(1, round(length_mm / dz))
            shape = (
                int(math.ceil(2 * (half_x + 8) / dx)),
                int(math.ceil((y_post + y_ant + 16) / dy)),
                nz,
            )
        nx, ny, nz = (int(n) for n in shape)
        return cls(_axis(nx, dx, 0.0), _axis(ny, dy, (y_ant - y_post) / 2.0), _axis(nz, dz, 0.0), voxel, ss)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.x.size, self.y.size, self.z.size)

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([*self.voxel, 1.0])
        affine[:3, 3] = (self.x[0], self.y[0], self.z[0])
        return affine

    @property
    def fine_voxel(self) -> tuple[float, float, float]:
        return tuple(v / self.ss for v in self.voxel)  # type: ignore[return-value]

    def fine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fine-model subvoxel centres (mm) along x, y, z."""
        return tuple(_fine(a, v, self.ss) for a, v in zip((self.x, self.y, self.z), self.voxel, strict=True))

    def truth_crop(self, anatomy: LumbarAnatomy, margin_mm: float) -> tuple[slice, slice]:
        """Fine-grid (x, y) slices covering the muscles plus ``margin_mm``."""
        xf, yf, _ = self.fine()
        x0, x1, y0, y1 = anatomy.muscle_box_mm(margin_mm)
        cx0, cx1 = np.searchsorted(xf, (x0, x1))
        cy0, cy1 = np.searchsorted(yf, (y0, y1))
        return slice(int(cx0), int(cx1)), slice(int(cy0), int(cy1))


def _sample_model(anatomy: LumbarAnatomy, grid: _Grid, crop: tuple[slice, slice]):
    """Partial-volume water, fat (float32, PD units) and majority structure (uint8) on the output
    grid, and the noise-free fine model inside ``crop``: true FF (NaN where no tissue) and
    structure indices, shape (crop x, crop y, Z * ss)."""
    ss = grid.ss
    nx, ny, nz = grid.shape
    xf, yf, zf = grid.fine()
    crop_shape = (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start, zf.size)
    ff_true = np.empty(crop_shape, dtype=np.float32)
    st_true = np.empty(crop_shape, dtype=np.uint8)
    water = np.empty(grid.shape, dtype=np.float32)
    fat = np.empty(grid.shape, dtype=np.float32)
    structure = np.empty(grid.shape, dtype=np.uint8)
    slab_s = np.empty((nx * ss, ny * ss, ss), dtype=np.uint8)
    sum_w = np.empty((nx * ss, ny * ss), dtype=np.float32)
    sum_f = np.empty_like(sum_w)
    for k in range(nz):
        sum_w.fill(0.0)
        sum_f.fill(0.0)
        for j in range(ss):
            kf = k * ss + j
            pd, ff, st = paint_slice(anatomy, xf, yf, float(zf[kf]))
            fat_signal = pd * ff
            sum_f += fat_signal
            sum_w += pd - fat_signal
            slab_s[:, :, j] = st
            ff_true[:, :, kf] = np.where(pd[crop] > 0, ff[crop], np.float32(np.nan))
            st_true[:, :, kf] = st[crop]
        water[:, :, k] = _block_mean(sum_w, (nx, ny), ss)
        fat[:, :, k] = _block_mean(sum_f, (nx, ny), ss)
        structure[:, :, k] = _majority(slab_s, (nx, ny), ss)
    return water, fat, structure, ff_true, st_true


def _apply_bias(water, fat, rng: np.random.Generator, grid: _Grid, bias: float) -> None:
    """Scale water and fat in place by ``SIGNAL_SCALE`` x the coil bias field of amplitude ``bias``."""
    polynomial, peak = _bias_polynomial(rng, grid.x, grid.y, grid.z)
    scale = bias / peak if bias > 0 and peak > 0 else 0.0
    for k in range(grid.z.size):
        gain = np.float32(SIGNAL_SCALE) * (1.0 + np.float32(scale) * polynomial(float(grid.z[k])))
        water[:, :, k] *= gain
        fat[:, :, k] *= gain


def _noisy_images(water, fat, structure, snr: float | None, rng: np.random.Generator):
    """(water, fat, in_phase, opposed_phase, sigma): Rician magnitudes at ``snr`` (None: none)."""
    muscle = (structure >= 1) & (structure <= len(_MUSCLES))
    sigma = (
        float(water[muscle].mean(dtype=np.float64)) / snr
        if snr is not None and muscle.any()
        else 0.0
    )
    del muscle
    if sigma > 0:
        return (*_add_rician_noise(water, fat, sigma, rng), sigma)
    return water, fat, water + fat, np.abs(water - fat), sigma


def _swap_region(water, fat, anatomy: LumbarAnatomy, grid: _Grid, rng: np.random.Generator) -> dict:
    """Exchange water and fat in place inside a sphere in one autochthon muscle; returns where."""
    x, y, z = grid.x, grid.y, grid.z
    side = "autochthon_left" if rng.uniform() < 0.5 else "autochthon_right"
    zc = float(z[z.size // 2])
    cx, cy, *_ = anatomy.muscle(side, zc)
    box = tuple(
        slice(
            np.searchsorted(axis, centre - SWAP_RADIUS_MM, side="left"),
            np.searchsorted(axis, centre + SWAP_RADIUS_MM, side="right"),
        )
        for axis, centre in zip((x, y, z), (cx, cy, zc), strict=True)
    )
    sphere = (
        (x[box[0], None, None] - cx) ** 2
        + (y[None, box[1], None] - cy) ** 2
        + (z[None, None, box[2]] - zc) ** 2
    ) <= SWAP_RADIUS_MM**2
    w_box, f_box = water[box], fat[box]
    w_box[sphere], f_box[sphere] = f_box[sphere], w_box[sphere]
    return {
        "centre_mm": [float(cx), float(cy), zc],
        "radius_mm": SWAP_RADIUS_MM,
        "muscle": side,
        "n_voxels": int(sphere.sum()),
    }


def _definitions() -> dict:
    from myocomp.imaging.composition import DEFINITIONS

    return dict(DEFINITIONS)


def _fine_truth(anatomy: LumbarAnatomy, grid: _Grid, crop, ff_true, st_true, fat_threshold: float):
    """(the fine model's per-slice sums and axes, the per-level truth of :mod:`synth.vertebrae`)."""
    from myocomp.synth import vertebrae as vt

    xf, yf, zf = grid.fine()
    dz = grid.voxel[2]
    fine_ml = float(np.prod(grid.fine_voxel)) / 1000.0
    fine_sums = vt.fine_profile(ff_true, st_true, fat_threshold)
    fine = {"profile": fine_sums, "z": zf, "x": xf[crop[0]], "y": yf[crop[1]], "voxel_ml": fine_ml,
            "anatomy": anatomy}
    levels_truth = vt.level_truth(
        anatomy, fine_sums, zf, xf[crop[0]], yf[crop[1]], fine_ml, fat_threshold,
        grid.z[0] - dz / 2, grid.z[-1] + dz / 2,
    )
    return fine, levels_truth


def _rotation(tilt_deg: float) -> np.ndarray:
    """4x4 rotation by ``tilt_deg`` about the axis (1, 1, 0) / sqrt(2) through the world origin."""
    a = math.radians(tilt_deg)
    k = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    out = np.eye(4)
    out[:3, :3] = np.eye(3) + math.sin(a) * cross + (1 - math.cos(a)) * cross @ cross
    return out


def _plain_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_tree(v) for v in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def write_phantom(
    out_dir: str | Path, seed: int = 0, *, phantom: Phantom | None = None, **options: Any
) -> dict[str, Path]:
    """Generate a phantom (:func:`make_phantom` options) and write it to ``out_dir``.

    Writes ``water.nii.gz``, ``fat.nii.gz``, ``labels.nii.gz`` (int16), ``in_phase.nii.gz``,
    ``opposed_phase.nii.gz``, ``vertebrae.nii.gz`` (``totalsegmentator_vertebrae_mr`` ids),
    ``discs.nii.gz`` and ``truth.json``, each atomically. Returns role -> path
    (roles ``water``, ``fat``, ``labels``, ``in_phase``, ``opposed_phase``, ``truth``).
    An already generated ``phantom`` is written as it is (then ``seed`` and options are unused).
    """
    from myocomp.io import save_nifti, write_json

    if phantom is None:
        phantom = make_phantom(seed, **options)
    elif options:
        raise ConfigError("write_phantom: give either a phantom or generation options, not both")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {
        "water": phantom.water,
        "fat": phantom.fat,
        "labels": phantom.labels.astype(np.int16),
        "in_phase": phantom.in_phase,
        "opposed_phase": phantom.opposed_phase,
        "vertebrae": phantom.vertebrae,
        "discs": phantom.discs,
    }
    paths = {
        role: Path(save_nifti(data, phantom.affine, out / f"{role}.nii.gz"))
        for role, data in images.items()
        if data is not None
    }
    paths["truth"] = Path(write_json(phantom.truth, out / "truth.json"))
    return paths
