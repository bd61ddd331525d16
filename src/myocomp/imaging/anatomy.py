"""Anatomical verification of label maps: does what a profile calls a muscle sit where it sits?

A label map read with the wrong table (another tool, another release of the same tool, left and
right exchanged) still has integer ids the profile knows, so an id check alone cannot tell. This
module compares the world (RAS+, mm) positions of the labelled structures with a few rules that
hold in every body and are cheap to test on centroids and bounding boxes:

- ``side``: of a left/right pair the ``_right`` structure lies to the right (larger x) of the
  ``_left`` one; a muscle whose partner is absent lies on its side of the midline (spine or
  pair midpoints) when it is more than 5 mm from it.
- ``back_posterior``: autochthon / erector spinae / multifidus lie dorsal (smaller y) of the
  iliopsoas, of the vertebrae and of the centre of the body outline (from the image).
- ``psoas_anterior``: iliopsoas / psoas major lie ventral of the spinal cord or canal and not
  more than 20 mm dorsal of the vertebral centroid.
- ``gluteal``: gluteal muscles lie caudal of the top of the back muscles and psoas, and further
  from the midline than the psoas and the back muscles.
- ``thigh_caudal``: thigh muscles lie caudal of the hip bone's centroid (or, without a hip bone,
  20 mm caudal of the iliopsoas, back muscles or vertebrae).
- ``calf_posterior``: soleus and gastrocnemius lie dorsal of the tibia.
- ``abdominal_wall``: rectus abdominis lies ventral of the body outline centre, the back muscles,
  the iliopsoas, the vertebrae and the quadratus lumborum.
- ``thigh_anterior``: the quadriceps lie ventral of the hamstrings.

The centroids of a left/right muscle pair are also at least 10 mm apart (a centred structure read
as a pair is not one).

Geometry comes from one pass over a strided subsample of the label map (at most
``max_voxels`` voxels, 2^19 by default): structures smaller than a few subsample voxels are not
assessed. Arrays and affines in, :class:`AnatomyResult` out; no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from myocomp.imaging.labels import SIDES, LabelProfile, base_name, builtin_profiles, is_muscle

BACK = frozenset({"autochthon", "erector_spinae", "multifidus"})
PSOAS = frozenset({"iliopsoas", "psoas_major"})
GLUTEAL = frozenset({"gluteus_maximus", "gluteus_medius", "gluteus_minimus"})
THIGH = frozenset({
    "quadriceps_femoris", "thigh_medial_compartment", "thigh_posterior_compartment", "sartorius",
    "vastus_lateralis", "vastus_intermedius", "vastus_medialis", "rectus_femoris", "gracilis",
    "semimembranosus", "semitendinosus", "biceps_femoris_long_head", "biceps_femoris_short_head",
    "adductor_magnus", "adductor_longus", "adductor_brevis",
})
CALF_POSTERIOR = frozenset({"soleus", "gastrocnemius", "medial_gastrocnemius", "lateral_gastrocnemius"})
QUADRICEPS = frozenset({"quadriceps_femoris", "rectus_femoris", "vastus_lateralis", "vastus_intermedius", "vastus_medialis"})
HAMSTRINGS = frozenset({
    "thigh_posterior_compartment", "semimembranosus", "semitendinosus", "biceps_femoris_long_head",
    "biceps_femoris_short_head",
})
HIP_BONE = frozenset({"hip", "ilium"})
CORD = frozenset({"spinal_cord", "spinal_channel"})
#: Minimum estimated volume (mL) of a structure taking part in a rule.
MIN_ML = 0.5
#: Minimum distance (mm) between the centroids of a left/right muscle pair.
PAIR_MM = 10.0
DEFAULT_MAX_VOXELS = 2**19


@dataclass(frozen=True, eq=False)
class LabelGeometry:
    """Per-label size and position in world coordinates (RAS+, mm).

    ``ids`` (n,), ``volume_ml`` (n,) estimated from the subsample, ``centroid`` / ``lo`` / ``hi``
    (n, 3): centroid and world bounding box. ``body_centroid``: centre of the body outline (3,),
    or None without an image. ``stride``: subsampling step along each array axis.
    """

    ids: np.ndarray
    volume_ml: np.ndarray
    centroid: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    body_centroid: np.ndarray | None
    stride: int

    def index(self) -> dict[int, int]:
        return {int(i): k for k, i in enumerate(self.ids)}


def label_geometry(
    data: np.ndarray,
    affine: np.ndarray,
    image: np.ndarray | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> LabelGeometry:
    """Centroids, bounding boxes and volumes of every label (one pass over a subsample).

    ``data``: (X, Y, Z) integer labels; ``affine``: (4, 4) voxel -> world (mm); ``image``:
    optional (X, Y, Z) intensities on the same grid for the body outline. Per-plane label
    histograms along each axis give each label's voxel count, mean index and index range.
    """
    stride = max(1, math.ceil((data.size / max_voxels) ** (1 / 3)))
    ids, sub = _compact(np.ascontiguousarray(data[::stride, ::stride, ::stride]))
    n = ids.size
    counts = np.zeros(n)
    mean_ijk, first, last = np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3))
    for axis in range(3):
        planes = np.moveaxis(sub, axis, 0)
        hist = np.stack([np.bincount(p.ravel(), minlength=n + 1)[1:] for p in planes]).astype(float)
        counts = hist.sum(axis=0)
        seen = hist > 0
        mean_ijk[:, axis] = (np.arange(len(planes)) @ hist) / np.maximum(counts, 1)
        first[:, axis] = seen.argmax(axis=0)
        last[:, axis] = len(planes) - 1 - seen[::-1].argmax(axis=0)
    lin, off = np.asarray(affine, float)[:3, :3], np.asarray(affine, float)[:3, 3]
    centroid = (mean_ijk * stride) @ lin.T + off
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    world = ((first[:, None, :] + corners * (last - first)[:, None, :]) * stride) @ lin.T + off
    voxel_ml = abs(np.linalg.det(lin)) / 1000.0
    body = _body_centroid(image, 2 * stride, lin, off) if image is not None else None
    return LabelGeometry(ids, counts * stride**3 * voxel_ml, centroid, world.min(axis=1), world.max(axis=1), body, stride)


def _compact(sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted non-zero ids, labels renumbered 1..n with 0 kept) of a small integer array."""
    lo, hi = int(sub.min(initial=0)), int(sub.max(initial=0))
    if lo >= 0 and hi < 2**20:
        ids = np.flatnonzero(np.bincount(sub.ravel(), minlength=1))
        ids = ids[ids != 0]
        lut = np.zeros(hi + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[sub]
    ids = np.unique(sub)
    ids = ids[ids != 0]
    comp = np.searchsorted(ids, sub) + 1
    return ids, np.where(sub == 0, 0, comp)


def _body_centroid(image, stride, lin, off) -> np.ndarray | None:
    """World centre of the voxels brighter than 10 % of the image's 99th percentile (the body)."""
    sub = np.asarray(image[::stride, ::stride, ::stride], dtype=np.float32)
    finite = np.isfinite(sub)
    if not finite.any():
        return None
    top = float(np.percentile(sub[finite][:: max(1, finite.sum() // 200_000)], 99))
    body = finite & (sub > 0.1 * top) if top > 0 else finite & False
    total = body.sum()
    if total == 0:
        return None
    mean = [float((body.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(n)).sum() / total)
            for axis, n in enumerate(sub.shape)]
    return (np.array(mean) * stride) @ lin.T + off


@dataclass(frozen=True)
class Finding:
    """One rule a structure breaks: ``rule`` name, ``structures``, and what was seen."""

    rule: str
    structures: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class AnatomyResult:
    """Verdict of :func:`check_anatomy`: ``findings`` (empty = plausible) and the rules tested."""

    profile: str
    findings: tuple[Finding, ...]
    assessed: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        """One line naming the structures that do not fit (empty when plausible)."""
        return "; ".join(f"{', '.join(f.structures)} {f.detail}" for f in self.findings)

    def to_dict(self) -> dict:
        return {"profile": self.profile, "ok": self.ok, "assessed": list(self.assessed),
                "findings": [f"{f.rule}: {', '.join(f.structures)} {f.detail}" for f in self.findings]}


class _Structures:
    """Named positions of one label map under one profile (only structures >= MIN_ML)."""

    def __init__(self, geometry: LabelGeometry, profile: LabelProfile) -> None:
        self.pos: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
        for k, i in enumerate(geometry.ids):
            name = profile.ids.get(int(i))
            if name is not None and geometry.volume_ml[k] >= MIN_ML:
                self.pos[name] = (geometry.centroid[k], geometry.lo[k], geometry.hi[k], float(geometry.volume_ml[k]))
        self.body = geometry.body_centroid
        self.midline = self._midline()

    def names(self, bases) -> list[str]:
        return sorted(n for n in self.pos if base_name(n) in bases)

    def pooled(self, bases) -> np.ndarray | None:
        """Volume-weighted centroid of all structures with these base names (None if none)."""
        members = [self.pos[n] for n in self.names(bases)]
        if not members:
            return None
        w = np.array([m[3] for m in members])
        return (np.array([m[0] for m in members]) * w[:, None]).sum(axis=0) / w.sum()

    def spine(self) -> np.ndarray | None:
        return self.pooled({n for n in map(base_name, self.pos) if n in ("spine", "vertebrae", "vertebra_body")
                            or n.startswith("vertebrae_")})

    def _midline(self) -> float | None:
        spine = self.spine()
        if spine is not None:
            return float(spine[0])
        mids = [(self.pos[f"{b}_left"][0][0] + self.pos[f"{b}_right"][0][0]) / 2
                for b in {base_name(n) for n in self.pos} if f"{b}_left" in self.pos and f"{b}_right" in self.pos]
        if mids:
            return float(np.median(mids))
        return None if self.body is None else float(self.body[0])


def _side_findings(s: _Structures) -> list[Finding]:
    out = []
    swapped = sorted(b for b in {base_name(n) for n in s.pos}
                     if f"{b}_left" in s.pos and f"{b}_right" in s.pos
                     and s.pos[f"{b}_right"][0][0] <= s.pos[f"{b}_left"][0][0])
    if swapped:
        out.append(Finding("side", tuple(swapped), "have '_right' to the left of '_left' (left/right exchanged?)"))
    close = sorted(b for b in {base_name(n) for n in s.pos if is_muscle(n)}
                   if f"{b}_left" in s.pos and f"{b}_right" in s.pos
                   and 0 < s.pos[f"{b}_right"][0][0] - s.pos[f"{b}_left"][0][0] < PAIR_MM)
    if close:
        out.append(Finding("side", tuple(close), f"have '_left' and '_right' less than {PAIR_MM:g} mm apart"))
    if s.midline is not None:
        wrong = []
        for name, (c, *_rest) in s.pos.items():
            b, side = base_name(name), name[len(base_name(name)) + 1:]
            if side in SIDES and is_muscle(name) and f"{b}_{SIDES[1 - SIDES.index(side)]}" not in s.pos:
                dx = c[0] - s.midline
                if abs(dx) > 5.0 and (dx > 0) != (side == "right"):
                    wrong.append(name)
        if wrong:
            out.append(Finding("side", tuple(sorted(wrong)), "lie on the other side of the body midline"))
    return out


def _ap_findings(s: _Structures) -> list[Finding]:
    out = []
    back, psoas, spine = s.pooled(BACK), s.pooled(PSOAS), s.spine()
    cord = s.pooled(CORD)
    if back is not None:
        refs = [("iliopsoas", psoas), ("vertebrae", spine), ("body outline centre", s.body)]
        bad = [name for name, ref in refs if ref is not None and not back[1] < ref[1]]
        if bad:
            out.append(Finding("back_posterior", tuple(s.names(BACK)), f"are not dorsal of the {', '.join(bad)}"))
    if psoas is not None:
        bad = []
        if cord is not None and not psoas[1] > cord[1]:
            bad.append("ventral of the spinal cord")
        if spine is not None and not psoas[1] > spine[1] - 20.0:
            bad.append("beside the vertebrae (> 20 mm dorsal of them)")
        if bad:
            out.append(Finding("psoas_anterior", tuple(s.names(PSOAS)), "are not " + " and ".join(bad)))
    out += _ventral_findings(s, back, psoas, spine)
    calf, tibia = s.names(CALF_POSTERIOR), s.pooled({"tibia"})
    if calf and tibia is not None:
        bad = [n for n in calf if not s.pos[n][0][1] < tibia[1]]
        if bad:
            out.append(Finding("calf_posterior", tuple(bad), "are not dorsal of the tibia"))
    return out


def _ventral_findings(s: _Structures, back, psoas, spine) -> list[Finding]:
    out = []
    rectus = s.pooled({"rectus_abdominis"})
    if rectus is not None:
        refs = [("body outline centre", s.body), ("back muscles", back), ("iliopsoas", psoas),
                ("vertebrae", spine), ("quadratus lumborum", s.pooled({"quadratus_lumborum"}))]
        bad = [name for name, ref in refs if ref is not None and not rectus[1] > ref[1]]
        if bad:
            out.append(Finding("abdominal_wall", tuple(s.names({"rectus_abdominis"})),
                               f"are not ventral of the {', '.join(bad)}"))
    quad, hams = s.pooled(QUADRICEPS), s.pooled(HAMSTRINGS)
    if quad is not None and hams is not None and not quad[1] > hams[1]:
        out.append(Finding("thigh_anterior", tuple(s.names(QUADRICEPS)), "are not ventral of the hamstrings"))
    return out


def _si_findings(s: _Structures) -> list[Finding]:
    out = []
    back, inner_names = s.pooled(BACK), s.names(PSOAS) + s.names(BACK)
    gluteal = s.names(GLUTEAL)
    if gluteal:
        top = max((s.pos[n][2][2] for n in inner_names), default=None)
        bad = [n for n in gluteal if top is not None and not s.pos[n][0][2] < top]
        if s.midline is not None:
            inner = [abs(s.pos[n][0][0] - s.midline) for n in inner_names]
            bad += [n for n in gluteal if inner and abs(s.pos[n][0][0] - s.midline) <= max(inner)]
        if bad:
            out.append(Finding("gluteal", tuple(sorted(set(bad))),
                               "are not caudal of the top of the back muscles and psoas and lateral of them"))
    hip = s.pooled(HIP_BONE)
    refs = [r for r in (s.pooled(PSOAS), back, s.spine()) if r is not None]
    limit = hip[2] if hip is not None else (min(r[2] for r in refs) - 20.0 if refs else None)
    thigh = sorted({base_name(n) for n in s.names(THIGH)})
    if limit is not None:
        bad = [b for b in thigh if not s.pooled({b})[2] < limit]
        if bad:
            out.append(Finding("thigh_caudal", tuple(bad), "are not caudal of the hip"))
    return out


def check_anatomy(geometry: LabelGeometry, profile: LabelProfile) -> AnatomyResult:
    """Test the rules of this module on a label map read with ``profile``."""
    s = _Structures(geometry, profile)
    findings = _side_findings(s) + _ap_findings(s) + _si_findings(s)
    assessed = [r for r, present in (
        ("side", any(base_name(n) != n for n in s.pos)), ("back_posterior", bool(s.names(BACK))),
        ("psoas_anterior", bool(s.names(PSOAS))), ("gluteal", bool(s.names(GLUTEAL))),
        ("thigh_caudal", bool(s.names(THIGH))), ("calf_posterior", bool(s.names(CALF_POSTERIOR))),
        ("abdominal_wall", bool(s.names({"rectus_abdominis"}))),
        ("thigh_anterior", bool(s.names(QUADRICEPS)) and bool(s.names(HAMSTRINGS))),
    ) if present]
    return AnatomyResult(profile.name, tuple(findings), tuple(assessed))


def id_problem(present: np.ndarray, profile: LabelProfile) -> str | None:
    """Why the id set does not fit ``profile`` (unknown ids, no muscle), or None."""
    unknown = [int(i) for i in present if int(i) not in profile.ids]
    if unknown:
        shown = ", ".join(map(str, unknown[:12])) + (" ..." if len(unknown) > 12 else "")
        return f"label ids {shown} are not in profile {profile.name!r}: wrong --profile?"
    muscles = profile.muscle_ids()
    if not any(int(i) in muscles for i in present):
        return f"no muscle label of profile {profile.name!r} present (empty muscle labels, or wrong --profile?)"
    return None


def fitting_profiles(
    geometry: LabelGeometry, present: np.ndarray, profiles: list[LabelProfile] | None = None
) -> list[LabelProfile]:
    """The built-in profiles (or ``profiles``) whose id set and anatomy fit the label map."""
    candidates = builtin_profiles() if profiles is None else profiles
    return [p for p in candidates if id_problem(present, p) is None and check_anatomy(geometry, p).ok]


def distinct_readings(profiles: list[LabelProfile], present: np.ndarray) -> list[list[LabelProfile]]:
    """Group profiles that give every present id the same name (equivalent for this map)."""
    groups: dict[tuple, list[LabelProfile]] = {}
    for p in profiles:
        groups.setdefault(tuple(p.ids[int(i)] for i in present), []).append(p)
    return list(groups.values())


def _suggestion(fits: list[LabelProfile], anatomy: bool) -> str:
    if fits:
        names = ", ".join(f"{p.name!r} ({p.tool} {p.versions})" for p in fits)
        return f"it fits the built-in profile {names}: use --profile {fits[-1].name}"
    tail = "no built-in profile fits: give a JSON {id: name} profile"
    return tail + (", or --skip-anatomy-check for an odd field of view" if anatomy else "")


def verify_profile(
    data: np.ndarray,
    affine: np.ndarray,
    profile: LabelProfile | str | Path,
    *,
    image: np.ndarray | None = None,
    check: bool = True,
    source: str | None = None,
) -> tuple[LabelProfile, dict]:
    """Check a canonical label map against ``profile`` (or choose one: ``"auto"``).

    Returns the profile and a provenance record; raises :class:`LabelError` naming the structures
    that do not fit and the built-in profiles that do. ``check=False`` keeps only the id checks.
    """
    from myocomp.errors import LabelError
    from myocomp.imaging.labels import AUTO_PROFILE, get_profile, present_label_ids

    present = present_label_ids(data)
    if isinstance(profile, str) and profile.lower() == AUTO_PROFILE:
        return _auto(data, affine, present, image, source)
    profile = profile if isinstance(profile, LabelProfile) else get_profile(profile)
    problem = id_problem(present, profile)
    record = {"requested": profile.name, "profile": profile.name, "anatomy_check": bool(check)}
    if problem is None and not check:
        return profile, record
    geometry = label_geometry(data, affine, image)
    result = check_anatomy(geometry, profile) if problem is None else None
    if result is not None and result.ok:
        return profile, {**record, "assessed": list(result.assessed)}
    fits = [p for p in fitting_profiles(geometry, present) if p.name != profile.name]
    reason = problem or f"label map does not fit profile {profile.name!r}: {result.summary()}"
    hint = _suggestion(fits, anatomy=problem is None)
    text = f"{reason} {hint[0].upper()}{hint[1:]}" if reason.endswith("?") else f"{reason}; {hint}"
    raise LabelError(text, source=source)


def _auto(data, affine, present, image, source) -> tuple[LabelProfile, dict]:
    from myocomp.errors import LabelError

    geometry = label_geometry(data, affine, image)
    fits = fitting_profiles(geometry, present)
    if not fits:
        shown = ", ".join(map(str, present[:12].tolist())) + (" ..." if present.size > 12 else "")
        raise LabelError(f"--profile auto: no built-in profile fits the label map (ids {shown}); "
                         "give --profile explicitly", source=source)
    readings = distinct_readings(fits, present)
    if len(readings) > 1:
        names = " / ".join(", ".join(p.name for p in group) for group in readings)
        raise LabelError(f"--profile auto is ambiguous: the label map fits {names}, which name its "
                         "ids differently; choose one with --profile", source=source)
    chosen = readings[0][-1]
    result = check_anatomy(geometry, chosen)
    return chosen, {"requested": "auto", "profile": chosen.name, "anatomy_check": True,
                    "assessed": list(result.assessed), "equivalent_profiles": [p.name for p in readings[0]]}
