"""Multi-echo gradient-echo inputs: NIfTI magnitude/phase pairs, BIDS folders, DICOM folders.

Everything returns :class:`EchoData` (complex echoes on the input grid, echo times, field).

Phase units (:func:`phase_to_radians`), detected from the value range when ``units="auto"``:
``rad`` (|v| <= pi), ``deg`` (|v| <= 180), ``mrad`` (GE: -3142..3142), ``uint12`` (Siemens /
Philips magnitude-style storage 0..4095 for -pi..pi), ``int12`` (Siemens after rescale:
-4096..4095 for -pi..pi). A constant phase offset does not matter to the separation.

DICOM (:func:`read_dicom_echoes`): the image kind of each file is GE's private tag
(0043,102F) = 0/1/2/3 (magnitude/phase/real/imaginary) or else an ImageType token
(``M``/``MAGNITUDE``, ``P``/``PHASE``, ``R``/``REAL``, ``I``/``IMAGINARY``); echoes are grouped by
EchoTime (0018,0081, ms); the field is MagneticFieldStrength (0018,0087). Real + imaginary are
used when present, else magnitude + phase. Only geometry, pixel data and these fields are read;
no identifying field reaches the result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from myocomp.errors import ConfigError, GeometryError, InputFileError

PHASE_UNITS = ("auto", "rad", "deg", "mrad", "uint12", "int12")
_SCALE = {"rad": 1.0, "deg": np.pi / 180, "mrad": 1e-3, "uint12": np.pi / 2048,
          "int12": np.pi / 4096}
_NIFTI = re.compile(r"\.nii(\.gz)?$")
_PARTS = {"mag": "mag", "magnitude": "mag", "phase": "phase", "real": "real", "imag": "imag",
          "imaginary": "imag"}
_GE_KIND = {0: "mag", 1: "phase", 2: "real", 3: "imag"}
_TYPE_KIND = {"M": "mag", "MAGNITUDE": "mag", "P": "phase", "PHASE": "phase", "R": "real",
              "REAL": "real", "I": "imag", "IMAGINARY": "imag"}


@dataclass(frozen=True, eq=False)
class EchoData:
    """echoes: (X, Y, Z, N) complex64 on the input grid; te_s: (N,) s or None; field_t or None."""

    echoes: np.ndarray
    affine: np.ndarray
    te_s: tuple[float, ...] | None
    field_t: float | None
    source: str
    phase_units: str | None = None


def detect_phase_units(phase: np.ndarray) -> str:
    """The unit of a phase image from its finite value range (see module docstring)."""
    finite = phase[np.isfinite(phase)]
    if not finite.size:
        raise InputFileError("phase image has no finite voxel")
    lo, hi = float(finite.min()), float(finite.max())
    top = max(abs(lo), abs(hi))
    if top <= np.pi * 1.001:
        return "rad"
    if top <= 180.5:
        return "deg"
    if lo >= 0 and hi <= 4095.5:
        return "uint12"
    if top <= 3142.5 and lo < 0:
        return "mrad"
    if lo >= -4096.5 and hi <= 4096.5:
        return "int12"
    raise InputFileError(f"phase values {lo:g}..{hi:g} match no known unit (rad, deg, mrad, "
                         "0-4095, -4096-4095); give --phase-units")


def phase_to_radians(phase: np.ndarray, units: str = "auto") -> tuple[np.ndarray, str]:
    """Phase image in radians (float32) and the unit used."""
    if units not in PHASE_UNITS:
        raise ConfigError(f"phase units {units!r} not one of {', '.join(PHASE_UNITS)}")
    phase = np.asarray(phase, dtype=np.float32)
    used = detect_phase_units(phase) if units == "auto" else units
    return phase * np.float32(_SCALE[used]), used


def _sidecar(path: Path) -> dict:
    side = path.with_name(_NIFTI.sub("", path.name) + ".json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"JSON sidecar cannot be read ({exc})", source=side) from exc


def _load(path: Path, role: str, ref=None):
    from myocomp.imaging.dixon import load_nifti, same_grid

    img = load_nifti(path, role)
    if ref is not None and (img.shape != ref.shape or not same_grid(img.affine, ref.affine)):
        raise GeometryError(f"{role} image is not on the grid of the first echo", source=path)
    return img


def _header_value(sidecars: list[dict], key: str, sources: list[Path]):
    values = [s.get(key) for s in sidecars]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise InputFileError(f"{key} missing in some JSON sidecars", source=sources[0])
    return values


def load_echo_pairs(magnitudes, phases, *, phase_units: str = "auto") -> EchoData:
    """Complex echoes from one magnitude and one phase NIfTI per echo (in echo order).

    Echo times and field strength come from BIDS JSON sidecars beside the files (``EchoTime``
    in s, ``MagneticFieldStrength`` in T) when present.
    """
    mags, phs = [Path(p) for p in magnitudes], [Path(p) for p in phases]
    if len(mags) != len(phs) or not mags:
        raise ConfigError(f"give one --phase per --magnitude ({len(mags)} magnitude, "
                          f"{len(phs)} phase images)")
    ref = _load(mags[0], "magnitude")
    echoes = np.empty((*ref.shape, len(mags)), np.complex64)
    units = []
    for n, (mp, pp) in enumerate(zip(mags, phs, strict=True)):
        mag = np.asarray(_load(mp, "magnitude", ref).dataobj, dtype=np.float32)
        try:
            rad, used = phase_to_radians(np.asarray(_load(pp, "phase", ref).dataobj), phase_units)
        except InputFileError as exc:
            raise InputFileError(str(exc), source=pp) from None
        echoes[..., n] = mag * np.exp(1j * rad)
        units.append(used)
    cars = [_sidecar(p) for p in mags]
    te = _header_value(cars, "EchoTime", mags)
    field = _header_value(cars, "MagneticFieldStrength", mags)
    return EchoData(echoes=echoes, affine=ref.affine, source=str(mags[0].parent),
                    te_s=None if te is None else tuple(float(v) for v in te),
                    field_t=None if field is None else float(field[0]),
                    phase_units=",".join(sorted(set(units))))


def _bids_files(folder: Path) -> dict[str, list[Path]]:
    parts: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        if not _NIFTI.search(path.name):
            continue
        part = re.search(r"part-([a-z]+)", path.name)
        echo = re.search(r"echo-(\d+)", path.name)
        if part and echo and part.group(1) in _PARTS:
            parts.setdefault(_PARTS[part.group(1)], []).append((int(echo.group(1)), path))
    return {k: [p for _, p in sorted(v)] for k, v in parts.items()}


def load_echo_folder(folder: str | Path, *, phase_units: str = "auto") -> EchoData:
    """Echoes from a folder: BIDS-named NIfTI (``*echo-<n>*_part-mag|phase*.nii[.gz]``, e.g. from
    ``myocomp phantom --echoes``) with JSON sidecars, or else a DICOM folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError("echo folder not found", source=folder)
    files = _bids_files(folder)
    if "mag" in files and "phase" in files:
        return load_echo_pairs(files["mag"], files["phase"], phase_units=phase_units)
    return read_dicom_echoes(folder, phase_units=phase_units)


def _dicom_kind(ds) -> str | None:
    from myocomp.imaging.dicom import _text, classify

    ge = ds.get((0x0043, 0x102F))
    if ge is not None:
        try:
            return _GE_KIND.get(int(ge.value))
        except (TypeError, ValueError):
            return None
    image_type = getattr(ds, "ImageType", None) or []
    image_type = [image_type] if isinstance(image_type, str | bytes) else list(image_type)
    if classify(image_type) is not None:
        return None  # Dixon water/fat/in/opposed-phase or a derived map, not an echo
    kinds = {_TYPE_KIND[t] for t in (_text(v).upper() for v in image_type) if t in _TYPE_KIND}
    return kinds.pop() if len(kinds) == 1 else None


def _scan_echoes(folder: Path):
    from myocomp.imaging.dicom import _read_header, _Slice

    groups: dict[tuple[str, float], list] = {}
    fields: set[float] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None or "Rows" not in ds or getattr(ds, "Modality", "MR") != "MR":
            continue
        kind = _dicom_kind(ds)
        if kind is None or "EchoTime" not in ds:
            continue
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if tag not in ds:
                raise GeometryError(f"DICOM image has no {tag}", source=path)
        if "MagneticFieldStrength" in ds and ds.MagneticFieldStrength not in (None, ""):
            fields.add(round(float(ds.MagneticFieldStrength), 3))
        groups.setdefault((kind, round(float(ds.EchoTime), 3)), []).append(_Slice(
            path=path, channel=kind, series=str(getattr(ds, "SeriesInstanceUID", "")),
            orientation=tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
            position=np.array([float(v) for v in ds.ImagePositionPatient]),
            spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            shape=(int(ds.Rows), int(ds.Columns))))
    return groups, fields


def read_dicom_echoes(folder: str | Path, *, phase_units: str = "auto") -> EchoData:
    """Complex multi-echo data from a DICOM folder (see module docstring)."""
    from myocomp.imaging.dicom import _series_volume
    from myocomp.imaging.dixon import same_grid

    folder = Path(folder)
    groups, fields = _scan_echoes(folder)
    tes = sorted({te for _, te in groups})
    if len(tes) < 2:
        raise InputFileError("no multi-echo magnitude/phase or real/imaginary DICOM images "
                             f"found ({len(tes)} echo time(s))", source=folder)
    use = ("real", "imag") if all(("real", t) in groups and ("imag", t) in groups for t in tes) \
        else ("mag", "phase")
    missing = [f"{k} at TE {t} ms" for t in tes for k in use if (k, t) not in groups]
    if missing:
        raise InputFileError(f"incomplete echoes: no {', '.join(missing)}", source=folder)
    if len(fields) > 1:
        raise InputFileError(f"images of several field strengths {sorted(fields)} T", source=folder)
    vols, affine, units = [], None, set()
    for t in tes:
        a, aff = _series_volume(groups[(use[0], t)], folder)
        b, aff_b = _series_volume(groups[(use[1], t)], folder)
        affine = aff if affine is None else affine
        if a.shape != vols[0].shape[:3] if vols else False:
            raise GeometryError("echoes differ in matrix size", source=folder)
        if not (same_grid(aff, affine) and same_grid(aff_b, affine)):
            raise GeometryError(f"echo at TE {t} ms is not on the first echo's grid", source=folder)
        if use[0] == "real":
            vols.append(a + 1j * b)
        else:
            rad, used = phase_to_radians(b, phase_units)
            units.add(used)
            vols.append(a * np.exp(1j * rad))
    return EchoData(echoes=np.stack(vols, axis=-1).astype(np.complex64), affine=affine,
                    te_s=tuple(t / 1000.0 for t in tes), source=str(folder),
                    field_t=fields.pop() if fields else None,
                    phase_units=",".join(sorted(units)) or None)


def _resolve(header, option, name: str, unit: str, rtol: float = 0.01):
    if option is None:
        if header is None:
            raise ConfigError(f"no {name} in the headers/sidecars; give it as an option ({unit})")
        return header
    h, o = np.atleast_1d(np.asarray(header, float)), np.atleast_1d(np.asarray(option, float))
    if header is not None and (h.shape != o.shape or not np.allclose(h, o, rtol=rtol)):
        raise ConfigError(f"{name} option {option} conflicts with the headers' {header}")
    return option


#: Separation methods of :func:`separate_echo_data`.
METHODS = ("multi_echo", "phase_referenced")


def separate_echo_data(data: EchoData, *, te_s=None, field_t: float | None = None,
                       precession: str = "auto", method: str = "multi_echo", **options):
    """Separate loaded echoes: ``method`` ``multi_echo`` (:func:`myocomp.imaging.fatwater.separate`)
    or ``phase_referenced`` (:func:`myocomp.imaging.phaseref.separate_phase_referenced`, for echo
    sets that do not encode fat between their echoes); echo times (s) and field (T) from the
    headers, or the options (a conflict between both is an error)."""
    from myocomp.imaging.fatwater import separate
    from myocomp.imaging.phaseref import separate_phase_referenced

    if method not in METHODS:
        raise ConfigError(f"method must be {' or '.join(METHODS)}, got {method!r}")
    te = _resolve(data.te_s, None if te_s is None else tuple(te_s), "echo times", "ms")
    if len(te) != data.echoes.shape[-1]:
        raise ConfigError(f"{len(te)} echo times given for {data.echoes.shape[-1]} echoes")
    field = _resolve(data.field_t, field_t, "field strength", "T")
    run = separate if method == "multi_echo" else separate_phase_referenced
    result = run(data.echoes, te, float(field), precession=precession, **options)
    result.params.update({"method": method, "source": data.source,
                          "phase_units": data.phase_units})
    return result


def load_ff_map(path: str | Path, *, units: str = "auto"):
    """A fat-fraction/PDFF map (NIfTI file, or a DICOM folder with one fat-fraction series,
    ImageType FF/FAT_FRACTION/PDFF or a description such as 'fat fraction') as a DixonVolume
    carrying it (see :func:`myocomp.imaging.fatwater.dixon_from_ff`)."""
    from myocomp.imaging.dixon import load_nifti
    from myocomp.imaging.fatwater import dixon_from_ff, ff_map_to_fraction

    path = Path(path)
    if path.is_dir():
        data, affine = _dicom_ff_series(path)
    else:
        img = load_nifti(path, "ff map")
        data, affine = np.asarray(img.dataobj, dtype=np.float32), img.affine
    return dixon_from_ff(ff_map_to_fraction(data, units, source=path), affine, source=str(path))


_FF_DESCRIPTION = re.compile(r"(fat[\s_-]*frac|pdff|\bff\b|_ff$)")


def _dicom_ff_series(folder: Path):
    from myocomp.imaging.dicom import _IGNORED_TOKENS, _read_header, _series_volume, _Slice, _text

    series: dict[str, list] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None or "Rows" not in ds or "ImagePositionPatient" not in ds:
            continue
        tokens = {_text(t).upper() for t in (getattr(ds, "ImageType", None) or [])}
        desc = _text(getattr(ds, "SeriesDescription", "") or "").lower()
        is_ff = bool(tokens & (_IGNORED_TOKENS - {"T2_STAR", "R2_STAR", "T2STAR", "R2STAR",
                                                   "WATER_FRACTION", "WF"}))
        if not (is_ff or _FF_DESCRIPTION.search(desc)):
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        series.setdefault(uid, []).append(_Slice(
            path=path, channel="ff", series=uid,
            orientation=tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
            position=np.array([float(v) for v in ds.ImagePositionPatient]),
            spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
            shape=(int(ds.Rows), int(ds.Columns))))
    if len(series) != 1:
        raise InputFileError(f"{len(series)} fat-fraction DICOM series found; need exactly one",
                             source=folder)
    return _series_volume(next(iter(series.values())), folder)
