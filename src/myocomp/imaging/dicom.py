"""Dixon series from DICOM folders: channel recognition, geometry, rescaling.

:func:`read_dicom_dixon` reads every single-frame MR image under a folder (pydicom), sorts the
images into Dixon channels from their headers, builds each series' geometry from
ImageOrientationPatient / ImagePositionPatient / PixelSpacing, applies RescaleSlope/Intercept,
and returns the same :class:`~myocomp.imaging.dixon.DixonVolume` as the NIfTI path (canonical
RAS+). When a channel comes as several series (whole-body stations), they are stitched with
:func:`myocomp.imaging.stitch.stitch`.

Channel recognition, first match wins:

1. ImageType (0008,0008) tokens. Siemens writes e.g. ``DERIVED\\PRIMARY\\DIXON\\WATER`` (also
   ``FAT``, ``IN_PHASE``, ``OPP_PHASE``; older software ``W``, ``F``, ``IP``, ``OP``); Philips
   enhanced frames and GE IDEAL/FLEX use ``WATER``/``FAT`` tokens as well.
2. Philips' private Image Type MR (2005,1011): ``W``, ``F``, ``IP``, ``OP``.
3. SeriesDescription words: GE prefixes such as ``WATER:``, ``FAT:``, ``InPhase:``,
   ``OutPhase:``; Siemens/UK Biobank suffixes ``_W``, ``_F``, ``_in``, ``_opp``.

Fat-fraction, water-fraction and T2* maps are ignored. Only geometry, pixel data and the fields
above are read: no patient-identifying field (names, IDs, dates, institution) is copied into
the volume, its ``source`` or any error message.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from myocomp.errors import GeometryError, InputFileError

_TOKENS = {
    "water": {"WATER", "W"},
    "fat": {"FAT", "F"},
    "in_phase": {"IN_PHASE", "IP", "INPHASE", "IN PHASE"},
    "opposed_phase": {"OPP_PHASE", "OUT_PHASE", "OP", "OPPOSED_PHASE", "OUT PHASE", "OUTPHASE"},
}
_IGNORED_TOKENS = {
    "FAT_FRACTION", "FF", "FATFRACTION", "FAT FRACTION", "WATER_FRACTION", "WF", "T2_STAR",
    "R2_STAR", "T2STAR", "R2STAR", "PDFF",
}  # fmt: skip
_DESCRIPTION = (
    (
        "ignore",
        re.compile(r"(fat[\s_-]*frac|\bff\b|_ff$|pdff|t2\*|t2star|r2star|water[\s_-]*frac)"),
    ),
    ("water", re.compile(r"(^|[^a-z])(water|wat)([^a-z]|$)|_w$")),
    ("fat", re.compile(r"(^|[^a-z])fat([^a-z]|$)|_f$")),
    ("in_phase", re.compile(r"(in[\s_-]?phase|(^|[^a-z])ip([^a-z]|$)|_in$)")),
    ("opposed_phase", re.compile(r"(opp|out[\s_-]?phase|(^|[^a-z])op([^a-z]|$)|_opp$)")),
)
_PHILIPS_TYPE = {"W": "water", "F": "fat", "IP": "in_phase", "OP": "opposed_phase"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class _Slice:
    path: Path
    channel: str
    series: str
    orientation: tuple[float, ...]
    position: np.ndarray
    spacing: tuple[float, float]
    shape: tuple[int, int]


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    return str(value).strip().strip("\x00").strip()


def classify(
    image_type: Sequence[str] = (), philips_type: str = "", description: str = ""
) -> str | None:
    """The Dixon channel of an image from its headers: a name in
    :data:`myocomp.imaging.channels.CHANNELS`, ``"ignore"`` for derived maps (fat fraction,
    T2*), or None if unrecognised.

    >>> classify(["DERIVED", "PRIMARY", "DIXON", "WATER"])
    'water'
    >>> classify(["ORIGINAL", "PRIMARY", "M"], philips_type="F")
    'fat'
    >>> classify(["DERIVED", "PRIMARY"], description="InPhase: Ax LAVA-Flex")
    'in_phase'
    """
    if isinstance(image_type, str | bytes):  # a single-valued ImageType
        image_type = [image_type]
    tokens = {_text(t).upper() for t in image_type}
    if tokens & _IGNORED_TOKENS:
        return "ignore"
    for channel, names in _TOKENS.items():
        if tokens & names:
            return channel
    ptype = _text(philips_type).upper()
    if ptype in _PHILIPS_TYPE:
        return _PHILIPS_TYPE[ptype]
    if ptype in _IGNORED_TOKENS:
        return "ignore"
    desc = _text(description).lower()
    for channel, pattern in _DESCRIPTION:
        if desc and pattern.search(desc):
            return channel
    return None


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad input file
        raise InputFileError(
            f"DICOM file cannot be read ({type(exc).__name__})", source=path
        ) from exc


_GE_IMAGE_KIND = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}


@dataclass
class _Unrecognised:
    """What one series without Dixon markers holds (no patient-identifying field)."""

    number: str
    description: str
    n_images: int = 0
    image_types: set[str] = field(default_factory=set)
    echo_times: set[float] = field(default_factory=set)
    kinds: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, ds) -> _Unrecognised:
        return cls(str(getattr(ds, "SeriesNumber", "") or "?"), _text(getattr(ds, "SeriesDescription", "") or ""))

    def add(self, ds, image_type: list) -> None:
        self.n_images += 1
        self.image_types.add("\\".join(_text(t) for t in image_type) or "(none)")
        te = getattr(ds, "EchoTime", None)
        if te not in (None, ""):
            self.echo_times.add(round(float(te), 2))
        ge_kind = ds.get((0x0043, 0x102F))
        if ge_kind is not None:
            with contextlib.suppress(TypeError, ValueError):  # a malformed private tag says nothing
                self.kinds.add(_GE_IMAGE_KIND.get(int(ge_kind.value), f"type {ge_kind.value}"))
        tokens = {_text(t).upper() for t in image_type}
        self.kinds |= {name for token, name in (("M", "magnitude"), ("P", "phase"), ("R", "real"),
                                                ("I", "imaginary")) if token in tokens}

    def describe(self) -> str:
        """e.g. series 4 "Multi_TE" (119 images, ImageType ORIGINAL\\SECONDARY\\M, 17 echoes 10.9-185.3 ms)."""
        parts = [f"{self.n_images} images", "ImageType " + " / ".join(sorted(self.image_types))]
        tes = sorted(self.echo_times)
        if len(tes) > 1:
            parts.append(f"{len(tes)} echoes TE {tes[0]:g}-{tes[-1]:g} ms")
        elif tes:
            parts.append(f"TE {tes[0]:g} ms")
        if self.kinds:
            parts.append(" + ".join(k for k in ("magnitude", "phase", "real", "imaginary") if k in self.kinds)
                         + "".join(f" + {k}" for k in sorted(self.kinds) if k not in _GE_IMAGE_KIND.values()))
        return f'series {self.number} "{self.description}" ({", ".join(parts)})'

    def why(self) -> str:
        """Why this series is not a Dixon water/fat image."""
        if len(self.echo_times) > 1:
            kind = "complex " if {"phase", "real", "imaginary"} & self.kinds else ""
            return f"{kind}multi-echo source images (no fat-water separation done)"
        return "no Dixon water/fat marker in ImageType, Philips type or description"


def unrecognised_reason(series: Mapping[str, _Unrecognised]) -> str:
    """One sentence naming each series without Dixon markers and why it is not water/fat."""
    if not series:
        return ""
    items = [f"{s.describe()}: {s.why()}" for s in list(series.values())[:4]]
    more = f"; and {len(series) - 4} more" if len(series) > 4 else ""
    return "; ".join(items) + more


def _scan(folder: Path) -> tuple[list[_Slice], dict[str, _Unrecognised]]:
    slices: list[_Slice] = []
    unknown: dict[str, _Unrecognised] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _read_header(path)
        if ds is None or "Rows" not in ds or getattr(ds, "Modality", "MR") != "MR":
            continue  # not an MR image (DICOMDIR, report, presentation state, ...)
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InputFileError(
                "enhanced (multi-frame) DICOM is not supported; export classic single-frame "
                "images or convert to NIfTI (e.g. dcm2niix)",
                source=path,
            )
        philips = ds.get((0x2005, 0x1011))
        image_type = getattr(ds, "ImageType", None) or []
        image_type = [image_type] if isinstance(image_type, str | bytes) else list(image_type)
        channel = classify(
            image_type,
            philips.value if philips is not None else "",
            getattr(ds, "SeriesDescription", "") or "",
        )
        if channel is None:
            key = f"{getattr(ds, 'SeriesInstanceUID', '')}#{getattr(ds, 'SeriesNumber', '')}"
            unknown.setdefault(key, _Unrecognised.of(ds)).add(ds, image_type)
            continue
        if channel == "ignore":
            continue
        for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            if tag not in ds:
                raise GeometryError(f"DICOM image has no {tag}", source=path)
        slices.append(
            _Slice(
                path=path,
                channel=channel,
                series=str(getattr(ds, "SeriesInstanceUID", ""))
                + f"#{getattr(ds, 'SeriesNumber', '')}",
                orientation=tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
                position=np.array([float(v) for v in ds.ImagePositionPatient]),
                spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                shape=(int(ds.Rows), int(ds.Columns)),
            )
        )
    return slices, unknown


def _series_volume(slices: list[_Slice], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stack one series into an (X=columns, Y=rows, Z=slices) float32 array and its RAS affine."""
    import pydicom

    first = slices[0]
    for s in slices[1:]:
        if s.orientation != first.orientation or s.shape != first.shape:
            raise GeometryError(
                "images of one series differ in orientation or matrix size", source=folder
            )
        if not np.allclose(s.spacing, first.spacing, rtol=1e-4):
            raise GeometryError("images of one series differ in pixel spacing", source=folder)
    row_cos = np.array(first.orientation[:3])
    col_cos = np.array(first.orientation[3:])
    normal = np.cross(row_cos, col_cos)
    order = sorted(slices, key=lambda s: float(s.position @ normal))
    dist = np.array([float(s.position @ normal) for s in order])
    if len(order) > 1:
        steps = np.diff(dist)
        if np.any(steps < 1e-3):
            raise GeometryError(
                "several images share one slice position (mixed echoes or series?)", source=folder
            )
        if np.ptp(steps) > max(1e-2, 0.01 * np.median(steps)):
            raise GeometryError(
                f"slice spacing is not uniform ({steps.min():.3f}-{steps.max():.3f} mm); "
                "a slice may be missing",
                source=folder,
            )
        step = (order[-1].position - order[0].position) / (len(order) - 1)
    else:
        ds = pydicom.dcmread(order[0].path, stop_before_pixels=True)
        thick = float(
            getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 1) or 1
        )
        step = normal * thick
    lps = np.eye(4)
    lps[:3, 0] = row_cos * first.spacing[1]
    lps[:3, 1] = col_cos * first.spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = order[0].position
    data = np.empty((first.shape[1], first.shape[0], len(order)), dtype=np.float32)
    for k, s in enumerate(order):
        try:
            ds = pydicom.dcmread(s.path)
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - codec missing or corrupt pixel data
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise InputFileError(
                f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {detail}); for "
                "compressed transfer syntaxes install pylibjpeg or gdcm, or decompress first",
                source=s.path,
            ) from exc
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        data[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    return data, LPS_TO_RAS @ lps


def _centre_key(volume: tuple[np.ndarray, np.ndarray]) -> tuple[float, ...]:
    """Sort key of a series: its centre's world position, superior axis first."""
    data, affine = volume
    centre = affine @ np.append((np.array(data.shape) - 1) / 2.0, 1.0)
    return tuple(np.round(centre[[2, 1, 0]], 1))


def read_dicom_dixon(folder: str | Path, *, source: str | None = None):
    """Read a Dixon DICOM folder into a canonical :class:`~myocomp.imaging.dixon.DixonVolume`.

    Water and fat series are required; in-phase and opposed-phase are used when present. A
    channel with several series is treated as stations and stitched. ``source`` (default: the
    folder path) is what the volume records as its origin.
    """
    from myocomp.imaging.dixon import dixon_from_arrays, same_grid
    from myocomp.imaging.stitch import Station, stitch

    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError("DICOM folder not found", source=folder)
    slices, unknown = _scan(folder)
    by_channel: dict[str, dict[str, list[_Slice]]] = {}
    for s in slices:
        by_channel.setdefault(s.channel, {}).setdefault(s.series, []).append(s)
    missing = [c for c in ("water", "fat") if c not in by_channel]
    if missing:
        found = f"; {len(unknown)} other series found: {unrecognised_reason(unknown)}" if unknown else ""
        advice = (". Not a Dixon water/fat export: separate fat and water first (or export the "
                  "scanner's Dixon water and fat series) and give them as NIfTI") if not slices else ""
        raise InputFileError(
            f"no {' or '.join(missing)} series found among {len(slices)} Dixon images{found}{advice}",
            source=folder,
        )
    counts = {c: len(v) for c, v in by_channel.items()}
    if len(set(counts.values())) != 1:
        raise InputFileError(f"channels have different numbers of series {counts}", source=folder)

    volumes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for channel, series in by_channel.items():
        vols = [_series_volume(s, folder) for s in series.values()]
        vols.sort(key=_centre_key)
        volumes[channel] = vols
    n = counts["water"]
    for channel, vols in volumes.items():
        for k in range(n):
            ref_data, ref_aff = volumes["water"][k]
            if vols[k][0].shape != ref_data.shape or not same_grid(vols[k][1], ref_aff, shape=ref_data.shape):
                raise GeometryError(
                    f"{channel} series {k + 1} is not on the water series' grid", source=folder
                )
    src = str(folder) if source is None else source
    if n == 1:
        arrays = {c: v[0][0] for c, v in volumes.items()}
        affine = volumes["water"][0][1]
    else:
        res = stitch(
            [
                Station(
                    channels={c: volumes[c][k][0] for c in volumes}, affine=volumes["water"][k][1]
                )
                for k in range(n)
            ]
        )
        arrays, affine = res.channels, res.affine
    return dixon_from_arrays(
        arrays["water"],
        arrays["fat"],
        affine,
        in_phase=arrays.get("in_phase"),
        opposed_phase=arrays.get("opposed_phase"),
        source=src,
    )
