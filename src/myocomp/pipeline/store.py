"""The resumable result store: one folder per participant, merged tables at the top.

Layout of a batch output folder ``DIR``::

    DIR/participants/<id>/metrics.parquet   one row per group and muscle, QC flag columns
    DIR/participants/<id>/slices.parquet    per-slice cross-sectional areas and FF
    DIR/participants/<id>/qc.png            coronal and axial slices with muscle outlines
    DIR/participants/<id>/provenance.json   input SHA-256, parameters, versions, run id (last)
    DIR/metrics.parquet                     all participants, sorted by participant_id, group
    DIR/slices.parquet                      all participants' slice profiles
    DIR/errors.csv                          participant_id, stage, reason (one row per failure)
    DIR/qc.html                             flagged participants first, images inline
    DIR/batch.json                          summary of the last run (counts, time, parameters)

``provenance.json`` is written last, so a participant is complete exactly when it exists and
names the same input hashes and parameters; anything else is recomputed on ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from myocomp.io import write_table

PARTICIPANT_FILES = ("metrics.parquet", "slices.parquet", "qc.png", "provenance.json")
ERROR_COLUMNS = ("participant_id", "stage", "reason")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_inputs(files: dict[str, list[Path]], base: Path | None = None) -> dict[str, str]:
    """One SHA-256 per role; a role with several files hashes their sorted (name, digest) pairs.

    Names are relative to the first file's folder so that moving a whole cohort keeps hashes.
    """
    out: dict[str, str] = {}
    for role, paths in sorted(files.items()):
        if len(paths) == 1:
            out[role] = sha256_file(paths[0])
            continue
        root = Path(paths[0]).parent if base is None else base
        h = hashlib.sha256()
        for p in paths:
            try:
                name = Path(p).relative_to(root).as_posix()
            except ValueError:
                name = Path(p).name
            h.update(f"{name}\0{sha256_file(p)}\n".encode())
        out[role] = h.hexdigest()
    return out


class ResultStore:
    """Paths and bookkeeping of one batch output folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def participants_dir(self) -> Path:
        return self.root / "participants"

    def participant_dir(self, participant_id: str) -> Path:
        return self.participants_dir / participant_id

    def path(self, participant_id: str, name: str) -> Path:
        return self.participant_dir(participant_id) / name

    def read_provenance(self, participant_id: str) -> dict[str, Any] | None:
        """The participant's provenance, or None if absent or unreadable (then it is redone)."""
        p = self.path(participant_id, "provenance.json")
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_current(
        self, participant_id: str, input_hashes: dict[str, str], parameters: dict[str, Any]
    ) -> bool:
        """True if all outputs exist and were made from these inputs with these parameters."""
        prov = self.read_provenance(participant_id)
        if prov is None:
            return False
        if not all(self.path(participant_id, f).is_file() for f in PARTICIPANT_FILES):
            return False
        return prov.get("input_sha256") == input_hashes and prov.get("parameters") == _jsonable(
            parameters
        )

    def merge(self, participant_ids: list[str]) -> pd.DataFrame:
        """Concatenate participants' metrics (and slices) into ``DIR/metrics.parquet``.

        Rows are sorted by participant_id then group (stable), so the table does not depend on
        the order in which tasks finished. Returns the merged metrics.
        """
        ids = sorted(set(participant_ids))
        metrics = [pd.read_parquet(self.path(i, "metrics.parquet")) for i in ids]
        slices = [
            pd.read_parquet(self.path(i, "slices.parquet"))
            for i in ids
            if self.path(i, "slices.parquet").is_file()
        ]
        merged = _sorted(pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame())
        write_table(merged, self.root / "metrics.parquet")
        if slices:
            sl = pd.concat(slices, ignore_index=True)
            keys = [c for c in ("participant_id", "muscle", "slice") if c in sl.columns]
            sl = sl.sort_values(keys, kind="stable").reset_index(drop=True) if keys else sl
            write_table(sl, self.root / "slices.parquet")
        return merged

    def write_errors(self, rows: list[dict[str, str]]) -> Path:
        """Write ``DIR/errors.csv`` (header only when nothing failed), sorted by participant_id."""
        df = pd.DataFrame(rows, columns=list(ERROR_COLUMNS))
        df = df.sort_values("participant_id", kind="stable").reset_index(drop=True)
        return write_table(df, self.root / "errors.csv")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("participant_id", "group") if c in df.columns]
    if not keys:
        return df.reset_index(drop=True)
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def _jsonable(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), for equality checks."""
    return json.loads(json.dumps(obj, sort_keys=True))
