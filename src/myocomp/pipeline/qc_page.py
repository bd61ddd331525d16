"""Drawing of the QC: one participant's overlay PNG and the cohort's self-contained qc.html.

The flags themselves are computed by :mod:`myocomp.imaging.qc`; this module only draws. Images
are coloured through 256-entry lookup tables taken once from matplotlib's colormaps (no figure,
no pyplot) and encoded by Pillow, which keeps the per-participant cost to a few milliseconds.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from myocomp.imaging.qc import FLAG_COLUMNS

#: ``--qc-images`` choices: a PNG for every participant, only for flagged ones, or none.
QC_IMAGE_MODES = ("all", "flagged", "none")


@cache
def colour_table(name: str) -> np.ndarray:
    """The 256 x 3 uint8 RGB lookup table of a matplotlib colormap (``gray``, ``magma``)."""
    from matplotlib import colormaps

    return (colormaps[name](np.arange(256))[:, :3] * 255).astype(np.uint8)


def _outline(labels: np.ndarray, ids: Iterable[int]) -> np.ndarray:
    """Pixels of a 2-D label image that lie on the border of one of ``ids``."""
    inside = np.isin(labels, list(ids))
    edge = np.zeros_like(inside)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return inside & edge


def _panel(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float], cmap, lim, ids):
    """An RGB uint8 panel of a 2-D slice (x right, superior/anterior up), outlines in cyan.

    ``cmap`` is a colormap name; ``lim`` the (low, high) display range of ``image``.
    """
    base = min(spacing)
    reps = [max(1, int(round(s / base))) for s in spacing]
    img = np.repeat(np.repeat(image, reps[0], axis=0), reps[1], axis=1)
    lab = np.repeat(np.repeat(labels, reps[0], axis=0), reps[1], axis=1)
    norm = np.clip((np.nan_to_num(img, nan=0.0) - lim[0]) / (lim[1] - lim[0]), 0.0, 1.0)
    rgb = colour_table(cmap)[np.minimum((norm * 256).astype(np.intp), 255)]
    rgb[_outline(lab, ids)] = (0, 255, 255)
    return np.flipud(np.transpose(rgb, (1, 0, 2)))  # rows = second axis, pointing up


def _plane_ff(dixon, cut: tuple, floor: float) -> np.ndarray:
    """The fat-fraction map (:func:`~myocomp.imaging.dixon.fat_fraction`, ratio or magnitude
    discrimination) of one plane of the volume; NaN everywhere without a fat image."""
    from myocomp.imaging.dixon import fat_fraction

    if dixon.fat is None:
        return np.full(dixon.water[cut].shape, np.nan, np.float32)
    ip = dixon.in_phase[cut] if dixon.in_phase is not None else None
    return fat_fraction(dixon.water[cut], dixon.fat[cut], in_phase=ip, noise_floor=floor)


def _centre(labels: np.ndarray, muscle_ids: list[int]) -> tuple[int, int]:
    """(coronal, axial) indices through the muscles: the median voxel of a sample of them."""
    from myocomp.imaging.dixon import sample_step, strided_sample
    from myocomp.imaging.metrics import member_mask

    step, sample = sample_step(labels), strided_sample(labels)
    where = np.argwhere(member_mask(sample, muscle_ids))
    if not where.size:
        return labels.shape[1] // 2, labels.shape[2] // 2
    cy, cz = (int(v) * step for v in np.round(np.median(where, axis=0))[1:])
    return min(cy, labels.shape[1] - 1), min(cz, labels.shape[2] - 1)


def render_png(
    dixon,
    labelmap,
    path: str | Path | None = None,
    width: int = 0,
    noise_floor: float | None = None,
) -> bytes:
    """Coronal and axial slices through the muscles: water image and FF map (0-1) with muscle
    outlines; a 2 x 2 grid of panels, one pixel per voxel along the finest axis (coarser axes
    repeated, never interpolated), enlarged by whole pixels to at least about ``width`` pixels
    per panel when given (the QC page shows every image 520 px wide without smoothing, so the
    batch stores them unenlarged). Only the two planes drawn are read: their FF is computed here
    with ``noise_floor`` (default :func:`~myocomp.imaging.dixon.default_noise_floor`); the
    water display range comes from a strided sample of the volume.

    Returns the PNG bytes and writes them atomically to ``path`` if given. The PNG holds pixels
    only: no text chunks (no software or author; the QC page prints the participant id).
    """
    from PIL import Image

    from myocomp.imaging.dixon import strided_sample
    from myocomp.imaging.labels import is_muscle

    names = labelmap.profile.ids
    muscle_ids = [i for i, n in names.items() if is_muscle(n)]
    cy, cz = _centre(labelmap.data, muscle_ids)
    floor = noise_floor
    if floor is None or not np.isfinite(floor):
        floor = dixon.noise_floor if dixon.fat is not None else 0.0
    vmax = float(np.nanpercentile(strided_sample(dixon.water), 99.5)) or 1.0
    sx, sy, sz = dixon.spacing_mm
    rows = []
    for cut, spacing in (
        ((slice(None), cy, slice(None)), (sx, sz)),
        ((slice(None), slice(None), cz), (sx, sy)),
    ):
        lab = labelmap.data[cut]
        left = _panel(dixon.water[cut], lab, spacing, "gray", (0.0, vmax), muscle_ids)
        right = _panel(_plane_ff(dixon, cut, floor), lab, spacing, "magma", (0.0, 1.0), muscle_ids)
        scale = max(1, int(round(width / left.shape[1])))
        pair = np.concatenate([left, np.zeros((left.shape[0], 4, 3), np.uint8), right], axis=1)
        rows.append(np.repeat(np.repeat(pair, scale, axis=0), scale, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    if path is not None:
        from myocomp.io import write_bytes

        write_bytes(data, path)
    return data


def _failed_table(failed: list[Mapping[str, str]]) -> list[str]:
    parts = ["<h2>Failed</h2><table><tr><th>participant</th><th>stage</th><th>reason</th></tr>"]
    for e in failed:
        cells = "".join(
            f"<td>{html.escape(str(e.get(k, '')))}</td>"
            for k in ("participant_id", "stage", "reason")
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return parts


def _entry_html(e: Mapping[str, Any], with_image: bool) -> str:
    flagged = any(e["flags"].values())
    raised = [k for k, v in e["flags"].items() if v]
    parts = [f"<div class='p{' flag' if flagged else ''}'><b>{html.escape(e['participant_id'])}</b> "]
    if flagged:
        parts.append(f"<span class='f'>{html.escape(', '.join(raised))}</span>")
        if e.get("notes"):
            parts.append(f"<br><small>{html.escape(str(e['notes']))}</small>")
    else:
        parts.append("ok")
    if with_image:
        b64 = base64.b64encode(Path(e["png"]).read_bytes()).decode("ascii")
        parts.append(
            f"<br><img alt='QC {html.escape(e['participant_id'])}' src='data:image/png;base64,{b64}'>"
        )
    parts.append("</div>")
    return "".join(parts)


def write_qc_html(
    path: str | Path,
    entries: Iterable[Mapping[str, Any]],
    *,
    failed: Iterable[Mapping[str, str]] = (),
    max_unflagged_images: int = 200,
) -> Path:
    """Write a self-contained QC page: failures, then flagged participants, then the rest.

    ``entries``: mappings with ``participant_id``, ``flags`` (column -> bool), ``notes`` (str)
    and ``png`` (path or None). Images are inlined as base64 for every flagged participant and
    for the first ``max_unflagged_images`` others (the page must stay openable for a cohort).
    """
    from myocomp.io import write_text

    entries = sorted(entries, key=lambda e: (not any(e["flags"].values()), e["participant_id"]))
    failed = sorted(failed, key=lambda e: e["participant_id"])
    n_flagged = sum(any(e["flags"].values()) for e in entries)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>myocomp QC</title>",
        "<style>body{font-family:sans-serif;margin:1em}.p{border:1px solid #ccc;margin:.5em 0;"
        "padding:.5em}.flag{background:#fff3f0}.f{color:#b00;font-weight:bold}img{width:520px;image-rendering:pixelated}"
        "td,th{padding:2px 8px;text-align:left}</style></head><body>",
        f"<h1>myocomp QC</h1><p>{len(entries)} participants with results, {n_flagged} flagged, "
        f"{len(failed)} failed.</p>",
    ]
    if failed:
        parts.extend(_failed_table(failed))
    parts.append("<h2>Participants (flagged first)</h2>")
    shown_unflagged = 0
    for e in entries:
        flagged = any(e["flags"].values())
        png = e.get("png")
        show = (
            png is not None
            and Path(png).is_file()
            and (flagged or shown_unflagged < max_unflagged_images)
        )
        shown_unflagged += int(show and not flagged)
        parts.append(_entry_html(e, show))
    parts.append("</body></html>")
    return write_text("\n".join(parts) + "\n", path)


def qc_entries(flags_by_participant: Iterable[tuple[str, dict[str, bool], str]], store) -> list:
    """QC page entries from ``(participant_id, flags, notes)`` and the store's image paths."""
    return [
        {"participant_id": pid, "flags": flags, "notes": notes, "png": store.path(pid, "qc.png")}
        for pid, flags, notes in flags_by_participant
    ]


__all__ = ["FLAG_COLUMNS", "QC_IMAGE_MODES", "colour_table", "qc_entries", "render_png", "write_qc_html"]
