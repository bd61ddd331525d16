"""The batch manifest: one row per participant, validated up front with every problem listed.

A manifest is a CSV (comma) or TSV (tab, ``.tsv``/``.tab``) file with a header row. Paths are
relative to the manifest's folder (absolute paths are kept). Columns:

``participant_id`` (required)
    Letters, digits, ``.``, ``_``, ``-``; starts with a letter or digit; at most 128 characters.
    It names the participant's output folder, so it must be unique.
Image source, exactly one per row:
    ``water`` + ``fat`` (+ optional ``in_phase``, ``opposed_phase``): NIfTI files on one grid.
    ``grid_from`` (optional, one of these channel names) declares that they (and ``labels``,
    ``vertebrae``) share that channel's voxel grid and only their headers differ
    (``quantify --grid-from``).
    ``dicom_dir``: a folder holding the Dixon series (channels recognised from the headers).
    ``stations``: a folder with one NIfTI per station and channel, named
    ``<channel>_<n>.nii[.gz]`` (channel one of water, fat, in_phase, opposed_phase; n = 1, 2, ...).
    ``water_stations`` + ``fat_stations`` (+ ``in_phase_stations``, ``opposed_phase_stations``):
    ``;``-separated lists of NIfTI files, station k of each channel sharing one grid.
    ``ff_map``: a fat-fraction/PDFF map (NIfTI, or a DICOM folder with one fat-fraction
    series; percent or fraction detected) used as the fat fraction; needs ``labels``.
    ``echoes``: a multi-echo folder (BIDS NIfTI + sidecars, or DICOM), separated first
    (``myocomp separate``); its PDFF is the fat fraction; needs ``labels``.
``labels``, ``profile`` (optional)
    A precomputed label map and the label profile naming its ids (``mrsegmentator``, ...,
    or a dataset.json / mapping file). Without ``labels`` the batch segments with ``--model``.
``bmi`` (optional, kg/m^2, > 0), ``site`` (optional, free text).
``vertebrae``, ``vertebrae_profile``, ``height_cm`` (optional)
    A vertebra label map on the image grid (per-level metrics ``levels.parquet``, groups such as
    ``back_L1_L5``), its profile (default ``totalsegmentator_vertebrae_mr``), and the body
    height in cm (100-250) for the L3 skeletal-muscle index.

Problems of the manifest itself (header, columns, ids, values) stop before anything runs, all
listed at once (:class:`ManifestError`). A row whose files are missing or unreadable (or whose
profile file cannot be read) does not stop the others: it becomes one of
:attr:`Manifest.row_errors` (an ``errors.csv`` row of stage ``manifest``), unless ``strict``.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from myocomp.errors import DataError, InputFileError
from myocomp.imaging.channels import CHANNELS

STATION_COLUMNS = tuple(f"{c}_stations" for c in CHANNELS)
COLUMNS = (
    "participant_id",
    *CHANNELS,
    "dicom_dir",
    "stations",
    *STATION_COLUMNS,
    "ff_map",
    "echoes",
    "labels",
    "profile",
    "bmi",
    "site",
    "vertebrae",
    "vertebrae_profile",
    "height_cm",
    "grid_from",
)
PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STATION_FILE = re.compile(rf"^({'|'.join(CHANNELS)})_(\d+)\.nii(\.gz)?$")


class ManifestError(DataError):
    """A manifest has problems; ``problems`` lists every one (line number, id and reason)."""

    def __init__(self, problems: list[str], *, source: str | Path | None = None) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in manifest: " + "; ".join(self.problems[:5])
        if n > 5:
            head += f"; ... and {n - 5} more"
        super().__init__(head, source=source)


class ManifestRowError(ManifestError):
    """``strict`` only: rows whose files are missing or unreadable (the manifest itself is fine)."""


@dataclass(frozen=True)
class Participant:
    """One validated manifest row; every path is absolute.

    ``kind`` is ``"nifti"``, ``"dicom"`` or ``"stations"``; ``stations`` maps a channel to the
    tuple of its station files (same order in every channel).
    """

    participant_id: str
    kind: str
    water: Path | None = None
    fat: Path | None = None
    in_phase: Path | None = None
    opposed_phase: Path | None = None
    dicom_dir: Path | None = None
    stations: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    ff_map: Path | None = None
    echoes: Path | None = None
    labels: Path | None = None
    profile: str | None = None
    bmi: float | None = None
    site: str | None = None
    line: int = 0
    vertebrae: Path | None = None
    vertebrae_profile: str | None = None
    height_cm: float | None = None
    grid_from: str | None = None

    def input_files(self) -> dict[str, list[Path]]:
        """Input files by role (for hashing). A DICOM folder lists every file below it, sorted."""
        files: dict[str, list[Path]] = {}
        if self.kind == "nifti":
            for ch in CHANNELS:
                path = getattr(self, ch)
                if path is not None:
                    files[ch] = [path]
        elif self.kind == "dicom":
            assert self.dicom_dir is not None
            files["dicom"] = sorted(p for p in self.dicom_dir.rglob("*") if p.is_file())
        elif self.kind in ("ff_map", "echoes"):
            src = self.ff_map if self.kind == "ff_map" else self.echoes
            assert src is not None
            files[self.kind] = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() \
                else [src]
        else:
            for ch, paths in self.stations.items():
                files[f"{ch}_stations"] = list(paths)
        if self.labels is not None:
            files["labels"] = [self.labels]
        if self.vertebrae is not None:
            files["vertebrae"] = [self.vertebrae]
        if self.profile is not None and _looks_like_path(self.profile):
            files["profile"] = [Path(self.profile)]
        return files


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its path and participants in file order."""

    path: Path
    participants: tuple[Participant, ...]
    #: Rows left out because of their files: ``participant_id``, ``stage`` ("manifest"), ``reason``.
    row_errors: tuple[dict[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.participants)

    @property
    def ids(self) -> list[str]:
        return [p.participant_id for p in self.participants]


def is_safe_participant_id(value: str) -> bool:
    """True if ``value`` is usable as a folder name on every platform (see module docstring)."""
    return bool(PARTICIPANT_ID.match(value)) and value not in (".", "..")


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(".json")


def _delimiter(path: Path, first_line: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    if path.suffix.lower() == ".csv":
        return ","
    return "\t" if "\t" in first_line and "," not in first_line else ","


def read_manifest(
    path: str | Path, *, default_profile: str | None = None, strict: bool = False
) -> Manifest:
    """Read and validate a manifest; raise :class:`ManifestError` listing every problem.

    Checks: known columns, one image source per row, participant ids are safe folder names and
    unique, rows have the header's number of fields, ``bmi`` is a positive number, label maps
    have a profile (their own or ``default_profile``). Rows whose files or folders are missing or
    unreadable become :attr:`Manifest.row_errors`; with ``strict`` they raise
    :class:`ManifestRowError` (listing every one) instead.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    participants, row_errors, problems = _parse_rows(header, rows, path.parent.resolve(), default_profile)
    bad_profiles, profile_errors = _check_profiles(participants)
    problems.extend(bad_profiles)
    if problems:
        raise ManifestError(problems, source=path)
    participants = [p for p in participants if p.participant_id not in profile_errors]
    row_errors.extend(
        {"participant_id": pid, "stage": "manifest", "reason": reason}
        for pid, reason in profile_errors.items()
    )
    if strict and row_errors:
        raise ManifestRowError(
            [f"{e['participant_id']}: {e['reason']}" for e in row_errors], source=path
        )
    if not participants and not row_errors:
        raise ManifestError(["no participant rows"], source=path)
    return Manifest(
        path=path.resolve(), participants=tuple(participants), row_errors=tuple(row_errors)
    )


def _header_problems(header: list[str]) -> list[str]:
    problems: list[str] = []
    for name in (h for h in header if h not in COLUMNS):
        close = difflib.get_close_matches(name, COLUMNS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown column {name!r}{hint}")
    if "participant_id" not in header:
        problems.append("missing column 'participant_id'")
    dupes = sorted({h for h in header if header.count(h) > 1})
    problems.extend(f"column {h!r} appears more than once" for h in dupes)
    return problems


def _check_profiles(participants: list[Participant]) -> tuple[list[str], dict[str, str]]:
    """Rows whose label profile is unusable (each profile checked once): an unknown built-in
    name is a manifest problem; a profile file that cannot be read is that row's error.

    Returns (manifest problems, {participant_id: reason}).
    """
    from myocomp.imaging.labels import get_profile

    verdict: dict[str, str | None] = {}
    problems: list[str] = []
    row_errors: dict[str, str] = {}
    for p in participants:
        if p.labels is None or p.profile is None or p.profile.lower() == "auto":
            continue
        if p.profile not in verdict:
            try:
                get_profile(p.profile)
                verdict[p.profile] = None
            except Exception as exc:  # noqa: BLE001 - any unreadable profile is this row's problem
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                verdict[p.profile] = text or type(exc).__name__
        if not verdict[p.profile]:
            continue
        message = f"line {p.line}: profile: {verdict[p.profile]}"
        if _looks_like_path(p.profile):
            row_errors[p.participant_id] = message
        else:
            problems.append(f"line {p.line} ({p.participant_id}): profile: {verdict[p.profile]}")
    return problems, row_errors


def file_problem(path: Path, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be used as an input file (or folder), or None. Opens nothing."""
    kind = "folder" if folder else "file"
    if not path.exists():
        return f"{kind} not found: {path}"
    if folder and not path.is_dir():
        return f"not a folder: {path}"
    if not folder and not path.is_file():
        return f"not a regular file: {path}"
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return f"{kind} not readable (permission denied): {path}"
    return None


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(stripped header, data rows) of a CSV/TSV manifest; an unreadable file or a bad header raises."""
    if not path.is_file():
        raise InputFileError("manifest not found", source=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(
            f"manifest cannot be read ({type(exc).__name__}: {exc})", source=path
        ) from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ManifestError(["the file is empty (a header row is needed)"], source=path)
    rows = list(csv.reader(io.StringIO(text), delimiter=_delimiter(path, lines[0])))
    header = [h.strip() for h in rows[0]]
    problems = _header_problems(header)
    if problems:
        raise ManifestError(problems, source=path)
    return header, rows[1:]


def _parse_rows(header: list[str], rows: list[list[str]], base: Path, default_profile: str | None):
    """(participants, row errors of missing files, problems of the manifest itself)."""
    participants: list[Participant] = []
    row_errors: list[dict[str, str]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(rows, start=2):
        if not raw or all(not v.strip() for v in raw):
            continue
        if len(raw) != len(header):
            problems.append(f"line {lineno}: {len(raw)} fields, the header has {len(header)}")
            continue
        row = {h: v.strip() for h, v in zip(header, raw, strict=True)}
        row_problems: list[str] = []
        file_problems: list[str] = []
        participant = _parse_row(row, lineno, base, default_profile, row_problems, file_problems)
        pid = row.get("participant_id", "")
        if pid in seen:
            row_problems.append(f"duplicate participant_id (first on line {seen[pid]})")
        elif pid:
            seen[pid] = lineno
        label = f"line {lineno} ({pid})" if pid else f"line {lineno}"
        problems.extend(f"{label}: {p}" for p in row_problems)
        if row_problems:
            continue
        if file_problems:
            reason = f"line {lineno}: " + "; ".join(file_problems)
            row_errors.append({"participant_id": pid, "stage": "manifest", "reason": reason})
        elif participant is not None:
            participants.append(participant)
    return participants, row_errors, problems


def _parse_row(
    row: dict[str, str],
    lineno: int,
    base: Path,
    default_profile: str | None,
    problems: list[str],
    missing: list[str],
) -> Participant | None:
    pid = row.get("participant_id", "")
    _check_participant_id(pid, problems)

    def file(column: str, *, folder: bool = False) -> Path | None:
        value = row.get(column, "")
        if not value:
            return None
        p = _resolve(base, value)
        why = file_problem(p, folder=folder)
        if why:
            missing.append(f"{column}: {why}")
        return p

    sources = _sources(row, problems)
    kind = {"water/fat": "nifti", "dicom_dir": "dicom", "stations": "stations",
            "ff_map": "ff_map", "echoes": "echoes"}.get(
        sources[0] if len(sources) == 1 else "", ""
    )
    images = _parse_images(row, kind, base, file, problems, missing)
    labels = file("labels")
    profile = _parse_profile(row, default_profile, base, missing)
    if labels is not None and not profile:
        problems.append("labels given without a profile (add a profile column or --profile)")

    bmi = _bmi(row, problems)
    grid_from = _parse_grid_from(row, kind, missing)
    vertebrae, vertebrae_profile, height_cm = _parse_levels(row, base, file, problems)
    if problems or not kind:
        return None
    return Participant(
        participant_id=pid,
        kind=kind,
        **images,
        labels=labels,
        profile=profile or None,
        bmi=bmi,
        site=row.get("site") or None,
        line=lineno,
        vertebrae=vertebrae,
        vertebrae_profile=vertebrae_profile,
        height_cm=height_cm,
        grid_from=grid_from,
    )


def _check_participant_id(pid: str, problems: list[str]) -> None:
    if not pid:
        problems.append("participant_id is empty")
    elif not is_safe_participant_id(pid):
        problems.append(
            f"participant_id {pid!r} is not a safe folder name (use letters, digits, '.', '_', '-'; "
            "start with a letter or digit; at most 128 characters)"
        )


def _parse_images(row, kind: str, base: Path, file, problems: list[str], missing: list[str]) -> dict:
    """The image fields of a :class:`Participant` for the row's source ``kind``; problems appended."""
    channels: dict[str, Path | None] = {c: None for c in CHANNELS}
    dicom_dir = None
    stations: dict[str, tuple[Path, ...]] = {}
    if kind == "nifti":
        for ch in CHANNELS:
            channels[ch] = file(ch)
        for ch in ("water", "fat"):
            if not row.get(ch):
                problems.append(f"{ch} is empty (water and fat are both needed)")
    elif kind == "dicom":
        dicom_dir = file("dicom_dir", folder=True)
    elif kind == "stations":
        stations = _parse_stations(row, base, problems, missing)
    extra: dict[str, Path | None] = {c: None for c in ("ff_map", "echoes")}
    if kind in extra:
        extra[kind] = _resolve(base, row[kind])
        why = file_problem(extra[kind], folder=kind == "echoes" or extra[kind].is_dir())
        if why:
            missing.append(f"{kind}: {why}")
        if not row.get("labels"):
            problems.append(f"{kind} needs a labels column (no segmentation of fat fractions)")
    if kind and kind != "nifti" and any(row.get(c) for c in ("in_phase", "opposed_phase")):
        problems.append("in_phase/opposed_phase columns only go with water + fat")
    return {**channels, "dicom_dir": dicom_dir, "stations": stations, **extra}


def _parse_grid_from(row: dict[str, str], kind: str, missing: list[str]) -> str | None:
    """The row's declared shared grid (a channel name, or None); an unusable value is a row error."""
    value = row.get("grid_from") or None
    if value is None:
        return None
    if value not in CHANNELS:
        missing.append(f"grid_from: {value!r} is not one of {', '.join(CHANNELS)} (or empty)")
    elif kind and kind != "nifti":
        source = {"dicom": "dicom_dir"}.get(kind, kind)
        missing.append(f"grid_from: goes with water + fat NIfTI images only, not with {source}")
    elif not row.get(value):
        missing.append(f"grid_from: {value}, but the row has no {value} image")
    return value


def _parse_profile(row: dict[str, str], default_profile: str | None, base: Path, missing: list[str]) -> str | None:
    """The row's label profile (or the default); a profile file path is resolved and checked."""
    profile = row.get("profile") or default_profile
    if profile and _looks_like_path(profile):
        resolved = _resolve(base, profile)
        why = file_problem(resolved)
        if why:
            missing.append(f"profile: {why}")
        profile = str(resolved)
    return profile


def _parse_levels(row: dict[str, str], base: Path, file, problems: list[str]):
    """(vertebrae path, vertebrae profile, height in cm) of a row; problems appended."""
    vertebrae = file("vertebrae")
    profile = row.get("vertebrae_profile") or None
    if profile and _looks_like_path(profile):
        profile = str(_resolve(base, profile))
        if not Path(profile).is_file():
            problems.append(f"vertebrae_profile: file not found: {profile}")
    height: float | None = None
    if row.get("height_cm"):
        try:
            height = float(row["height_cm"])
        except ValueError:
            problems.append(f"height_cm {row['height_cm']!r} is not a number")
        else:
            if not (math.isfinite(height) and 100.0 <= height <= 250.0):
                problems.append(f"height_cm {row['height_cm']!r} must lie in 100-250 (cm)")
                height = None
    return vertebrae, profile, height


def _sources(row: dict[str, str], problems: list[str]) -> list[str]:
    """The image sources a row gives (exactly one is needed)."""
    sources: list[str] = []
    if row.get("water") or row.get("fat"):
        sources.append("water/fat")
    if row.get("dicom_dir"):
        sources.append("dicom_dir")
    if row.get("stations") or any(row.get(c) for c in STATION_COLUMNS):
        sources.append("stations")
    sources += [c for c in ("ff_map", "echoes") if row.get(c)]
    if not sources:
        problems.append("no image source: give water + fat, dicom_dir, or stations")
    elif len(sources) > 1:
        problems.append(f"more than one image source ({', '.join(sources)}); give exactly one")
    return sources


def _bmi(row: dict[str, str], problems: list[str]) -> float | None:
    bmi: float | None = None
    if row.get("bmi"):
        try:
            bmi = float(row["bmi"])
        except ValueError:
            problems.append(f"bmi {row['bmi']!r} is not a number")
        else:
            if not math.isfinite(bmi) or bmi <= 0:
                problems.append(f"bmi {row['bmi']!r} must be a positive number (kg/m^2)")
    return bmi


def _parse_stations(
    row: dict[str, str], base: Path, problems: list[str], missing: list[str]
) -> dict[str, tuple[Path, ...]]:
    if row.get("stations") and any(row.get(c) for c in STATION_COLUMNS):
        problems.append("give either a stations folder or <channel>_stations lists, not both")
        return {}
    found: dict[str, dict[int, Path]] = {}
    if row.get("stations"):
        folder = _resolve(base, row["stations"])
        why = file_problem(folder, folder=True)
        if why:
            missing.append(f"stations: {why}")
            return {}
        for p in sorted(folder.iterdir()):
            m = _STATION_FILE.match(p.name)
            if m:
                found.setdefault(m.group(1), {})[int(m.group(2))] = p
        ordered = {
            ch: tuple(found[ch][k] for k in sorted(found[ch])) for ch in CHANNELS if ch in found
        }
        for ch, numbers in found.items():
            if sorted(numbers) != list(range(1, len(numbers) + 1)):
                problems.append(f"stations: {ch} stations are not numbered 1..{len(numbers)}")
    else:
        ordered = {}
        for ch in CHANNELS:
            value = row.get(f"{ch}_stations", "")
            if not value:
                continue
            paths = tuple(_resolve(base, v.strip()) for v in value.split(";") if v.strip())
            for p in paths:
                why = file_problem(p)
                if why:
                    missing.append(f"{ch}_stations: {why}")
            ordered[ch] = paths
    for ch in ("water", "fat"):
        if not ordered.get(ch):
            problems.append(f"stations: no {ch} stations")
    counts = {ch: len(v) for ch, v in ordered.items()}
    if len(set(counts.values())) > 1:
        problems.append(f"stations: channels have different station counts {counts}")
    return ordered
