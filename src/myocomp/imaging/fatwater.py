"""Fat-water separation of chemical-shift-encoded multi-echo gradient-echo data (arrays in/out).

Signal model of one voxel at echo time ``t_n`` (s), the convention of the ISMRM Fat-Water
Toolbox for ``PrecessionIsClockwise = 1``::

    s_n = (W + F c_n) exp((-R2* + i 2 pi psi) t_n),   c_n = sum_p a_p exp(i 2 pi f_p t_n)

``W``, ``F``: complex water and fat amplitudes at t = 0; ``psi``: B0 off-resonance (Hz);
``f_p = gamma B0 delta_p`` the fat peak frequencies relative to water (Hz), ``a_p`` their relative
amplitudes (sum 1): the 6-peak spectrum :data:`HAMILTON_LIVER_6`.

Algorithm (:func:`separate`):

1. Signal mask: root-sum-of-squares over echoes above ``mask_fraction`` of its 99th percentile.
2. Coarse level: complex data summed over blocks of about ``coarse_voxels`` (a block keeps the
   linear model: one psi, mixed W and F). For every coarse voxel the VARPRO residual
   ``min_{W,F} ||s - A(psi, R2*) [W, F]||^2 / ||s||^2`` is computed over a grid of psi (and of
   R2*, minimum taken, with >= 3 echoes; :data:`COARSE_R2STAR_GRID` with >= 4). Two echoes do
   not determine complex W and F and psi, so there the model constrains W and F to share one
   phase (real W, F times exp(i phi)).
3. Field-map choice robust to the water/fat ambiguity: region growing on the coarse grid. From a
   seed (the strongest interior voxel of each connected component) the field map grows
   outward, strong voxels first; each new voxel takes the psi minimising its residual plus
   ``smoothness * ((psi - predicted) / |f_main|)^2``, the prediction being the signal-weighted mean
   of its assigned neighbours. Each residual minimum of the seed gives one candidate map;
   the candidate with the lowest ``signal-weighted residual + shim_weight * (median psi / |f_main|)^2``
   is kept (a swapped map has a worse multi-peak fit and a median offset by about one fat
   shift, while the scanner's centre frequency puts the water peak near 0 Hz). Two passes of
   conditional modes then correct isolated errors.
   Precession (``auto``): steps 2-3 run on the data as stored and conjugated; see
   :func:`_choose_precession` for the decision and the body-surface check (two echoes: unless
   both readings give the same PDFF, :func:`_equivalent_readings`).
4. Fine level: the coarse map, interpolated to every voxel, is the centre of a narrow search
   (+- ``window`` x |f_main|, narrower than the distance to any alias), refined by Gauss-Newton in
   (psi, R2*) with >= 3 echoes or by parabolic interpolation with 2 echoes; then the linear
   least-squares W and F.
5. PDFF with magnitude discrimination (Liu et al., MRM 2007): FF = |F| / |W + F| where
   |F| > |W|, else 1 - |W| / |W + F| (no Rician noise floor from the small component). With two
   echoes W and F are real (signed), and FF = F / (W + F), clipped to [0, 1].
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from myocomp.errors import ConfigError, InputFileError

#: Proton gyromagnetic ratio / 2 pi (MHz/T).
GYROMAGNETIC_MHZ_PER_T = 42.577478518

#: Voxels per chunk in the voxel-wise stages (memory ~ chunk x echoes x grid).
CHUNK = 65536


@dataclass(frozen=True)
class FatSpectrum:
    """A multi-peak fat spectrum: chemical shifts relative to water (ppm) and relative amplitudes."""

    name: str
    ppm: tuple[float, ...]
    amplitudes: tuple[float, ...]
    source: str

    def frequencies_hz(self, field_t: float) -> np.ndarray:
        """Peak frequencies relative to water (Hz) at ``field_t`` tesla."""
        return np.asarray(self.ppm) * GYROMAGNETIC_MHZ_PER_T * float(field_t)

    def weights(self) -> np.ndarray:
        """Relative amplitudes normalised to sum 1."""
        a = np.asarray(self.amplitudes, dtype=float)
        return a / a.sum()

    def main_shift_hz(self, field_t: float) -> float:
        """Frequency of the largest peak relative to water (Hz; negative)."""
        return float(self.frequencies_hz(field_t)[int(np.argmax(self.amplitudes))])

    def to_dict(self) -> dict:
        return asdict(self)


#: Hamilton G et al., "In vivo characterization of the liver fat 1H MR spectrum", NMR Biomed
#: 2011;24:784-790; the default fat model of the ISMRM Fat-Water Toolbox (Hu et al. 2012).
HAMILTON_LIVER_6 = FatSpectrum(
    name="hamilton2011_liver_6peak",
    ppm=(-3.80, -3.40, -2.60, -1.94, -0.39, 0.60),
    amplitudes=(0.087, 0.693, 0.128, 0.004, 0.039, 0.048),
    source="Hamilton et al., NMR Biomed 2011;24:784-790 (ISMRM Fat-Water Toolbox default)",
)

#: R2* values (1/s) of the voxel-wise search that starts the Levenberg-Marquardt refinement.
R2STAR_GRID = (0.0, 60.0, 200.0)
#: R2* values (1/s) of the coarse field-map stage with >= 4 echoes, where the residual decides
#: between a voxel's water and fat interpretations: with R2STAR_GRID, a liver block of ISMRM case
#: 12 (R2* ~25 1/s, echoes over 9.2 ms) fitted worse as water than as its fat alias, whose
#: multi-peak dephasing mimics decay. With 3 echoes (6 measurements, 6 unknowns) a free R2* fits
#: either precession almost exactly, so there the coarse grid stays R2STAR_GRID.
COARSE_R2STAR_GRID = (0.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0, 130.0, 160.0, 200.0, 300.0)


def fat_phasors(te_s, field_t: float, spectrum: FatSpectrum = HAMILTON_LIVER_6) -> np.ndarray:
    """(N,) complex fat signal c_n = sum_p a_p exp(i 2 pi f_p t_n) at echo times ``te_s`` (s)."""
    te = np.asarray(te_s, dtype=float)
    f = spectrum.frequencies_hz(field_t)
    return np.exp(2j * np.pi * te[:, None] * f[None, :]) @ spectrum.weights()


def signal_model(water, fat, fieldmap_hz, r2star, te_s, field_t: float,
                 spectrum: FatSpectrum = HAMILTON_LIVER_6) -> np.ndarray:
    """Multi-echo signal (..., N) complex128 from W, F (complex or real, ...), psi (Hz), R2* (1/s)."""
    te = np.asarray(te_s, dtype=float)
    c = fat_phasors(te, field_t, spectrum)
    w, f = np.asarray(water)[..., None], np.asarray(fat)[..., None]
    decay = np.exp((-np.asarray(r2star, float)[..., None] + 2j * np.pi
                    * np.asarray(fieldmap_hz, float)[..., None]) * te)
    return (w + f * c) * decay


@dataclass(frozen=True, eq=False)
class SeparationResult:
    """Output of :func:`separate`; arrays on the input grid (X, Y, Z).

    water, fat : complex64 amplitudes at t = 0 (real-valued times one phase with 2 echoes).
    pdff : float32 proton-density fat fraction 0-1; NaN outside ``mask``.
    fieldmap_hz : float32 B0 off-resonance (Hz); outside ``mask`` a smooth extrapolation.
    r2star : float32 (1/s) with >= 3 echoes, else None. mask : bool signal mask.
    params : provenance (echo times, field, spectrum, algorithm, parameters, choices made).
    """

    water: np.ndarray
    fat: np.ndarray
    pdff: np.ndarray
    fieldmap_hz: np.ndarray
    r2star: np.ndarray | None
    mask: np.ndarray
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Model:
    te: np.ndarray
    c: np.ndarray
    real: bool
    r2s: np.ndarray
    scale: float  # |main fat shift| (Hz)


def _model(te_s, field_t, spectrum, r2star_grid=R2STAR_GRID) -> _Model:
    te = np.asarray(te_s, dtype=float)
    real = te.size == 2
    return _Model(te=te, c=fat_phasors(te, field_t, spectrum), real=real,
                  r2s=np.array([0.0]) if real else np.asarray(r2star_grid, dtype=float),
                  scale=abs(spectrum.main_shift_hz(field_t)))


def _projectors(m: _Model, psis: np.ndarray) -> np.ndarray:
    """Per (R2*, psi) an orthonormal basis of the model's column space, applied to the data.

    Complex model: (nr * nk * 2, N) rows Q^H diag(exp(-i 2 pi psi t)). Real model: (nk * 2, 2N)
    rows Q^T of the stacked [Re; Im] design matrix.
    """
    rows = []
    for r in m.r2s:
        for psi in psis:
            a = np.stack([np.ones_like(m.c), m.c], axis=1) * np.exp(
                (-r + 2j * np.pi * psi) * m.te)[:, None]
            if m.real:
                q, _ = np.linalg.qr(np.concatenate([a.real, a.imag]))
                rows.append(q.T)
            else:
                q, _ = np.linalg.qr(a)
                rows.append(q.conj().T)
    return np.concatenate(rows).astype(np.float32 if m.real else np.complex64)


def _abs2(z: np.ndarray) -> np.ndarray:
    return z.real**2 + z.imag**2


def _relative_residual(s: np.ndarray, proj: np.ndarray, m: _Model, nk: int):
    """(V, nk) relative residual min over R2*, and (V, nk) index of the best R2*."""
    energy = np.maximum(_abs2(s).sum(axis=1), 1e-30)[:, None]
    if m.real:
        u = np.concatenate([s.real, s.imag], axis=1).astype(np.float32)
        v = np.concatenate([s.imag, -s.real], axis=1).astype(np.float32)
        qu = (u @ proj.T).reshape(len(s), nk, 2)
        qv = (v @ proj.T).reshape(len(s), nk, 2)
        a, c, b = (qu**2).sum(-1), (qv**2).sum(-1), (qu * qv).sum(-1)
        power = (a + c) / 2 + np.sqrt(((a - c) / 2) ** 2 + b**2)
        return 1.0 - power / energy, np.zeros(power.shape, dtype=np.intp)
    p = (s.astype(np.complex64) @ proj.T).view(np.float32)
    p *= p
    power = p.reshape(len(s), m.r2s.size, nk, 4).sum(-1)
    best = power.argmax(axis=1)
    return 1.0 - power.max(axis=1) / energy, best


def residual_curves(s: np.ndarray, te_s, field_t: float, psis,
                    spectrum: FatSpectrum = HAMILTON_LIVER_6, r2star_grid=R2STAR_GRID):
    """Relative VARPRO residual (V, nk) of signals ``s`` (V, N) over the field-map grid ``psis`` (Hz),
    minimised over the R2* values ``r2star_grid`` (1/s; unused with two echoes).

    Also returns (V, nk) the R2* (1/s) of the best fit at each psi (0 with two echoes).
    """
    m = _model(te_s, field_t, spectrum, r2star_grid)
    psis = np.asarray(psis, dtype=float)
    proj = _projectors(m, psis)
    out = np.empty((len(s), psis.size), np.float32)
    r2 = np.empty((len(s), psis.size), np.float32)
    for i in range(0, len(s), CHUNK):
        res, best = _relative_residual(s[i:i + CHUNK], proj, m, psis.size)
        out[i:i + CHUNK], r2[i:i + CHUNK] = res, m.r2s[best]
    return out, r2


def signal_mask(echoes: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """(X, Y, Z) bool: root-sum-of-squares over echoes > ``fraction`` x its 99th percentile."""
    rss = np.sqrt((np.abs(echoes) ** 2).sum(axis=-1))
    finite = rss[np.isfinite(rss)]
    if not finite.size:
        return np.zeros(rss.shape, bool)
    return rss > fraction * np.percentile(finite, 99)


def _block_factors(shape, coarse_voxels: int) -> tuple[int, ...]:
    """Block size per axis: about ``coarse_voxels`` blocks along each axis, half as many along
    the axis with the fewest voxels (usually the slices)."""
    thin = int(np.argmin(shape))
    return tuple(max(1, int(round(n / (coarse_voxels / (2 if a == thin else 1)))))
                 for a, n in enumerate(shape))


def _block_sum(x: np.ndarray, f: tuple[int, ...]) -> np.ndarray:
    """Sum over blocks f[0] x f[1] x f[2] of (X, Y, Z, ...) (zero-padded at the far ends)."""
    pad = [(0, (-n) % k) for n, k in zip(x.shape[:3], f, strict=True)]
    x = np.pad(x, pad + [(0, 0)] * (x.ndim - 3))
    sx, sy, sz = (n // k for n, k in zip(x.shape[:3], f, strict=True))
    return x.reshape(sx, f[0], sy, f[1], sz, f[2], *x.shape[3:]).sum(axis=(1, 3, 5))


def _neighbour_mean(value: np.ndarray, weight: np.ndarray):
    """Weighted 3x3x3 neighbourhood mean of ``value`` (weights 0 = missing) and the weight sum."""
    num = ndimage.uniform_filter(value * weight, 3, mode="constant")
    den = ndimage.uniform_filter(weight, 3, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den, den


def _grow(cost, psis, comp, weight, seed, k0, lam, scale):
    """Region growing of the field map over ``comp`` (bool) from ``seed`` at grid index ``k0``.

    ``cost``: (X, Y, Z, nk) relative residuals; returns (X, Y, Z) grid indices (-1 outside).
    """
    idx = np.full(comp.shape, -1, np.intp)
    idx[seed] = k0
    strong = comp & (weight >= np.quantile(weight[comp], 0.3))
    for allowed in (strong, comp):
        while True:
            assigned = idx >= 0
            pred, den = _neighbour_mean(np.where(assigned, psis[np.maximum(idx, 0)], 0.0),
                                        np.where(assigned, weight, 0.0))
            front = (den > 0) & allowed & ~assigned
            if not front.any():
                break
            pen = lam * ((psis[None, :] - pred[front][:, None]) / scale) ** 2
            idx[front] = np.argmin(cost[front] + pen, axis=1)
    return idx


def _conditional_modes(cost, psis, idx, comp, weight, lam, scale, passes=2):
    """Re-choose each voxel's psi given its neighbours' (iterated conditional modes)."""
    for _ in range(passes):
        pred, den = _neighbour_mean(np.where(comp, psis[np.maximum(idx, 0)], 0.0),
                                    np.where(comp, weight, 0.0))
        ok = comp & (den > 0)
        pen = lam * ((psis[None, :] - pred[ok][:, None]) / scale) ** 2
        idx[ok] = np.argmin(cost[ok] + pen, axis=1)
    return idx


def _seed_candidates(curve, psis, n: int, period: float | None, shift: float):
    """Grid indices of seed field values to try: the lowest local minima of ``curve`` and the
    water/fat aliases of the best one (+- the main fat shift ``shift``, Hz); one per class
    (modulo the residual's ``period`` with uniform echo spacing, each nearest 0 Hz), at most
    ``n`` minima plus the two aliases."""
    inner = np.flatnonzero((curve[1:-1] <= curve[:-2]) & (curve[1:-1] <= curve[2:])) + 1
    order = inner[np.argsort(curve[inner])] if inner.size else np.array([int(np.argmin(curve))])
    best = psis[order[0]]
    values = [psis[k] for k in order[:n]] + [best + shift, best - shift]
    tol = max(2 * (psis[1] - psis[0]), 0.1 * abs(shift))
    kept: list[float] = []
    for v in values:
        if period:
            v = v - period * np.round(v / period)
        if psis[0] <= v <= psis[-1] and all(abs(v - u) > tol for u in kept):
            kept.append(v)
    return np.array([int(np.argmin(np.abs(psis - v))) for v in kept])


def _period(te: np.ndarray) -> float | None:
    """Period (Hz) of the residual in psi when the echoes are uniformly spaced, else None."""
    d = np.diff(np.sort(te))
    return float(1.0 / d.mean()) if np.ptp(d) < 1e-3 * d.mean() else None


def _score(cost, psis, idx, comp, weight, scale, shim_weight):
    w2 = weight[comp] ** 2
    chosen = np.take_along_axis(cost[comp], idx[comp][:, None], axis=1)[:, 0]
    fit = float((chosen * w2).sum() / w2.sum())
    return fit + shim_weight * (float(np.median(psis[idx[comp]])) / scale) ** 2, fit


@dataclass(frozen=True)
class _Coarse:
    psi: np.ndarray  # (cx, cy, cz) Hz, NaN where not estimated
    factors: tuple[int, ...]
    score: float
    fit: float
    components: list


def _coarse_field(echoes, mask, m, psis, opts) -> _Coarse:
    """Field map on the coarse grid by residual curves and region growing (see module doc)."""
    f = _block_factors(mask.shape, opts["coarse_voxels"])
    cs = _block_sum(np.where(mask[..., None], echoes, 0).astype(np.complex64), f)
    cmask = _block_sum(mask.astype(np.float32), f) >= 0.5 * np.prod(f)
    weight = np.sqrt((np.abs(cs) ** 2).sum(axis=-1))
    lab, _ = ndimage.label(cmask)
    cost = np.ones((*cmask.shape, psis.size), np.float32)
    r2grid = COARSE_R2STAR_GRID if m.te.size >= 4 else R2STAR_GRID
    cost[cmask] = residual_curves(cs[cmask], m.te, opts["field_t"], psis, opts["spectrum"],
                                  r2grid)[0]
    psi = np.full(cmask.shape, np.nan)
    lam, scale, comps = opts["smoothness"], m.scale * opts["coarse_scale"], []
    total = fit_total = energy = 0.0
    for j, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == j
        if comp.sum() < opts["min_component"]:
            continue
        c_cost, c_w = cost[sl], np.where(comp, weight[sl], 0.0)
        seed = np.unravel_index(np.argmax(ndimage.uniform_filter(c_w, 3) * comp), comp.shape)
        best = None
        for k0 in _seed_candidates(c_cost[seed], psis, opts["seed_candidates"], _period(m.te),
                                   m.scale):
            idx = _grow(c_cost, psis, comp, c_w, seed, k0, lam, scale)
            idx = _conditional_modes(c_cost, psis, idx, comp, c_w, lam, scale)
            sc, fit = _score(c_cost, psis, idx, comp, c_w, m.scale, opts["shim_weight"])
            if best is None or sc < best[0]:
                best = (sc, idx, fit, float(psis[k0]))
        sub = psi[sl]
        sub[comp] = psis[best[1][comp]]
        e = float((c_w[comp] ** 2).sum())
        total, fit_total, energy = total + best[0] * e, fit_total + best[2] * e, energy + e
        comps.append({"coarse_voxels": int(comp.sum()), "seed_hz": best[3],
                      "score": best[0], "residual": best[2]})
    return _Coarse(psi=psi, factors=f, score=total / energy if energy else np.inf,
                   fit=fit_total / energy if energy else np.inf, components=comps)


def _smoothed(coarse: np.ndarray) -> np.ndarray:
    """Coarse map with NaNs filled by the nearest estimate, lightly smoothed."""
    missing = ~np.isfinite(coarse)
    if missing.any():
        near = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
        coarse = coarse[tuple(near)]
    return ndimage.gaussian_filter(coarse, 0.7, mode="nearest")


def _upsample(coarse: np.ndarray, factors, shape) -> np.ndarray:
    """Fill NaNs by the nearest estimate, smooth lightly, interpolate linearly to ``shape``."""
    if not np.isfinite(coarse).any():
        return np.zeros(shape, np.float32)
    up = ndimage.zoom(_smoothed(coarse), factors, order=1, mode="nearest", grid_mode=True)
    return up[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def _upsample_at(coarse: np.ndarray, factors, points) -> np.ndarray:
    """:func:`_upsample` evaluated only at the voxel indices ``points`` (tuple of 3 arrays)."""
    if not np.isfinite(coarse).any():
        return np.zeros(points[0].shape)
    coords = [(np.asarray(p) + 0.5) / f - 0.5 for p, f in zip(points, factors, strict=True)]
    return ndimage.map_coordinates(_smoothed(coarse), coords, order=1, mode="nearest")


def _linear_complex(s, psi, r2, m: _Model):
    """Least-squares complex W, F (V,) of echo-first signals ``s`` (N, V) given psi (Hz), R2* (1/s)."""
    e = np.exp((-r2 + 2j * np.pi * psi) * m.te[:, None])
    a2 = e * m.c[:, None]
    g11 = _abs2(e).sum(0)
    g22 = _abs2(a2).sum(0)
    g12 = (e.conj() * a2).sum(0)
    b1, b2 = (e.conj() * s).sum(0), (a2.conj() * s).sum(0)
    det = g11 * g22 - _abs2(g12)
    det = np.where(np.abs(det) > 1e-30, det, 1e-30)
    return (g22 * b1 - g12 * b2) / det, (g11 * b2 - g12.conj() * b1) / det


def _linear_real(s, psi, m: _Model):
    """Real W, F sharing one phase phi (two echoes): returns complex W e^{i phi}, F e^{i phi}, real W, F."""
    y = s * np.exp(-2j * np.pi * psi[:, None] * m.te)
    a = np.stack([np.ones_like(m.c), m.c], axis=1)
    q, rm = np.linalg.qr(np.concatenate([a.real, a.imag]))
    u = np.concatenate([y.real, y.imag], axis=1)
    v = np.concatenate([y.imag, -y.real], axis=1)
    qu, qv = u @ q, v @ q
    aa, cc, bb = (qu**2).sum(1), (qv**2).sum(1), (qu * qv).sum(1)
    lam = (aa + cc) / 2 + np.sqrt(((aa - cc) / 2) ** 2 + bb**2)
    vx, vy = np.where(aa >= cc, lam - cc, bb), np.where(aa >= cc, bb, lam - aa)
    norm = np.hypot(vx, vy)
    cos, sin = np.where(norm > 0, vx / np.where(norm > 0, norm, 1), 1.0), np.where(
        norm > 0, vy / np.where(norm > 0, norm, 1), 0.0)
    x = np.linalg.solve(rm, (cos[:, None] * qu + sin[:, None] * qv).T).T
    flip = np.where(x.sum(1) < 0, -1.0, 1.0)
    x *= flip[:, None]
    phase = np.exp(1j * np.arctan2(sin, cos)) * flip
    return x[:, 0] * phase, x[:, 1] * phase, x[:, 0], x[:, 1]


#: Real parameters (W re, W im, F re, F im, psi, R2*) as (complex base column, times i?).
_COLUMNS = ((0, False), (0, True), (1, False), (1, True), (2, False), (3, False))


def _normal_equations(base, r):
    """J^T J (V, 6, 6) and J^T r (V, 6) of the real-parameter Jacobian from 4 complex (N, V) columns."""
    conj = [b.conj() for b in base]
    k = {(i, j): (conj[i] * base[j]).sum(0) for i in range(4) for j in range(i, 4)}
    kr = [(b * r).sum(0) for b in conj]
    h = np.empty((r.shape[1], 6, 6))
    for a, (i, ri) in enumerate(_COLUMNS):
        for b, (j, rj) in enumerate(_COLUMNS):
            kij = k[(i, j)] if i <= j else k[(j, i)].conj()
            h[:, a, b] = kij.imag * (1 if ri else -1) if ri != rj else kij.real
    g = np.stack([kr[i].imag if ri else kr[i].real for i, ri in _COLUMNS], axis=1)
    return h, g


def _gauss_newton(s, psi, r2, m: _Model, iters: int, r2_max: float):
    """Levenberg-Marquardt refinement of (W, F, psi, R2*) per voxel of ``s`` (N, V); keeps improving steps."""
    w, f = _linear_complex(s, psi, r2, m)
    t, c = m.te[:, None], m.c[:, None]

    def residual(w, f, psi, r2):
        e = np.exp((-r2 + 2j * np.pi * psi) * t)
        return s - (w + f * c) * e, e

    r, e = residual(w, f, psi, r2)
    cost = _abs2(r).sum(0)
    for _ in range(iters):
        mod = s - r
        h, g = _normal_equations([e, c * e, 2j * np.pi * t * mod, -t * mod], r)
        h += (1e-3 * np.diagonal(h, axis1=1, axis2=2) + 1e-12)[:, :, None] * np.eye(6)
        d = np.linalg.solve(h, g[..., None])[..., 0].T
        nw, nf = w + d[0] + 1j * d[1], f + d[2] + 1j * d[3]
        npsi, nr2 = psi + d[4], np.clip(r2 + d[5], 0.0, r2_max)
        nr, ne = residual(nw, nf, npsi, nr2)
        ncost = _abs2(nr).sum(0)
        ok = ncost < cost
        w, f, psi, r2 = (np.where(ok, a, b) for a, b in ((nw, w), (nf, f), (npsi, psi), (nr2, r2)))
        r, e = np.where(ok, nr, r), np.where(ok, ne, e)
        cost = np.where(ok, ncost, cost)
    return psi, r2


def _parabolic(curve: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sub-grid offset (in grid steps, -0.5..0.5) of the minimum at index ``k`` of each row."""
    inner = (k > 0) & (k < curve.shape[1] - 1)
    kk = np.clip(k, 1, curve.shape[1] - 2)
    rows = np.arange(len(k))
    lo, mid, hi = curve[rows, kk - 1], curve[rows, kk], curve[rows, kk + 1]
    den = lo - 2 * mid + hi
    off = np.where(den > 0, 0.5 * (lo - hi) / np.where(den > 0, den, 1), 0.0)
    return np.where(inner, np.clip(off, -0.5, 0.5), 0.0)


def _fine_fit(s, pred, m: _Model, opts):
    """Voxel-wise psi search in a window around ``pred``, then refinement and W, F (chunk of voxels)."""
    half = opts["window"] * m.scale
    n = 25 if m.real else 9
    offsets = np.linspace(-half, half, n)
    y = s * np.exp(-2j * np.pi * pred[:, None] * m.te)
    curve, r2grid = residual_curves(y, m.te, opts["field_t"], offsets, opts["spectrum"])
    tether = opts["fine_smoothness"] * (offsets / (opts["fine_scale"] * m.scale)) ** 2
    k = np.argmin(curve + tether[None, :], axis=1)
    psi = pred + offsets[k] + _parabolic(curve, k) * (offsets[1] - offsets[0])
    if m.real:
        w, f, wr, fr = _linear_real(s, psi, m)
        return w, f, psi, None, (wr, fr)
    r2 = r2grid[np.arange(len(k)), k].astype(float)
    st = np.ascontiguousarray(s.T)
    psi, r2 = _gauss_newton(st, psi, r2, m, opts["gn_iterations"], opts["r2star_max"])
    w, f = _linear_complex(st, psi, r2, m)
    return w, f, psi, r2, None


def pdff_from_components(water, fat, *, real: bool = False) -> np.ndarray:
    """PDFF (0-1) from complex W, F by magnitude discrimination, or F / (W + F) for real (signed) W, F."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if real:
            ff = fat / (water + fat)
        else:
            mw, mf, tot = np.abs(water), np.abs(fat), np.abs(water + fat)
            ff = np.where(mf > mw, mf / tot, 1.0 - mw / tot)
    return np.clip(np.nan_to_num(ff, nan=0.0), 0.0, 1.0).astype(np.float32)


DEFAULTS = {
    "field_range_hz": 600.0,
    "mask_fraction": 0.05,
    "coarse_voxels": 32,
    "smoothness": 0.1,
    "coarse_scale": 0.5,
    "shim_weight": 0.05,
    "seed_candidates": 4,
    "min_component": 4,
    "window": 0.3,
    "fine_smoothness": 0.1,
    "fine_scale": 0.05,
    "gn_iterations": 2,
    "precession_margin": 0.85,
    "r2star_max": 1000.0,
    "register_echoes": False,
}


def check_call(echoes, te_s, field_t, precession: str, options: dict, defaults: dict,
               kind: str) -> np.ndarray:
    """The echo times (s) of a separation call, after refusing options not in ``defaults``
    (named as ``kind`` options), an unknown ``precession`` and malformed echoes, echo times or
    field (:class:`ConfigError`, :class:`InputFileError`)."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown {kind} option(s): {', '.join(sorted(unknown))}")
    if precession not in ("auto", "as_stored", "conjugate"):
        raise ConfigError(f"precession must be auto, as_stored or conjugate, got {precession!r}")
    return _check_inputs(echoes, te_s, field_t)


def body_signal_mask(echoes: np.ndarray, fraction: float) -> np.ndarray:
    """:func:`signal_mask`, refused (:class:`InputFileError`) when no voxel has signal."""
    mask = signal_mask(echoes, fraction)
    if not mask.any():
        raise InputFileError("no voxel with signal above the mask threshold")
    return mask


def _check_inputs(echoes, te_s, field_t):
    if echoes.ndim != 4:
        raise InputFileError(f"echoes must be (X, Y, Z, N) complex, got shape {echoes.shape}")
    te = np.asarray(te_s, dtype=float).ravel()
    if te.size != echoes.shape[-1]:
        raise ConfigError(f"{te.size} echo times for {echoes.shape[-1]} echoes")
    if te.size < 2:
        raise ConfigError("fat-water separation needs at least 2 echoes")
    if not (np.all(np.isfinite(te)) and np.all(te > 0) and np.all(np.diff(np.sort(te)) > 1e-6)):
        raise ConfigError(f"echo times must be positive and distinct (s), got {te.tolist()}")
    if te.max() > 0.2:
        raise ConfigError(f"echo times {te.tolist()} look like ms, not s (max {te.max()})")
    if not (0.05 <= float(field_t) <= 12):
        raise ConfigError(f"field strength {field_t} T outside 0.05-12 T")
    return te


#: Least phase advance (cycles, wrapped) of the main fat peak between some pair of echoes.
MIN_FAT_ENCODING_CYCLES = 0.1


def _te_text(te_s) -> str:
    """'echo times 1.2/2.2/3.2 ms' for an error message."""
    return "echo times " + "/".join(f"{t * 1000:.4g}" for t in np.asarray(te_s, dtype=float)) + " ms"


def check_fat_encoding(te_s, field_t: float, spectrum: FatSpectrum = HAMILTON_LIVER_6) -> float:
    """Largest wrapped phase advance (cycles, 0-0.5) of the main fat peak between two echoes;
    :class:`ConfigError` when it is below :data:`MIN_FAT_ENCODING_CYCLES`, where a voxel's water
    and fat interpretations differ by only a few Hz of field and cannot be told apart."""
    te = np.asarray(te_s, dtype=float)
    cycles = spectrum.main_shift_hz(field_t) * (te[:, None] - te[None, :])
    best = float(np.abs(cycles - np.round(cycles)).max())
    if best < MIN_FAT_ENCODING_CYCLES:
        raise ConfigError(
            f"{_te_text(te)} at {field_t:g} T do not separate "
            f"water and fat: the main fat peak advances at most {360 * best:.0f} degrees (modulo "
            f"a turn) between echoes, {360 * MIN_FAT_ENCODING_CYCLES:.0f} are needed; "
            "'myocomp separate --method phase_referenced' uses one echo's phase instead")
    return best


#: Largest accepted median PDFF noise amplification of a two-echo protocol
#: (:func:`check_two_echo_conditioning`).
MAX_TWO_ECHO_AMPLIFICATION = 3.0


def two_echo_noise_amplification(te_s, field_t: float, spectrum: FatSpectrum = HAMILTON_LIVER_6,
                                 pdff=np.linspace(0.0, 1.0, 21)) -> np.ndarray:
    """(len(pdff),) Cramer-Rao bound of the PDFF standard deviation of the two-echo model (real W,
    F, one phase, field; no decay) times the per-echo SNR (signal |W + F| over the noise SD of
    each real and imaginary part), at each PDFF in ``pdff``. Independent of the field offset; 1 is
    the order of a well-conditioned protocol (in- and opposed-phase echoes: 0.6-1.0)."""
    te = np.asarray(te_s, dtype=float)
    c = fat_phasors(te, field_t, spectrum)
    out = []
    for ff in np.asarray(pdff, dtype=float):
        base = (1.0 - ff) + ff * c
        cols = (np.ones_like(c), c, 1j * base, 2j * np.pi * te * base)
        jac = np.stack([np.concatenate([x.real, x.imag]) for x in cols], axis=1)
        grad = np.array([-ff, 1.0 - ff, 0.0, 0.0])
        out.append(np.sqrt(grad @ np.linalg.pinv(jac.T @ jac) @ grad))
    return np.array(out)


def check_two_echo_conditioning(te_s, field_t: float,
                                spectrum: FatSpectrum = HAMILTON_LIVER_6) -> float:
    """The median :func:`two_echo_noise_amplification` over PDFF 0-1 (the bound has isolated
    spikes where the model's two solutions meet); :class:`ConfigError` above
    :data:`MAX_TWO_ECHO_AMPLIFICATION`, where noise alone moves the PDFF of muscle by several
    hundredths at the SNR of clinical images (phantoms at SNR 40-100: median errors 0.05-0.08)."""
    typical = float(np.median(two_echo_noise_amplification(te_s, field_t, spectrum)))
    if typical > MAX_TWO_ECHO_AMPLIFICATION:
        raise ConfigError(
            f"{_te_text(te_s)} at {field_t:g} T: the two-echo fat fraction is ill-conditioned "
            f"(noise amplified {typical:.1f}x, at most {MAX_TWO_ECHO_AMPLIFICATION:g}x is "
            "accepted); use echoes nearer opposed- and in-phase, or 3 or more echoes, or "
            "'myocomp separate --method phase_referenced' (one echo's phase)")
    return typical


def _psi_grid(te, opts) -> np.ndarray:
    step = float(np.clip(1.0 / (12.0 * (te.max() - te.min())), 4.0, 15.0))
    half = opts["field_range_hz"]
    return np.arange(-half, half + step / 2, step)


def separate(echoes: np.ndarray, te_s, field_t: float, *, spectrum: FatSpectrum = HAMILTON_LIVER_6,
             precession: str = "auto", **options) -> SeparationResult:
    """Separate water, fat, field map and R2* from multi-echo complex data.

    Parameters
    ----------
    echoes : (X, Y, Z, N) complex array, one volume per echo (any signal scale).
    te_s : (N,) echo times in seconds. field_t : main field (T).
    spectrum : fat model (default :data:`HAMILTON_LIVER_6`).
    precession : ``"as_stored"`` (data follow the model's sign, ISMRM ``PrecessionIsClockwise=1``),
        ``"conjugate"`` (the other direction: data are conjugated first) or ``"auto"``: both
        are tried at the coarse level and chosen by :func:`_choose_precession` (a decisive
        multi-peak residual, else the body-surface layer that reads as subcutaneous fat, else a
        weaker residual below ``precession_margin``; else an error). Every reading gets the
        anatomical check of its surface layer: a surface that reads as water, or a choice against
        the residual, is a ``UserWarning`` and is listed in ``params["warnings"]``.
        With two echoes both readings fit the four measurements of a voxel exactly; when they
        give the same surface-layer PDFF voxel by voxel (echoes near in- and opposed-phase, where
        the fat phasors are almost real) the reading does not matter and ``as_stored`` is used
        (``decided_by = "equivalent"``); otherwise the same order decides (the coarse residual,
        which mixes voxels within a block, still tells the readings apart on phantoms).
    options : see :data:`DEFAULTS` (field_range_hz: half-width of the field-map search in Hz;
        mask_fraction; coarse_voxels: coarse grid size per axis; smoothness; shim_weight;
        window: fine search half-width as a fraction of the main fat shift; gn_iterations;
        register_echoes: translate echoes 2..N onto echo 1 by :func:`echo_displacement` first,
        :func:`register_echoes`, for echoes from separate series).
    """
    te = check_call(echoes, te_s, field_t, precession, options, DEFAULTS, "separation")
    encoding = check_fat_encoding(te, field_t, spectrum)
    amplification = check_two_echo_conditioning(te, field_t, spectrum) if te.size == 2 else None
    opts = {**DEFAULTS, **options, "field_t": float(field_t), "spectrum": spectrum}
    echoes = np.nan_to_num(np.asarray(echoes, dtype=np.complex64))
    displacement = residual_shift = echo_displacement(echoes)
    if opts["register_echoes"]:
        echoes = register_echoes(echoes, displacement)
        residual_shift = echo_displacement(echoes)
    m = _model(te, field_t, spectrum)
    mask = body_signal_mask(echoes, opts["mask_fraction"])
    psis = _psi_grid(te, opts)
    layer = surface_layer(mask)
    chosen, coarse, pred, evidence = _precession_stage(echoes, mask, layer, m, psis, opts,
                                                       precession)
    if chosen == "conjugate":
        echoes = echoes.conj()
    result = _fine_stage(echoes, pred, mask, m, opts)
    if not evidence["surface_pdff"] and layer.any():
        evidence["surface_pdff"][chosen] = float(np.nanmedian(result[2][layer]))
    notes = (evidence.pop("warnings") + _surface_warning(evidence["surface_pdff"].get(chosen), chosen)
             + _displacement_warning(residual_shift))
    for text in notes:
        warnings.warn(text, UserWarning, stacklevel=2)
    params = {
        "algorithm": "multi-resolution VARPRO residual + region growing, voxel-wise "
        + ("real-valued (common phase) least squares" if m.real else "Gauss-Newton in (psi, R2*)"),
        "echo_times_s": te.tolist(), "field_t": float(field_t), "fat_spectrum": spectrum.to_dict(),
        "precession": {"requested": precession, "used": chosen, **evidence},
        "options": {k: v for k, v in opts.items() if k in DEFAULTS},
        "coarse_factors": list(coarse.factors), "components": coarse.components,
        "pdff": "real W, F: F/(W+F)" if m.real else "magnitude discrimination (Liu 2007)",
        "mask_voxels": int(mask.sum()), "fat_encoding_cycles": encoding,
        "two_echo_noise_amplification": amplification,
        "echo_displacement_voxels": np.round(displacement, 3).tolist(),
        "echo_displacement_after_registration_voxels": (
            np.round(residual_shift, 3).tolist() if opts["register_echoes"] else None),
        "warnings": notes,
    }
    return SeparationResult(*result, mask=mask, params=params)


#: In-plane depth (voxels, exclusive-inclusive) of the body-surface layer of the anatomical
#: check: the 2nd to 4th voxel inside the body, where trunk and limb images have subcutaneous fat.
SURFACE_DEPTH = (1.0, 4.0)
#: Planes of the surface layer (evenly spaced; the check needs a sample, not every plane).
SURFACE_PLANES = 16
#: At most this many surface voxels (an even subsample) are fitted per precession reading.
SURFACE_SAMPLE = 20000
#: Median surface-layer PDFF of a reading that reads the surface as fat / as water.
SURFACE_FAT, SURFACE_WATER = 0.6, 0.4
#: Residual ratio (better / worse reading) at or below which the multi-peak fit alone decides.
RESIDUAL_DECISIVE = 0.35


def _even_planes(n: int, planes: int) -> np.ndarray:
    """Indices of at most ``planes`` evenly spaced planes of ``n`` (first and last included)."""
    return np.unique(np.linspace(0, n - 1, min(planes, n)).round().astype(int))


def surface_layer(mask: np.ndarray, depth=SURFACE_DEPTH, planes: int = SURFACE_PLANES) -> np.ndarray:
    """(X, Y, Z) bool: on at most ``planes`` evenly spaced planes (normal to the axis with the
    fewest voxels), the voxels of the body whose in-plane distance to the background lies in
    ``depth`` (voxels; exclusive, inclusive). The body of a plane is its ``mask`` parts of at
    least a tenth of the largest one (two legs count; noise specks do not), holes filled; the
    field-of-view edge is not a surface (a body cut by it continues outside)."""
    thin = int(np.argmin(mask.shape))
    m = np.moveaxis(mask, thin, 0)
    out = np.zeros(m.shape, bool)
    for k in _even_planes(m.shape[0], planes):
        lab, n = ndimage.label(m[k])
        if n == 0:
            continue
        sizes = ndimage.sum(m[k], lab, range(1, n + 1))
        body = ndimage.binary_fill_holes(np.isin(lab, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max())))
        dist = ndimage.distance_transform_edt(np.pad(body, 1, mode="edge"))[1:-1, 1:-1]
        out[k] = body & (dist > depth[0]) & (dist <= depth[1])
    return np.moveaxis(out, 0, thin)


#: In-plane displacement (voxels) of a later echo against the first above which a warning says
#: the echoes are not registered (ISMRM 2012 cases and phantoms: <= 0.06).
MAX_ECHO_DISPLACEMENT = 0.5


def echo_displacement(echoes: np.ndarray, planes: int = SURFACE_PLANES, reach: int = 4) -> np.ndarray:
    """(N - 1, 3) displacement (voxels, sub-voxel) of echoes 2..N against echo 1 along each axis;
    NaN along the axis with the fewest voxels (the slices), which is not searched.

    The peak of the cross-correlation of the magnitudes' differences along each axis, over
    shifts of up to ``reach`` voxels (parabolic interpolation), on at most ``planes`` evenly
    spaced planes. Motion between separately acquired echoes or a bipolar readout (each echo's
    species displaced by its frequency over the readout bandwidth, in opposite directions)
    gives a displacement; a voxel-wise separation assumes none."""
    thin = int(np.argmin(echoes.shape[:3]))
    mag = np.abs(np.take(echoes, _even_planes(echoes.shape[thin], planes), axis=thin))
    mag = mag.astype(np.float32)
    out = np.full((echoes.shape[3] - 1, 3), np.nan)
    for axis in (a for a in range(3) if a != thin):
        grad = np.diff(mag, axis=axis)
        for n in range(1, echoes.shape[3]):
            cc = np.array([float((grad[..., 0] * np.roll(grad[..., n], s, axis=axis)).sum())
                           for s in range(-reach, reach + 1)])
            j = int(np.argmax(cc))
            den = cc[j - 1] - 2 * cc[j] + cc[j + 1] if 0 < j < cc.size - 1 else 0.0
            out[n - 1, axis] = -(j - reach + (0.5 * (cc[j - 1] - cc[j + 1]) / den if den < 0 else 0.0))
    return out


def register_echoes(echoes: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """(X, Y, Z, N) echoes 2..N translated by ``-shift`` (:func:`echo_displacement`, voxels; NaN
    as 0) onto echo 1: a sub-voxel Fourier shift of each complex volume (periodic at the field of
    view's edges). For echoes acquired separately (motion between series); wrong for a bipolar
    readout, where each species is displaced by its own frequency."""
    out = echoes.copy()
    for n in range(1, echoes.shape[3]):
        offset = -np.nan_to_num(np.asarray(shift[n - 1], dtype=float))
        if np.any(offset):
            spectrum = ndimage.fourier_shift(np.fft.fftn(echoes[..., n]), offset)
            out[..., n] = np.fft.ifftn(spectrum).astype(echoes.dtype)
    return out


def _displacement_warning(shift: np.ndarray, affected: str = "the separation assumes registered "
                          "echoes, so PDFF near tissue borders is unreliable (echoes from separate "
                          "series: --register-echoes)") -> list[str]:
    worst = np.nanmax(np.abs(shift), initial=0.0)
    if not worst > MAX_ECHO_DISPLACEMENT:
        return []
    n, axis = np.unravel_index(int(np.nanargmax(np.abs(shift))), shift.shape)
    return [f"echo {n + 2} is displaced {shift[n, axis]:+.1f} voxels along axis {axis} against "
            f"echo 1 (motion between separate acquisitions, or a bipolar readout): {affected}"]


def _surface_pdff(echoes, coarse: _Coarse, layer, m: _Model, opts) -> np.ndarray:
    """PDFF of an even subsample of the surface layer (fixed voxel order), fitted around the
    coarse field."""
    idx = np.flatnonzero(layer.reshape(-1))
    idx = idx[:: max(1, idx.size // SURFACE_SAMPLE)]
    pred = _upsample_at(coarse.psi, coarse.factors, np.unravel_index(idx, layer.shape))
    s = echoes.reshape(-1, m.te.size)[idx].astype(np.complex128)
    w, f, _, _, real = _fine_fit(s, pred.astype(float), m, opts)
    return pdff_from_components(*real, real=True) if real is not None else pdff_from_components(w, f)


def _precession_stage(echoes, mask, layer, m: _Model, psis, opts, precession):
    """Coarse field map(s) and the precession reading: the requested one, or with ``auto`` the one
    chosen by :func:`_choose_precession` from the multi-peak residual and the surface layer."""
    names = ("as_stored", "conjugate") if precession == "auto" else (precession,)
    coarse, samples = {}, {}
    for name in names:
        data = echoes if name == "as_stored" else echoes.conj()
        coarse[name] = _coarse_field(data, mask, m, psis, opts)
        if len(names) == 2 and layer.any():
            samples[name] = _surface_pdff(data, coarse[name], layer, m, opts)
    fits = {k: float(v.fit) for k, v in coarse.items()}
    surface = {k: float(np.median(v)) for k, v in samples.items()}
    if m.real and _equivalent_readings(samples):
        chosen, basis, notes = "as_stored", "equivalent", []
    else:
        chosen, basis, notes = _choose_precession(fits, surface, opts["precession_margin"])
    evidence = {"residuals": fits, "surface_pdff": surface, "decided_by": basis, "warnings": notes}
    pred = _upsample(coarse[chosen].psi, coarse[chosen].factors, mask.shape)
    return chosen, coarse[chosen], pred, evidence


#: Two-echo readings whose surface-layer PDFFs differ by at most this much in 95 % of the voxels
#: are equivalent (echoes near in- and opposed-phase, where the fat phasors are almost real).
EQUIVALENT_PDFF = 0.05


def _equivalent_readings(samples: dict) -> bool:
    """True when both precession readings give the same surface-layer PDFF voxel by voxel."""
    if len(samples) != 2:
        return False
    a, b = samples.values()
    return bool(a.size) and float(np.percentile(np.abs(a - b), 95)) <= EQUIVALENT_PDFF


def _choose_precession(fits: dict, surface: dict, margin: float):
    """(reading, what decided it, warnings) from the coarse multi-peak residuals ``fits`` and the
    surface-layer median PDFF of each reading (``surface``; empty when not measured).

    The two readings are mirror images under the main fat peak alone (conjugating the data, swapping
    water and fat and shifting the field by the main fat shift is exact for a one-peak fat model at
    any echo times), so the residual tells them apart only through the minor peaks. Order: a
    decisive residual ratio (<= RESIDUAL_DECISIVE); else a decisive surface layer (fat, PDFF >=
    SURFACE_FAT, in one reading and water, <= SURFACE_WATER, in the other: subcutaneous fat);
    else the residual when its ratio is below ``margin``; else an error (a near tie)."""
    if len(fits) == 1:
        return next(iter(fits)), "requested", []
    a, b = fits["as_stored"], fits["conjugate"]
    by_fit, ratio = ("as_stored" if a < b else "conjugate"), min(a, b) / max(a, b)
    s = surface if len(surface) == 2 else {}
    fat = [k for k, v in s.items() if v >= SURFACE_FAT]
    by_surface = fat[0] if len(fat) == 1 and min(s.values()) <= SURFACE_WATER else None
    text = ", ".join(f"{k}: residual {fits[k]:.4g}" + (f", surface-layer PDFF {s[k]:.2f}" if s
                                                        else "") for k in fits)
    if ratio <= RESIDUAL_DECISIVE:
        notes = [] if by_surface in (None, by_fit) else [
            f"precession {by_fit} chosen by the multi-peak residual; the body-surface layer "
            f"would be fat only in the other reading ({text}): check the water and fat images"]
        return by_fit, "residual", notes
    if by_surface is not None:
        notes = [] if by_surface == by_fit or ratio > margin else [
            f"precession {by_surface} chosen by the anatomical check (body-surface layer is fat "
            f"only in this reading) against the weaker multi-peak residual ({text}); give "
            "--precession to override"]
        return by_surface, "surface_layer", notes
    if ratio <= margin:
        return by_fit, "residual", []
    raise InputFileError(
        f"cannot tell the direction of precession from the data ({text}); run myocomp separate "
        "with --precession as_stored or conjugate")


def _surface_warning(value, chosen) -> list[str]:
    """A warning when the surface layer of the result reads as water (a swap in trunk/limb images)."""
    if value is None or not np.isfinite(value) or value > SURFACE_WATER:
        return []
    return [f"the body-surface layer has median PDFF {value:.2f} with precession {chosen}: "
            "trunk and limb images have subcutaneous fat there, so water and fat may be swapped "
            "(check the images; --precession chooses the reading)"]


def _fine_stage(echoes, pred, mask, m: _Model, opts):
    shape = mask.shape
    s_all = echoes.reshape(-1, m.te.size)
    pred_all = pred.reshape(-1).astype(float)
    inside = np.flatnonzero(mask.reshape(-1))
    water = np.zeros(s_all.shape[0], np.complex64)
    fat = np.zeros_like(water)
    psi_out = pred_all.astype(np.float32)
    r2_out = None if m.real else np.zeros(s_all.shape[0], np.float32)
    pdff = np.full(s_all.shape[0], np.nan, np.float32)
    for i in range(0, inside.size, CHUNK):
        sel = inside[i:i + CHUNK]
        w, f, psi, r2, real = _fine_fit(s_all[sel].astype(np.complex128), pred_all[sel], m, opts)
        water[sel], fat[sel], psi_out[sel] = w, f, psi
        if r2 is not None:
            r2_out[sel] = r2
        pdff[sel] = (pdff_from_components(*real, real=True) if real is not None
                     else pdff_from_components(w, f))
    outside = np.flatnonzero(~mask.reshape(-1))
    for i in range(0, outside.size, CHUNK):
        sel = outside[i:i + CHUNK]
        s = s_all[sel].astype(np.complex128)
        if m.real:
            w, f, *_ = _linear_real(s, pred_all[sel], m)
        else:
            w, f = _linear_complex(np.ascontiguousarray(s.T), pred_all[sel], np.zeros(sel.size), m)
        water[sel], fat[sel] = w, f
    r2 = None if r2_out is None else r2_out.reshape(shape)
    return (water.reshape(shape), fat.reshape(shape), pdff.reshape(shape),
            psi_out.reshape(shape), r2)


FF_UNITS = ("auto", "fraction", "percent")


def ff_map_to_fraction(ff: np.ndarray, units: str = "auto", *, source=None) -> np.ndarray:
    """A vendor fat-fraction/PDFF map as a fraction 0-1 (float32, clipped; NaN kept).

    ``auto``: fraction when the 99.9th percentile of the finite values is <= 1.5 (noisy voxels of
    a fraction map lie a little above 1), percent when it lies in 5-105 (a percent map of any
    field of view with fat reaches far above 5); between them, or above, the units must be
    given explicitly: a wrong guess would scale every metric by 100.
    """
    if units not in FF_UNITS:
        raise ConfigError(f"fat-fraction units {units!r} not one of {', '.join(FF_UNITS)}")
    ff = np.asarray(ff, dtype=np.float32)
    finite = ff[np.isfinite(ff)]
    if not finite.size:
        raise InputFileError("fat-fraction map has no finite voxel", source=source)
    if units == "auto":
        top = float(np.percentile(finite, 99.9))
        if top <= 1.5:
            units = "fraction"
        elif 5.0 <= top <= 105:
            units = "percent"
        else:
            raise InputFileError(f"fat-fraction map values reach {top:g} (99.9th percentile): "
                                 "neither clearly a fraction (0-1) nor percent (0-100); give "
                                 "the units (--ff-units)", source=source)
    scale = np.float32(100.0 if units == "percent" else 1.0)
    return np.clip(ff / scale, 0.0, 1.0)


def dixon_from_ff(ff: np.ndarray, affine: np.ndarray, source: str = ""):
    """A :class:`~myocomp.imaging.dixon.DixonVolume` whose fat fraction F / (W + F) is ``ff``
    (W = 1 - ff, F = ff; NaN stays invalid), so every metric uses the given map unchanged."""
    from myocomp.imaging.dixon import dixon_from_arrays

    ff = np.asarray(ff, dtype=np.float32)
    return dixon_from_arrays(np.float32(1.0) - ff, ff, affine, source=source)
