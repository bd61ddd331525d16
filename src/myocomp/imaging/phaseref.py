"""Phase-referenced fat-water separation from one echo (single-point Dixon, flexible echo time).

For echo sets that do not encode fat between their echoes (:func:`fatwater.check_fat_encoding`,
:func:`fatwater.check_two_echo_conditioning` refuse them), one echo whose fat phasor
``c = |c| exp(i theta)`` is far from real still separates water and fat if the background phase
``phi`` (coil, B0 up to that echo) is known: ``s = (W + c F) exp(i phi)`` with real ``W, F``
gives ``F = Im(s e^-i phi) / Im c`` and ``W = Re(s e^-i phi) - F Re c``. A voxel alone does not
tell ``phi``: a water voxel has phase ``phi``, a fat voxel ``phi + theta``. The background phase
is smooth, so it is grown over each plane (after Ma, JMRI 2008;27:881-890):

0. The plane's phase ramp (:func:`background_ramp`: B0 over several hundred Hz winds the phase
   by turns across the field of view) is removed first, so that within a block and between
   neighbouring blocks the background phase is nearly constant; it is restored at the end.
1. Blocks of ``block`` x ``block`` voxels; per block a cost over a grid of ``phi`` (5 degrees):
   the signal-weighted mean of ``1 - max(cos(psi - phi), cos(psi - theta - phi))`` (each voxel
   read as water or as fat, whichever fits). A block with both tissues has one minimum; a block
   of one tissue two (``psi`` and ``psi - theta``).
2. Region growing over the blocks from the block whose best minimum is most decisive: each new
   block takes the ``phi`` minimising its cost plus ``smoothness * (1 - cos(phi - predicted))``,
   the prediction being the weighted circular mean of its assigned neighbours. Each of the seed's
   minima is tried; the map with the lowest weighted cost is kept: a wrong global offset cannot
   fit both sides of a water/fat border (it leaves a jump of ``theta`` there).
3. Voxel level: the block phasors, smoothed and interpolated, are refined ``iterations`` times:
   every voxel is read as water or fat by the current reference, its phase moved back by that
   reading, and the reference is the Gaussian (``sigma`` voxels) mean of these phasors, weighted
   by signal and by how clearly the voxel is one or the other (mixed voxels carry no phase).

Checks. Conjugated data (the other direction of precession) give the same map with water and
fat swapped, so only anatomy tells the readings apart: with ``precession="auto"`` the reading whose
body-surface layer reads as subcutaneous fat, clearly more than the other's, is chosen
(:func:`_decide`), else the separation is refused. An image with too few water/fat borders (less
than :data:`MIN_DECISIVE` of its signal in blocks holding both tissues) is refused with any
precession: nothing in it fixes which tissue a homogeneous region is.
The two readings are grown independently; where the data fix the reading they are mirror
images, so a low :func:`mirror_agreement` is a warning. Echo sets the multi-echo method accepts
are refused (:func:`check_not_encoded`): on the ISMRM 2012 cases one echo is not enough.

Limits. PDFF is the signal fat fraction at that echo: no R2* correction, and a homogeneous
region's own fat fraction shifts its phase, which the smooth reference partly absorbs (phantoms:
muscle PDFF biased by -0.04 to -0.05). The field map comes from the phase difference of the two
echoes furthest apart, corrected for the fat the separation found (wrapped to +- 1 / (2 dTE)).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy import fft, ndimage

from myocomp.errors import ConfigError, InputFileError
from myocomp.imaging import fatwater as fw

DEFAULTS = {
    "mask_fraction": 0.05,
    "block": 8,
    "smoothness": 0.1,
    "sigma": 4.0,
    "ramp_sigma": 12.0,
    "iterations": 3,
    "min_blocks": 4,
}
#: Phase grid of the block stage (K steps over a turn).
K = 72
_GRID = np.exp(2j * np.pi * np.arange(K) / K)
#: A block is decisive when its second-best reading costs this much more than its best.
DECISIVE_GAP = 0.05
#: Least fraction of the grown signal in decisive blocks (phantoms 0.82-0.87, ge_thigh 0.36,
#: water only 0): below it the water/fat reading of the image is not fixed by its borders.
MIN_DECISIVE = 0.1
#: Least |Im c| (c: the fat phasor of the reference echo): below it fat is too close to in- or
#: opposed-phase for its phase to tell it from water.
MIN_QUADRATURE = 0.3


def reference_echo(te_s, field_t: float, spectrum=fw.HAMILTON_LIVER_6) -> int:
    """Index of the echo with the largest |Im c| (fat phasor nearest quadrature); ConfigError
    when even that is below :data:`MIN_QUADRATURE`."""
    c = fw.fat_phasors(te_s, field_t, spectrum)
    k = int(np.argmax(np.abs(c.imag)))
    if abs(c[k].imag) < MIN_QUADRATURE:
        raise ConfigError(f"{fw._te_text(te_s)} at {field_t:g} T: no echo has fat far enough "
                          f"from in- or opposed-phase for a phase-referenced separation "
                          f"(|Im c| {abs(c[k].imag):.2f} < {MIN_QUADRATURE})")
    return k


def _unit(z: np.ndarray) -> np.ndarray:
    mag = np.abs(z)
    return np.where(mag > 0, z / np.maximum(mag, 1e-30), 0)


def _smooth_complex(z: np.ndarray, sigma) -> np.ndarray:
    return ndimage.gaussian_filter(z.real, sigma) + 1j * ndimage.gaussian_filter(z.imag, sigma)


def block_costs(z: np.ndarray, mask: np.ndarray, theta: float, block: int):
    """(bx, by, K) cost of each background phase ``2 pi k / K`` per block of one plane ``z``
    (X, Y complex) and (bx, by) the block's signal sum; see the module doc, step 1."""
    pad = ((0, (-z.shape[0]) % block), (0, (-z.shape[1]) % block))
    m = np.pad(np.abs(z) * mask, pad).astype(np.float32)
    u = np.pad(_unit(z), pad)
    ur, ui = u.real.astype(np.float32), u.imag.astype(np.float32)
    bx, by = m.shape[0] // block, m.shape[1] // block
    w = m.reshape(bx, block, by, block).sum(axis=(1, 3))
    cost = np.empty((bx, by, K), np.float32)
    for k, g in enumerate(_GRID):
        f = g * np.exp(1j * theta)
        fit = np.maximum(ur * np.float32(g.real) + ui * np.float32(g.imag),
                         ur * np.float32(f.real) + ui * np.float32(f.imag))
        cost[..., k] = w - (m * fit).reshape(bx, block, by, block).sum(axis=(1, 3))
    return cost / np.maximum(w, 1e-30)[..., None], w


def _local_minima(curve: np.ndarray) -> np.ndarray:
    """Indices of the local minima of a periodic curve, lowest first."""
    c = np.r_[curve[-1], curve, curve[0]]
    inner = np.flatnonzero((c[1:-1] <= c[:-2]) & (c[1:-1] <= c[2:]))
    return inner[np.argsort(curve[inner], kind="stable")]


def _predicted(idx, w, allowed):
    """Weighted circular mean phasor of the assigned (idx >= 0) 3x3 neighbours of each block."""
    z = np.where(allowed & (idx >= 0), _GRID[np.maximum(idx, 0)] * w, 0)
    return (ndimage.uniform_filter(z.real, 3, mode="constant")
            + 1j * ndimage.uniform_filter(z.imag, 3, mode="constant")), z


def _choose(cost, pred, lam):
    p = _unit(pred)
    return np.argmin(cost + lam * (1 - (_GRID[None, :] * np.conj(p)[:, None]).real), axis=1)


def _grow(cost, w, comp, seed, k0, lam):
    """Block grid indices (-1 outside ``comp``) grown from ``seed`` at ``k0``, strong blocks
    first, then two passes of conditional modes."""
    idx = np.full(comp.shape, -1, np.intp)
    idx[seed] = k0
    strong = comp & (w >= np.quantile(w[comp], 0.3))
    for allowed in (strong, comp):
        while True:
            pred, _ = _predicted(idx, w, comp)
            front = (np.abs(pred) > 0) & allowed & (idx < 0)
            if not front.any():
                break
            idx[front] = _choose(cost[front], pred[front], lam)
    for _ in range(2):
        pred, own = _predicted(idx, w, comp)
        pred -= own / 9
        ok = comp & (np.abs(pred) > 0)
        idx[ok] = _choose(cost[ok], pred[ok], lam)
    return idx


def _gaps(cost, inside) -> np.ndarray:
    """(bx, by) cost of each block's second-best local minimum over the phase grid minus its best
    (1 with one minimum; 0 outside ``inside``)."""
    is_min = (cost <= np.roll(cost, 1, axis=-1)) & (cost <= np.roll(cost, -1, axis=-1))
    minima = np.where(is_min, cost, np.inf)
    best = np.argmin(minima, axis=-1)[..., None]
    lowest = np.take_along_axis(minima, best, axis=-1)[..., 0]
    np.put_along_axis(minima, best, np.inf, axis=-1)
    second = minima.min(axis=-1)
    gap = np.where(np.isfinite(second), second - lowest, 1.0)
    return np.where(inside, gap, 0.0).astype(np.float32)


def _seed(gap, w, comp):
    """The block (in ``comp``) whose neighbourhood has the most decisive best minimum."""
    score = ndimage.uniform_filter(gap * w * comp, 3)
    return np.unravel_index(int(np.argmax(np.where(comp, score, -1))), comp.shape)


def _block_reference(cost, w, opts):
    """(bx, by) weighted phasors of the grown background phase (0 where not estimated), and the
    signal of the blocks that were grown and of those among them whose reading is decisive."""
    inside = w > 0.3 * np.median(w[w > 0]) if (w > 0).any() else w > 0
    lab, n = ndimage.label(inside)
    gap = _gaps(cost, inside)
    out = np.zeros(w.shape, complex)
    for j in range(1, n + 1):
        comp = lab == j
        if comp.sum() < opts["min_blocks"]:
            inside[comp] = False
            continue
        seed = _seed(gap, w, comp)
        best = None
        for k0 in _local_minima(cost[seed])[:3]:
            idx = _grow(cost, w, comp, seed, k0, opts["smoothness"])
            chosen = np.take_along_axis(cost[comp], idx[comp][:, None], axis=1)[:, 0]
            score = float((chosen * w[comp]).sum() / w[comp].sum())
            if best is None or score < best[0]:
                best = (score, idx)
        out[comp] = _GRID[best[1][comp]] * w[comp]
    return out, float(w[inside].sum()), float(w[inside & (gap > DECISIVE_GAP)].sum())


def _refine(z, b, mask, theta, opts):
    """Voxel-level reference (step 3 of the module doc); ``b`` unit phasors (X, Y), 0 where no
    grown block is near (left so: a region's own phase is no reference)."""
    m, u, known = np.abs(z) * mask, _unit(z), np.abs(b) > 0
    for _ in range(opts["iterations"]):
        rel = np.angle(u * np.conj(b))
        d_water, d_fat = np.abs(rel), np.abs(np.angle(np.exp(1j * (rel - theta))))
        clear = np.clip(np.abs(d_water - d_fat) / abs(theta), 0, 1)
        back = np.where(d_fat < d_water, np.exp(-1j * theta), 1)
        s = _smooth_complex(u * back * m * clear, opts["sigma"])
        b = np.where(known & (np.abs(s) > 0), _unit(s), b)
    return b


def background_ramp(z: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """(X, Y) smooth phase (rad) of one plane whose gradient is the local (Gaussian ``sigma``
    voxels) signal-weighted circular mean of neighbour phase differences, integrated by least
    squares (Neumann Poisson equation, DCT). Steps across water/fat borders enter as
    ``g +- theta`` in about equal numbers, so their sum points along ``g`` and the estimate
    follows the background (B0 up to the echo, coil) without the tissue steps."""
    m, u = np.abs(z) * mask, _unit(z)
    div = np.zeros(z.shape)
    for axis in (0, 1):
        head, tail = [slice(None)] * 2, [slice(None)] * 2
        head[axis], tail[axis] = slice(0, -1), slice(1, None)
        head, tail = tuple(head), tuple(tail)
        pairs = np.zeros(z.shape, complex)
        pairs[head] = u[tail] * np.conj(u[head]) * m[tail] * m[head]
        grad = np.angle(_smooth_complex(pairs, sigma))
        grad[tuple(slice(-1, None) if a == axis else slice(None) for a in (0, 1))] = 0
        div += grad
        div[tail] -= grad[head]
    eig = [2 * np.cos(np.pi * np.arange(n) / n) - 2 for n in z.shape]
    den = eig[0][:, None] + eig[1][None, :]
    den[0, 0] = 1.0
    coef = fft.dctn(div, type=2, norm="ortho") / den
    coef[0, 0] = 0.0
    return fft.idctn(coef, type=2, norm="ortho")


def _plane_reference(z, mask, theta, opts):
    ramp = np.exp(1j * background_ramp(z, mask, opts["ramp_sigma"]))
    b, grown, decisive = _grown_reference(z * np.conj(ramp), mask, theta, opts)
    return b * ramp, grown, decisive


def _grown_reference(z, mask, theta, opts):
    block = opts["block"]
    cost, w = block_costs(z, mask, theta, block)
    coarse, grown, decisive = _block_reference(cost, w, opts)
    coarse = _smooth_complex(coarse, 0.7)
    up = [ndimage.zoom(part, block, order=1, mode="nearest", grid_mode=True)
          for part in (coarse.real, coarse.imag)]
    up = (up[0] + 1j * up[1])[: z.shape[0], : z.shape[1]]
    b = np.where(np.abs(up) > 1e-3 * np.abs(up).max(initial=0.0), _unit(up), 0)
    return _refine(z, b, mask, theta, opts), grown, decisive


def background_phase(z: np.ndarray, mask: np.ndarray, theta: float, **options):
    """(X, Y, Z) unit phasors of the smooth background phase of one echo ``z`` (X, Y, Z complex)
    whose fat phasor has angle ``theta`` (rad), grown plane by plane (normal to the axis with the
    fewest voxels; a 2-D multi-slice acquisition may change phase between slices), and the
    fraction of the grown blocks' signal in decisive blocks (water and fat both present, so the
    reading is fixed by the block itself: cost gap > :data:`DECISIVE_GAP`)."""
    opts = {**DEFAULTS, **options}
    thin = int(np.argmin(z.shape))
    zs, ms = np.moveaxis(z, thin, 0), np.moveaxis(mask, thin, 0)
    out = np.ones(zs.shape, np.complex64)
    grown = decisive = 0.0
    for k in range(zs.shape[0]):
        if ms[k].any():
            box = _box(ms[k], 2 * opts["block"])
            out[k][box], g, d = _plane_reference(zs[k][box], ms[k][box], theta, opts)
            grown, decisive = grown + g, decisive + d
    return np.moveaxis(out, 0, thin), decisive / grown if grown else 0.0


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` (2-D) widened by ``margin`` voxels, within the plane."""
    box = []
    for axis, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=1 - axis))
        box.append(slice(max(0, hit[0] - margin), min(n, hit[-1] + 1 + margin)))
    return tuple(box)


def components(z: np.ndarray, b: np.ndarray, c: complex):
    """Real W and F (signed) of ``z = (W + c F) b`` for unit phasors ``b``."""
    zp = z * np.conj(b)
    fat = zp.imag / c.imag
    return zp.real - fat * c.real, fat


def _fieldmap(echoes, te, water, fat, c, k) -> np.ndarray:
    """Field (Hz) from echo ``k`` and the echo furthest from it in time, corrected for the
    model's fat phase between them (wrapped to +- 1 / (2 dTE))."""
    j = int(np.argmax(np.abs(te - te[k])))
    w, f = np.clip(water, 0, None), np.clip(fat, 0, None)
    ratio = echoes[..., j] * np.conj(echoes[..., k]) * np.conj((w + c[j] * f) * np.conj(w + c[k] * f))
    return (np.angle(ratio) / (2 * np.pi * (te[j] - te[k]))).astype(np.float32)


class _Reading(NamedTuple):
    """One precession reading: real W, F; PDFF; the background phasors; the median PDFF of the
    body-surface layer; the fraction of decisive signal (:func:`background_phase`)."""

    water: np.ndarray
    fat: np.ndarray
    pdff: np.ndarray
    phase: np.ndarray
    surface: float
    determined: float


def _reading(echoes, mask, k, c, layer, opts) -> _Reading:
    b, determined = background_phase(echoes[..., k], mask, float(np.angle(c[k])), **opts)
    if determined < MIN_DECISIVE:
        raise InputFileError(
            f"only {100 * determined:.0f} % of the signal lies in blocks with both water and fat "
            f"({100 * MIN_DECISIVE:.0f} % needed): one echo's phase cannot tell which tissue a "
            "homogeneous region is, so a phase-referenced separation would be a guess")
    water, fat = components(echoes[..., k], b, c[k])
    known = mask & (np.abs(b) > 0)  # no grown block near: no reference, no PDFF
    pdff = np.where(known, fw.pdff_from_components(water, fat, real=True), np.nan)
    surface = float(np.nanmedian(pdff[layer])) if layer.any() else float("nan")
    return _Reading(water, fat, pdff.astype(np.float32), b, surface, determined)


def check_not_encoded(te_s, field_t: float, spectrum=fw.HAMILTON_LIVER_6) -> None:
    """ConfigError when the multi-echo separation accepts these echoes: it fits every echo (and
    R2*) and is PDFF-grade; one echo's phase is the fallback for echo sets it refuses."""
    try:
        fw.check_fat_encoding(te_s, field_t, spectrum)
        if len(te_s) == 2:
            fw.check_two_echo_conditioning(te_s, field_t, spectrum)
    except ConfigError:
        return
    raise ConfigError(f"{fw._te_text(te_s)} at {field_t:g} T encode fat between the echoes: use "
                      "the multi-echo separation (--method multi_echo, the default); "
                      "phase_referenced is for echo sets it refuses")


#: Mirror agreement (:func:`mirror_agreement`) below which a result carries a warning.
MIN_MIRROR_AGREEMENT = 0.95


def mirror_agreement(readings: dict, c_abs: float, mask) -> float:
    """Signal-weighted fraction of the mask where the conjugated reading's PDFF is within 0.2 of
    the mirror image of the as-stored one (water |c| F, fat W / |c|). Both are grown
    independently, so where the data fix the reading they agree; where the growth's path did,
    they need not (ge_thigh 0.92; phantoms 0.97-1.00)."""
    one, other = readings["as_stored"], readings["conjugate"]
    mirror = fw.pdff_from_components(c_abs * np.clip(one.fat, 0, None),
                                     np.clip(one.water, 0, None) / c_abs, real=True)
    agree = np.abs(fw.pdff_from_components(other.water, other.fat, real=True) - mirror) < 0.2
    weight = np.abs(one.water + one.fat)[mask]
    return float((weight * agree[mask]).sum() / max(weight.sum(), 1e-30))


def _agreement_warning(agreement) -> list[str]:
    if agreement is None or agreement >= MIN_MIRROR_AGREEMENT:
        return []
    return [f"the two readings are mirror images in only {100 * agreement:.0f} % of the signal "
            "(region growing decided the rest): regions may read water as fat; check the water "
            "and fat images"]


#: Least difference of the two readings' median surface-layer PDFF for the surface to decide.
#: The readings are near mirror images (a PDFF p maps to about (1 - p) / (1 - p + |c|^2 p)), so
#: their medians meet near 0.6 when the surface is neither water nor fat.
SURFACE_GAP = 0.25


def _decide(surface: dict, precession: str) -> tuple[str, str]:
    """(reading, what decided it): the requested one, or the reading whose body-surface layer is
    fat (median PDFF >= SURFACE_FAT) by at least SURFACE_GAP more than the other's."""
    if precession != "auto":
        return precession, "requested"
    fat, other = sorted(surface, key=surface.get, reverse=True)
    if surface[fat] >= fw.SURFACE_FAT and surface[fat] - surface[other] >= SURFACE_GAP:
        return fat, "surface_layer"
    text = ", ".join(f"{k}: {v:.2f}" for k, v in surface.items())
    raise InputFileError(
        "cannot tell water from fat: the two readings of a phase-referenced separation are "
        f"mirror images and the body-surface layer does not read clearly as subcutaneous fat in "
        f"one of them (median PDFF {text}); run with --precession as_stored or conjugate")


def separate_phase_referenced(echoes: np.ndarray, te_s, field_t: float, *,
                              spectrum=fw.HAMILTON_LIVER_6, precession: str = "auto",
                              **options) -> fw.SeparationResult:
    """Water, fat, PDFF and field map from the phase of one echo (see the module doc).

    Parameters
    ----------
    echoes : (X, Y, Z, N) complex, N >= 2 (the field map needs two); te_s : (N,) s; field_t : T.
    precession : ``as_stored``, ``conjugate`` or ``auto`` (the body-surface layer decides).
    options : :data:`DEFAULTS` (mask_fraction; block: voxels per block side; smoothness: weight
        of the block prior; sigma: voxel-level smoothing, voxels; iterations; min_blocks).

    Returns a :class:`fatwater.SeparationResult` with ``r2star`` None; water and fat are the
    real amplitudes at the reference echo times its background phase.
    """
    te = fw.check_call(echoes, te_s, field_t, precession, options, DEFAULTS, "phase-referenced")
    check_not_encoded(te, field_t, spectrum)
    opts = {**DEFAULTS, **options}
    echoes = np.nan_to_num(np.asarray(echoes, dtype=np.complex64))
    k = reference_echo(te, field_t, spectrum)
    c = fw.fat_phasors(te, field_t, spectrum)
    mask = fw.body_signal_mask(echoes, opts["mask_fraction"])
    layer = fw.surface_layer(mask)
    names = ("as_stored", "conjugate") if precession == "auto" else (precession,)
    readings = {n: _reading(echoes if n == "as_stored" else echoes.conj(), mask, k, c, layer, opts)
                for n in names}
    surface = {n: r.surface for n, r in readings.items()}
    chosen, basis = _decide(surface, precession)
    if chosen == "conjugate":
        echoes = echoes.conj()
    water, fat, pdff, b, _, determined = readings[chosen]
    agreement = mirror_agreement(readings, abs(c[k]), mask) if len(readings) == 2 else None
    displacement = fw.echo_displacement(echoes)
    notes = (fw._surface_warning(surface[chosen], chosen) + _agreement_warning(agreement)
             + fw._displacement_warning(displacement, "the field map is unreliable near tissue "
                                        f"borders (PDFF uses echo {k + 1} alone)"))
    for text in notes:
        warnings.warn(text, UserWarning, stacklevel=2)
    params = {
        "algorithm": "phase-referenced single echo: block-wise region growing of the background "
        "phase, voxel-level refinement, real W and F from one echo",
        "echo_times_s": te.tolist(), "field_t": float(field_t), "fat_spectrum": spectrum.to_dict(),
        "precession": {"requested": precession, "used": chosen, "surface_pdff": surface,
                       "decided_by": basis},
        "options": opts, "reference_echo": k + 1, "decisive_fraction": round(determined, 4),
        "mirror_agreement": None if agreement is None else round(agreement, 4),
        "reference_fat_angle_deg": float(np.degrees(np.angle(c[k]))),
        "pdff": f"signal fat fraction F/(W+F) at echo {k + 1} (real W, F), no R2* correction",
        "mask_voxels": int(mask.sum()), "unreferenced_voxels": int((mask & np.isnan(pdff)).sum()),
        "echo_displacement_voxels": np.round(displacement, 3).tolist(), "warnings": notes,
    }
    field_map = np.where(mask, _fieldmap(echoes, te, water, fat, c, k), 0).astype(np.float32)
    return fw.SeparationResult((water * b).astype(np.complex64), (fat * b).astype(np.complex64),
                               pdff, field_map, None, mask=mask, params=params)
