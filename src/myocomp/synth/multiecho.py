"""Multi-echo (chemical-shift-encoded) gradient-echo phantoms with exact water, fat, PDFF, B0 and R2*.

The anatomy, partial volume, coil bias and labels are those of :func:`myocomp.synth.phantom.make_phantom`
(noise-free). On top of its water W and fat F images this module applies the signal model of
:func:`myocomp.imaging.fatwater.signal_model` (6-peak fat spectrum, one R2* per voxel)::

    s_n = (W + F c_n) exp((-R2* + i 2 pi psi) t_n) exp(i phi0) + noise

with a smooth B0 off-resonance ``psi`` (quadratic polynomial with random coefficients, scaled
so that it spans ``[-b0_range_hz, +b0_range_hz]`` over the field of view), a smooth R2*
(``r2star`` x [0.8, 1.2]), a smooth initial phase ``phi0`` and complex Gaussian noise of
``sigma = mean muscle water / snr`` per real/imaginary part. ``precession="conjugate"`` stores
the conjugate (the other sign convention of the phase). Truth: PDFF = F / (W + F) of the
noise-free partial-volume voxel (NaN where W + F = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from myocomp.errors import ConfigError

_MUSCLE_PREFIXES = ("autochthon", "iliopsoas")


@dataclass(frozen=True, eq=False)
class MultiEchoPhantom:
    """echoes: (X, Y, Z, N) complex64; te_s: (N,) s; truth arrays (X, Y, Z) float32; labels int16."""

    echoes: np.ndarray
    te_s: tuple[float, ...]
    field_t: float
    affine: np.ndarray
    labels: np.ndarray
    water: np.ndarray
    fat: np.ndarray
    pdff: np.ndarray
    fieldmap_hz: np.ndarray
    r2star: np.ndarray
    truth: dict


def _smooth_field(rng: np.random.Generator, shape, n_terms: int = 7) -> np.ndarray:
    """Quadratic polynomial over the grid in normalised coordinates [-1, 1], scaled to max |.| = 1."""
    axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x - 1 / 3, y * y - 1 / 3, x * y, y * z][:n_terms]
    c = rng.normal(size=len(terms))
    f = sum(ci * t for ci, t in zip(c, terms, strict=True))
    f = np.broadcast_to(f, shape).astype(np.float64)
    f -= f.mean()
    peak = np.abs(f).max()
    return (f / peak if peak > 0 else f).astype(np.float32)


def _muscle_mask(labels: np.ndarray, profile: str) -> np.ndarray:
    from myocomp.imaging.labels import get_profile

    ids = [i for i, name in get_profile(profile).ids.items() if name.startswith(_MUSCLE_PREFIXES)]
    return np.isin(labels, ids)


def make_multiecho_phantom(
    seed: int = 0,
    *,
    te_ms=(1.2, 2.2, 3.2),
    field_t: float = 3.0,
    b0_range_hz: float = 200.0,
    r2star: float = 40.0,
    snr: float | None = 40.0,
    precession: str = "as_stored",
    **phantom_options,
) -> MultiEchoPhantom:
    """Generate a multi-echo phantom; ``phantom_options`` go to :func:`make_phantom` (not snr)."""
    from myocomp.imaging.fatwater import signal_model
    from myocomp.synth.phantom import make_phantom

    te = np.asarray(te_ms, dtype=float).ravel() / 1000.0
    if te.size < 2 or not np.all(te > 0) or np.unique(te).size != te.size:
        raise ConfigError(f"--echoes needs >= 2 distinct positive echo times (ms), got {list(te_ms)}")
    if not 0.1 <= field_t <= 12:
        raise ConfigError(f"--field must lie in [0.1, 12] T, got {field_t}")
    if not 0 <= b0_range_hz <= 2000 or not 0 <= r2star <= 500:
        raise ConfigError("--b0-range must lie in [0, 2000] Hz and --r2star in [0, 500] 1/s")
    if precession not in ("as_stored", "conjugate"):
        raise ConfigError(f"precession must be as_stored or conjugate, got {precession!r}")
    for bad in ("snr", "swap_region", "nan_voxels"):
        if bad in phantom_options:
            raise ConfigError(f"option {bad!r} is not available for multi-echo phantoms")
    base = make_phantom(seed, snr=None, **phantom_options)
    rng = np.random.default_rng([int(seed), 12])
    shape = base.water.shape
    psi = np.float32(b0_range_hz) * _smooth_field(rng, shape)
    r2 = np.float32(r2star) * (1 + 0.2 * _smooth_field(rng, shape))
    phi0 = np.float32(np.pi / 2) * _smooth_field(rng, shape, 3)
    signal = signal_model(base.water, base.fat, psi, r2, te, field_t) * np.exp(1j * phi0)[..., None]
    muscle = _muscle_mask(base.labels, base.truth["parameters"]["profile"])
    sigma = float(base.water[muscle].mean()) / snr if snr else 0.0
    if sigma > 0:
        noise = rng.standard_normal((*signal.shape, 2), dtype=np.float32) * np.float32(sigma)
        signal = signal + (noise[..., 0] + 1j * noise[..., 1])
    echoes = signal.astype(np.complex64)
    if precession == "conjugate":
        echoes = echoes.conj()
    with np.errstate(invalid="ignore", divide="ignore"):
        pdff = np.where(base.water + base.fat > 0, base.fat / (base.water + base.fat), np.nan)
    truth = dict(base.truth)
    truth["parameters"] = {**base.truth["parameters"], "snr": snr, "noise_sigma": sigma,
                           "echo_times_s": te.tolist(), "field_t": float(field_t),
                           "b0_range_hz": float(b0_range_hz), "r2star": float(r2star),
                           "precession": precession, "fat_spectrum": "hamilton2011_liver_6peak"}
    return MultiEchoPhantom(echoes=echoes, te_s=tuple(te.tolist()), field_t=float(field_t),
                            affine=base.affine, labels=base.labels.astype(np.int16),
                            water=base.water, fat=base.fat, pdff=pdff.astype(np.float32),
                            fieldmap_hz=psi, r2star=r2.astype(np.float32), truth=truth)


def write_multiecho_phantom(out_dir: str | Path, phantom: MultiEchoPhantom) -> dict[str, Path]:
    """Write ``echo-<n>_part-mag|phase.nii.gz`` (+ BIDS JSON sidecars), labels and the truth.

    Phase in radians. Sidecars carry ``EchoTime`` (s), ``EchoNumber`` and
    ``MagneticFieldStrength`` (T). Truth: ``truth_water``, ``truth_fat``, ``truth_pdff``,
    ``truth_fieldmap_hz``, ``truth_r2star`` (.nii.gz) and ``truth.json`` (metrics, parameters).
    """
    from myocomp.io import save_nifti, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for n, te in enumerate(phantom.te_s, start=1):
        e = phantom.echoes[..., n - 1]
        for part, data in (("mag", np.abs(e)), ("phase", np.angle(e))):
            stem = f"echo-{n}_part-{part}"
            paths[stem] = save_nifti(data.astype(np.float32), phantom.affine, out / f"{stem}.nii.gz")
            write_json({"EchoTime": te, "EchoNumber": n, "MagneticFieldStrength": phantom.field_t,
                        "PhaseUnits": "rad" if part == "phase" else None}, out / f"{stem}.json")
    images = {"labels": phantom.labels, "truth_water": phantom.water, "truth_fat": phantom.fat,
              "truth_pdff": phantom.pdff, "truth_fieldmap_hz": phantom.fieldmap_hz,
              "truth_r2star": phantom.r2star}
    for role, data in images.items():
        paths[role] = save_nifti(data, phantom.affine, out / f"{role}.nii.gz")
    paths["truth"] = write_json(phantom.truth, out / "truth.json")
    return paths
