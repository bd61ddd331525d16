"""Reading and writing tables and JSON at the edges, atomically (temp file in the same folder + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp.errors import InputFileError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically. NaN is written as null."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=True, default=_json_default)
    return write_text(text + "\n", path)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a NIfTI image atomically (gzip-compressed when ``path`` ends in .gz)."""
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=float))
    img.set_data_dtype(np.asarray(data).dtype)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic_path(path) as tmp:
        named = tmp.with_name(tmp.name + suffix)
        try:
            nib.save(img, str(named))
            named.replace(tmp)
        finally:
            named.unlink(missing_ok=True)
    return path


def write_bytes(payload: bytes, path: str | Path) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix (png, svg, pdf).

    PNGs carry no software/time metadata, so the same figure gives the same bytes.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                    metadata={"Software": None} if fmt == "png" else None)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` atomically; the format follows the suffix (.csv, .tsv, .parquet, .json)."""
    path = Path(path)
    writers: dict[str, Callable[[Path], None]] = {
        ".csv": lambda p: df.to_csv(p, index=False),
        ".tsv": lambda p: df.to_csv(p, index=False, sep="\t"),
        ".parquet": lambda p: df.to_parquet(p, index=False),
        ".json": lambda p: df.to_json(p, orient="records", indent=2),
    }
    suffix = path.suffix.lower()
    if suffix not in writers:
        raise InputFileError(
            f"unsupported table format {suffix or '(none)'}; use one of {', '.join(TABLE_SUFFIXES)}",
            source=path,
        )
    with atomic_path(path) as tmp:
        writers[suffix](tmp)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table; raise :class:`InputFileError` naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError("file not found", source=path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".tsv", ".tab"):
            return pd.read_csv(path, sep="\t")
        if suffix == ".csv":
            return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad input file
        raise InputFileError(f"cannot read table ({type(exc).__name__}: {exc})", source=path) from exc
    raise InputFileError(f"unsupported table format {suffix or '(none)'}; use .csv, .tsv or .parquet", source=path)
