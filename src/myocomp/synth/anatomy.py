"""Analytic model of a lumbar trunk: proton density, true fat fraction and structure per point.

World coordinates are mm, RAS+: x runs to the subject's right, y to anterior, z to superior. The
model spans ``z`` in [-length/2, +length/2]; ``s = (length/2 - z) / length`` runs from 0 at the
cranial end (about L1) to 1 at the caudal end (about L5). Every shape is a superellipse (or a
capsule for fat deposits) whose parameters vary smoothly with ``z``, so the model can be sampled on
any grid cheaply, one axial slice at a time (:func:`paint_slice`).

Signal convention: every soft tissue has proton density (PD) 1, so the water signal is
``PD (1 - FF)`` and the fat signal ``PD FF``; averaging over a voxel then gives exactly the mean
subvoxel fat fraction (partial volume is linear in FF). Only fascia (PD 0.3), cortical bone
(PD 0.1), ligaments, skin and air (PD 0) differ. Each labelled muscle is wrapped in a 3 mm fascia
sheath whose fat fraction equals the local muscle fat fraction, so a voxel on the label border
mixes muscle with tissue of the same FF (as under the thoracolumbar and psoas fasciae), not with
subcutaneous or retroperitoneal fat.

Intramuscular fat deposits (InterMAT) are streaks elongated along z. In-plane, each is the region
around a short segment where the mean log-distance to the segment, ``H``, is below ``ln rho``; FF
rises smoothly from the local muscle FF ``g`` to ``1 - g`` (0.9 for g = 0.1) across it, as
``g + (1 - 2 g) psi((H - ln rho) / w)`` with ``psi`` a half sine step that has its inflection at
the FF 0.5 crossing. ``H`` is harmonic, so the Laplacian of FF vanishes on the FF = 0.5 contour:
averaging over a voxel (to first order a small diffusion, which moves a contour by
Laplacian / gradient) neither shrinks nor grows the thresholded fat, and the InterMAT measured at
voxel resolution matches the fine model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Structure index -> canonical name; index 0 is unlabelled tissue or air.
STRUCTURES = (
    "background",
    "autochthon_left",
    "autochthon_right",
    "iliopsoas_left",
    "iliopsoas_right",
    "spine",
    "kidney_left",
    "kidney_right",
    "liver",
    "aorta",
    "inferior_vena_cava",
)
_ST = {name: i for i, name in enumerate(STRUCTURES)}

#: Thickness (mm) of the fascia sheath around each labelled muscle.
FASCIA_MM = 3.0
SC_FAT_FF = 0.95
VISCERAL_FAT_FF = 0.92


@dataclass(frozen=True)
class Deposit:
    """One intramuscular fat streak, in coordinates normalised to its muscle's outline.

    ``uc, vc``: centre (fractions of the muscle's half-width/half-depth; u points laterally);
    ``angle``: orientation (rad); ``half_length_mm``: half-length of the core segment;
    ``rho_mm``: the FF 0.5 contour is where the mean log-distance to the segment is ``ln rho``
    (for a zero-length segment, a circle of radius ``rho_mm``);
    ``drift``, ``wavelength_mm``, ``phase``: slow in-plane drift and amplitude change along z.
    """

    uc: float
    vc: float
    angle: float
    half_length_mm: float
    rho_mm: float
    drift: float
    wavelength_mm: float
    phase: float


@dataclass(frozen=True)
class LumbarAnatomy:
    """Random but plausible parameters of one lumbar trunk (see :meth:`sample`)."""

    length_mm: float
    bmi: float
    infiltration: float
    intermat: float
    size: float  # global scale of the body frame (about 0.95-1.05)
    sc_fat_mm: float  # subcutaneous fat thickness (lateral) at mid-length
    spine_y_mm: float
    vertebra_period_mm: float
    vertebra_phase_mm: float
    marrow_ff: tuple[float, ...]
    back_scale: tuple[float, float]  # (half-width, depth) scale of the autochthon muscles
    psoas_scale: tuple[float, float]
    asymmetry: float  # relative size difference right vs left muscles
    infiltration_phases: tuple[float, ...]
    deposits: dict[str, tuple[Deposit, ...]]
    bowel: tuple[tuple[float, float, float, float, bool], ...]  # (x, y, r, drift phase, gas)

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        *,
        length_mm: float = 160.0,
        bmi: float = 25.0,
        infiltration: float = 0.1,
        intermat: float = 0.05,
    ) -> LumbarAnatomy:
        """Draw one anatomy from ``rng``; ``bmi`` sets fat thicknesses, ``intermat`` fat streaks.

        ``infiltration`` is the mean diffuse fat fraction of the back muscles (psoas: 0.8 x);
        ``intermat`` the approximate fraction of each muscle's volume above FF 0.5.
        """
        u = rng.uniform
        sc_fat = max(4.0, 8.0 + 1.6 * (bmi - 18.0)) * u(0.85, 1.15)
        anatomy = cls(
            length_mm=float(length_mm),
            bmi=float(bmi),
            infiltration=float(infiltration),
            intermat=float(intermat),
            size=u(0.95, 1.05),
            sc_fat_mm=sc_fat,
            spine_y_mm=u(-23.0, -17.0),
            vertebra_period_mm=u(35.0, 39.0),
            vertebra_phase_mm=u(0.0, 39.0),
            marrow_ff=tuple(u(0.4, 0.6, size=64)),
            back_scale=(u(0.92, 1.08), u(0.92, 1.08)),
            psoas_scale=(u(0.9, 1.1), u(0.9, 1.1)),
            asymmetry=u(-0.04, 0.04),
            infiltration_phases=tuple(u(0, 2 * math.pi, size=6)),
            deposits={},
            bowel=tuple(
                (u(-65, 65), u(15, 55), u(9, 15), u(0, 2 * math.pi), bool(u() < 0.3))
                for _ in range(9)
            ),
        )
        deposits = {}
        for name in ("autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"):
            deposits[name] = anatomy._draw_deposits(rng, name)
        object.__setattr__(anatomy, "deposits", deposits)
        return anatomy

    # --- geometry of the structures as functions of z -------------------------------------

    def s(self, z: float) -> float:
        """Normalised cranio-caudal position: 0 at the cranial end, 1 at the caudal end."""
        return float(np.clip((self.length_mm / 2 - z) / self.length_mm, 0.0, 1.0))

    def vertebra(self, z: float) -> dict[str, float]:
        s = self.s(z)
        k = self.size
        body_y = self.spine_y_mm * k + 6.0 * s
        ax, ay = (21.0 + 4.0 * s) * k, (15.0 + 1.5 * s) * k
        canal_y = body_y - ay - 9.0 * k
        pos = (z - self.length_mm / 2 + self.vertebra_phase_mm) % self.vertebra_period_mm
        level = int((z + 1000.0 + self.vertebra_phase_mm) // self.vertebra_period_mm) % len(
            self.marrow_ff
        )
        disc = pos < 9.0
        return {
            "body_y": body_y,
            "ax": ax,
            "ay": ay,
            "canal_y": canal_y,
            "disc": float(disc),
            "marrow_ff": self.marrow_ff[level],
            "lamina_ay": 14.0 * k,
        }

    def muscle(self, name: str, z: float) -> tuple[float, float, float, float, float, float]:
        """(cx, cy, ax, ay_anterior, ay_posterior, exponent) of a labelled muscle at ``z``."""
        s = self.s(z)
        v = self.vertebra(z)
        side = -1.0 if name.endswith("_left") else 1.0
        grow = 1.0 + side * self.asymmetry
        if name.startswith("autochthon"):
            sw, sd = self.back_scale
            ax = (34.0 + 3.0 * math.sin(math.pi * s)) * sw * grow * self.size
            ay_a = 12.0 * sd * grow * self.size
            ay_p = (21.0 + 2.0 * s) * sd * grow * self.size
            cy = v["canal_y"] - v["lamina_ay"] - FASCIA_MM - ay_a
            cx = side * (4.5 + 1.0 + FASCIA_MM + ax)
            return cx, cy, ax, ay_a, ay_p, 2.4
        sw, sd = self.psoas_scale
        ax = (11.0 + 12.0 * s) * sw * grow * self.size
        ay = (10.0 + 9.0 * s) * sd * grow * self.size
        cx = side * (v["ax"] + 1.0 + FASCIA_MM + ax)
        cy = v["body_y"] + 2.0 + 4.0 * s
        return cx, cy, ax, ay, ay, 2.2

    def body(self, z: float) -> dict[str, float]:
        """Outer body outline and the subcutaneous fat thicknesses (mm) at ``z``."""
        s = self.s(z)
        v = self.vertebra(z)
        _, back_cy, _, _, back_ayp, _ = self.muscle("autochthon_left", z)
        wave = 1.0 + 0.12 * math.sin(2 * math.pi * s + self.infiltration_phases[0])
        t_lat = self.sc_fat_mm * wave
        t_post = 0.9 * t_lat
        t_ant = 1.15 * t_lat
        wall_a = (128.0 + 8.0 * s) * self.size + 0.8 * max(0.0, self.bmi - 25.0)
        wall_b_ant = (100.0 - 6.0 * s) * self.size + 1.2 * max(0.0, self.bmi - 25.0)
        back_edge = -(back_cy - back_ayp) + FASCIA_MM
        return {
            "a": wall_a + t_lat + 2.0,
            "b_ant": wall_b_ant + t_ant + 2.0,
            "b_post": back_edge + t_post + 2.0,
            "wall_a": wall_a,
            "wall_b_ant": wall_b_ant,
            "wall_b_post": -(v["canal_y"] - 6.0),
        }

    def extent_mm(self) -> tuple[float, float, float]:
        """Largest half-width, posterior and anterior extent of the body over its length (mm)."""
        zs = np.linspace(-self.length_mm / 2, self.length_mm / 2, 33)
        bodies = [self.body(float(z)) for z in zs]
        return (
            max(b["a"] for b in bodies),
            max(b["b_post"] for b in bodies),
            max(b["b_ant"] for b in bodies),
        )

    def muscle_box_mm(self, margin_mm: float = 0.0) -> tuple[float, float, float, float]:
        """(x_min, x_max, y_min, y_max) covering every labelled muscle at every z, plus margin."""
        boxes = []
        for z in np.linspace(-self.length_mm / 2, self.length_mm / 2, 65):
            for name in STRUCTURES[1:5]:
                cx, cy, ax, ay_a, ay_p, _ = self.muscle(name, float(z))
                boxes.append((cx - ax, cx + ax, cy - ay_p, cy + ay_a))
        b = np.array(boxes)
        return (
            b[:, 0].min() - margin_mm,
            b[:, 1].max() + margin_mm,
            b[:, 2].min() - margin_mm,
            b[:, 3].max() + margin_mm,
        )

    def infiltration_ff(self, x: np.ndarray, y: np.ndarray, z: float, scale: float) -> np.ndarray:
        """Smooth diffuse muscle fat fraction: ``scale * infiltration * (1 +- 0.5)``."""
        p = self.infiltration_phases
        s = self.s(z)
        fx = np.cos(2 * math.pi * x / 90.0 + p[1])
        fy = np.cos(2 * math.pi * y / 70.0 + p[2])
        fz = 0.2 * math.cos(2 * math.pi * z / 120.0 + p[3]) + 0.1 * (s - 0.5)
        return (scale * self.infiltration * (1.0 + 0.3 * fx * fy + fz)).astype(np.float32)

    def _mean_area(self, name: str) -> float:
        areas = []
        for z in np.linspace(-self.length_mm / 2, self.length_mm / 2, 33):
            _, _, ax, ay_a, ay_p, n = self.muscle(name, float(z))
            areas.append(
                2.0 * ax * (ay_a + ay_p) * math.gamma(1 + 1 / n) ** 2 / math.gamma(1 + 2 / n)
            )
        return float(np.mean(areas))

    def _draw_deposits(self, rng: np.random.Generator, name: str) -> tuple[Deposit, ...]:
        if self.intermat <= 0:
            return ()
        target = self.intermat * self._mean_area(name)  # mm^2 above FF 0.5, per slice
        k = 1 + int(target > 250.0) + int(target > 600.0) + int(target > 1200.0)
        deposits = []
        for i in range(k):
            aspect = rng.uniform(0.5, 2.0)  # segment half-length / rho
            rho = float(np.clip(math.sqrt(target / k / _unit_deposit_area(aspect)), 2.0, 8.0))
            angle = rng.uniform(-0.5, 0.5) + (math.pi / 2 if name.startswith("autochthon") else 0)
            deposits.append(
                Deposit(
                    uc=rng.uniform(-0.3, 0.3) + (0.3 * (i - (k - 1) / 2) if k > 1 else 0),
                    vc=rng.uniform(-0.25, 0.25),
                    angle=angle,
                    half_length_mm=aspect * rho,
                    rho_mm=rho,
                    drift=rng.uniform(0.05, 0.15),
                    wavelength_mm=rng.uniform(40, 80),
                    phase=rng.uniform(0, 2 * math.pi),
                )
            )
        return tuple(deposits)


class _Canvas:
    """One axial slice being painted: PD, FF and structure index on the grid ``x`` x ``y``."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y
        self.pd: np.ndarray = np.zeros((x.size, y.size), dtype=np.float32)
        self.ff: np.ndarray = np.zeros((x.size, y.size), dtype=np.float32)
        self.st = np.zeros((x.size, y.size), dtype=np.uint8)

    def shape(self, cx, cy, ax, ay_ant, ay_post=None, n=2.0):
        """Window and mask of the superellipse |dx/ax|^n + |dy/ay|^n < 1.

        ``ay`` is ``ay_ant`` anterior of ``cy`` and ``ay_post`` posterior of it. None if empty.
        """
        ay_post = ay_ant if ay_post is None else ay_post
        if min(ax, ay_ant, ay_post) <= 0:
            return None
        i0, i1 = np.searchsorted(self.x, (cx - ax, cx + ax))
        j0, j1 = np.searchsorted(self.y, (cy - ay_post, cy + ay_ant))
        if i0 >= i1 or j0 >= j1:
            return None
        tx = np.abs((self.x[i0:i1] - cx) / ax) ** n
        dy = self.y[j0:j1] - cy
        ty = np.abs(dy / np.where(dy >= 0, ay_ant, ay_post)) ** n
        return (slice(i0, i1), slice(j0, j1)), tx[:, None] + ty[None, :] < 1.0

    def paint(self, region, pd: float, ff, st: int | None = None) -> None:
        if region is None:
            return
        win, mask = region
        np.copyto(self.pd[win], pd, where=mask)
        np.copyto(self.ff[win], ff, where=mask)
        if st is not None:
            np.copyto(self.st[win], st, where=mask)

    def grid(self, region) -> tuple[np.ndarray, np.ndarray]:
        win, _ = region
        return self.x[win[0]][:, None], self.y[win[1]][None, :]


#: Width of the FF transition of a deposit, in units of log-distance.
_DEPOSIT_WIDTH = 1.4


def _mean_log_distance(u: np.ndarray, v: np.ndarray, half_length: float) -> np.ndarray:
    """Mean of ln(distance) from (u, v) to the segment [-L, L] x {0}: harmonic off the segment."""
    if half_length < 1e-6:
        return 0.5 * np.log(u * u + v * v + 1e-12)
    av = np.abs(v)

    def antiderivative(a):  # of ln sqrt(a^2 + v^2) da
        return 0.5 * a * np.log(a * a + v * v + 1e-12) - a + av * np.arctan2(a, av)

    return (antiderivative(u + half_length) - antiderivative(u - half_length)) / (2 * half_length)


def _step(t: np.ndarray) -> np.ndarray:
    """1 for t <= -1/2, 0 for t >= 1/2, a half sine between (inflection at t = 0)."""
    return 0.5 - 0.5 * np.sin(np.pi * np.clip(t, -0.5, 0.5))


def _unit_deposit_area(aspect: float) -> float:
    """Area inside the level set {mean log-distance < 0} of a segment of half-length ``aspect``."""
    h = 0.01
    u = np.arange(-(aspect + 1.5), aspect + 1.5, h)
    v = np.arange(-1.5, 1.5, h)
    inside = _mean_log_distance(u[:, None], v[None, :], aspect) < 0
    return float(inside.sum()) * h * h


def _deposit_bump(anatomy: LumbarAnatomy, name: str, xw, yw, z, muscle) -> np.ndarray:
    """Max over the muscle's deposits of the fat profile (0-1; 0.5 on the threshold contour)."""
    cx, cy, ax, ay_a, ay_p, _ = muscle
    side = -1.0 if name.endswith("_left") else 1.0
    ay = 0.5 * (ay_a + ay_p)
    out = np.zeros(np.broadcast_shapes(xw.shape, yw.shape), dtype=np.float32)
    for d in anatomy.deposits.get(name, ()):
        wave = math.sin(2 * math.pi * z / d.wavelength_mm + d.phase)
        px = cx + side * (d.uc + d.drift * wave) * ax
        py = (
            cy + (d.vc + 0.5 * d.drift * math.cos(2 * math.pi * z / d.wavelength_mm + d.phase)) * ay
        )
        angle = d.angle + 0.2 * wave
        ux, uy = side * math.cos(angle), math.sin(angle)
        rx, ry = xw - px, yw - py
        along, across = rx * ux + ry * uy, ry * ux - rx * uy
        h = _mean_log_distance(along, across, d.half_length_mm)
        np.maximum(out, _step((h - math.log(d.rho_mm)) / _DEPOSIT_WIDTH), out=out)
    return out


def paint_slice(anatomy: LumbarAnatomy, x: np.ndarray, y: np.ndarray, z: float):
    """Sample the model on one axial slice.

    Parameters
    ----------
    x, y : 1-D ascending world coordinates (mm) of the sample points along R and A.
    z : world z (mm) of the slice.

    Returns
    -------
    (pd, ff, structure): (len(x), len(y)) arrays: proton density (0-1, float32), true fat
    fraction (float32; 0 where PD is 0) and structure index into :data:`STRUCTURES` (uint8).
    """
    c = _Canvas(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    s = anatomy.s(z)
    v = anatomy.vertebra(z)
    _paint_body(c, anatomy, z)
    _paint_organs(c, anatomy, z, s, v)
    _paint_spine(c, v)
    _paint_muscles(c, anatomy, z)
    c.ff[c.pd == 0] = 0.0
    return c.pd, c.ff, c.st


def _paint_body(c: _Canvas, a: LumbarAnatomy, z: float) -> None:
    """Nested body layers: air, skin, subcutaneous fat, abdominal wall muscle, visceral cavity."""
    b = a.body(z)
    layer = np.zeros(c.pd.shape, dtype=np.uint8)
    outlines = (
        (b["a"], b["b_ant"], b["b_post"]),
        (b["a"] - 2, b["b_ant"] - 2, b["b_post"] - 2),
        (b["wall_a"], b["wall_b_ant"], b["wall_b_post"]),
        (b["wall_a"] - 12, b["wall_b_ant"] - 12, b["wall_b_post"] - 12),
    )
    for outline in outlines:
        region = c.shape(0, 0, *outline, 2.2)
        if region is not None:
            layer[region[0]] += region[1]
    c.pd = np.array([0.0, 0.8, 1.0, 1.0, 1.0], dtype=np.float32)[layer]
    wall_ff = 0.7 * a.infiltration + 0.01
    c.ff = np.array([0.0, 0.1, SC_FAT_FF, wall_ff, VISCERAL_FAT_FF], dtype=np.float32)[layer]


def _paint_organs(c: _Canvas, a: LumbarAnatomy, z: float, s: float, v: dict) -> None:
    """Liver, kidneys, bowel loops, aorta, vena cava and the (unlabelled) quadratus lumborum."""
    if s < 0.45:
        f = math.sqrt(1 - (s / 0.45) ** 2)
        c.paint(c.shape(60, 30, 65 * f + 1, 55 * f + 1, 45 * f + 1, 2.0), 1.0, 0.05, _ST["liver"])
    for side, name in ((-1, "kidney_left"), (1, "kidney_right")):
        top, bottom = (0.0, 0.65) if side < 0 else (0.1, 0.75)
        if top < s < bottom:
            f = math.sqrt(max(0.0, 1 - ((s - (top + bottom) / 2) / ((bottom - top) / 2)) ** 2))
            kx = side * (92 + 4 * s) * a.size
            ky = v["body_y"] - 2
            c.paint(
                c.shape(kx, ky, 26 * f + 0.5, 19 * f + 0.5, 19 * f + 0.5, 2.0), 1.0, 0.03, _ST[name]
            )
    for bx, by, br, phase, gas in a.bowel:
        px = bx + 12 * math.sin(2 * math.pi * z / 80 + phase)
        py = by + 8 * math.cos(2 * math.pi * z / 95 + phase)
        c.paint(c.shape(px, py, br, br), 0.9, 0.1)
        c.paint(c.shape(px, py, br - 3, br - 3), 0.0 if gas else 1.0, 0.0 if gas else 0.02)
    vessel_y = v["body_y"] + v["ay"] + 13
    c.paint(c.shape(-16, vessel_y, 10 - 2 * s, 10 - 2 * s), 1.0, 0.0, _ST["aorta"])
    c.paint(c.shape(20, vessel_y - 1, 13, 8), 1.0, 0.0, _ST["inferior_vena_cava"])

    # quadratus lumborum (unlabelled muscle)
    for side in (-1, 1):
        c.paint(
            c.shape(side * (58 + 6 * s), v["canal_y"] - 2, 20, 10, 10, 2.2),
            1.0,
            0.6 * a.infiltration + 0.02,
        )


def _paint_spine(c: _Canvas, v: dict) -> None:
    """Vertebral body, laminae and spinous process (or a disc and ligaments), spinal canal."""
    if v["disc"]:
        c.paint(c.shape(0, v["body_y"], v["ax"], v["ay"], v["ay"], 2.4), 0.6, 0.02)
        c.paint(c.shape(0, v["body_y"], 0.6 * v["ax"], 0.6 * v["ay"], 0.6 * v["ay"], 2.4), 1.0, 0.0)
        c.paint(c.shape(0, v["canal_y"] - 10, 5, 24, 24, 3.0), 0.3, 0.1)  # ligaments
    else:
        c.paint(c.shape(0, v["body_y"], v["ax"], v["ay"], v["ay"], 2.4), 0.1, 0.3, _ST["spine"])
        c.paint(
            c.shape(0, v["body_y"], v["ax"] - 2, v["ay"] - 2, v["ay"] - 2, 2.4),
            1.0,
            v["marrow_ff"],
            _ST["spine"],
        )
        c.paint(
            c.shape(0, v["canal_y"], 19, v["lamina_ay"], v["lamina_ay"], 2.2),
            0.1,
            0.3,
            _ST["spine"],
        )
        c.paint(
            c.shape(0, v["canal_y"], 17, v["lamina_ay"] - 2, v["lamina_ay"] - 2, 2.2),
            1.0,
            v["marrow_ff"],
            _ST["spine"],
        )
        spinous_y = v["canal_y"] - v["lamina_ay"] - 16
        c.paint(c.shape(0, spinous_y, 4.5, 18, 18, 4.0), 0.1, 0.3, _ST["spine"])
        c.paint(c.shape(0, spinous_y, 2.5, 16, 16, 4.0), 1.0, v["marrow_ff"], _ST["spine"])
    c.paint(c.shape(0, v["canal_y"], 11, 8, 8, 2.0), 1.0, 0.0, 0)  # spinal canal (CSF)


def _paint_muscles(c: _Canvas, a: LumbarAnatomy, z: float) -> None:
    """Labelled muscles in their fascia sheaths, with the intramuscular fat deposits."""
    for name in STRUCTURES[1:5]:
        m = a.muscle(name, z)
        cx, cy, ax, ay_a, ay_p, n = m
        scale = 1.0 if name.startswith("autochthon") else 0.8
        sheath = c.shape(cx, cy, ax + FASCIA_MM, ay_a + FASCIA_MM, ay_p + FASCIA_MM, n)
        if sheath is not None:
            c.paint(sheath, 0.3, a.infiltration_ff(*c.grid(sheath), z, scale), 0)
        inner = c.shape(cx, cy, ax, ay_a, ay_p, n)
        if inner is not None:
            xw, yw = c.grid(inner)
            g = a.infiltration_ff(xw, yw, z, scale)
            bump = _deposit_bump(a, name, xw, yw, z, m)
            c.paint(inner, 1.0, g + (1.0 - 2.0 * g) * bump, _ST[name])
