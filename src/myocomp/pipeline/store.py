"""The resumable result store: one folder per participant, merged tables at the top.

Layout of a batch output folder ``DIR``::

    DIR/participants/<id>/metrics.parquet   one row per group and muscle, QC flag columns
    DIR/participants/<id>/slices.parquet    per-slice cross-sectional areas and FF
    DIR/participants/<id>/qc.png            coronal and axial slices with muscle outlines
                                            (per ``--qc-images``: all, flagged only, none)
    DIR/participants/<id>/provenance.json   input fingerprints + SHA-256, parameters, versions,
                                            run id, output sizes (written last)
    DIR/metrics.parquet                     all participants, sorted by participant_id, group
    DIR/slices.parquet                      all participants' slice profiles
    DIR/errors.csv                          participant_id, stage, reason (one row per failure)
    DIR/qc.html                             flagged participants first, images inline
    DIR/batch.json                          summary of the last run (counts, time, stage timing)

``provenance.json`` is written last, so a participant is complete exactly when it exists, its
outputs have the sizes it records (a truncated file is redone), and it names the same inputs and
parameters. Inputs are compared by a cheap fingerprint first (size, mtime in ns and inode of every
file); only inputs whose fingerprint changed are hashed again (:func:`current_hashes`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from myocomp.io import atomic_path, write_table

PARTICIPANT_FILES = ("metrics.parquet", "slices.parquet", "qc.png", "provenance.json")
ERROR_COLUMNS = ("participant_id", "stage", "reason")
#: The tables and page merged from every participant by the driver.
MERGED_FILES = ("metrics.parquet", "slices.parquet", "qc.html")
#: Participants read per row group of the merged tables (bounds the driver's memory).
MERGE_BATCH = 256


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _names(paths: list[Path], base: Path | None) -> list[str]:
    root = Path(paths[0]).parent if base is None else base
    out = []
    for p in paths:
        try:
            out.append(Path(p).relative_to(root).as_posix())
        except ValueError:
            out.append(Path(p).name)
    return out


def hash_role(paths: list[Path], base: Path | None = None) -> str:
    """SHA-256 of one role: the file's digest, or of several files' sorted (name, digest) pairs.

    Names are relative to the first file's folder (or ``base``) so that moving a cohort keeps
    the hashes.
    """
    if len(paths) == 1:
        return sha256_file(paths[0])
    h = hashlib.sha256()
    for name, p in zip(_names(paths, base), paths, strict=True):
        h.update(f"{name}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def hash_inputs(files: dict[str, list[Path]], base: Path | None = None) -> dict[str, str]:
    """One SHA-256 per role (see :func:`hash_role`)."""
    return {role: hash_role(paths, base) for role, paths in sorted(files.items())}


def fingerprint_inputs(
    files: dict[str, list[Path]], base: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Per role: ``stat`` = [size in bytes, mtime in ns, inode] of each file, and the SHA-256
    of the files' relative names (``names``). Reads no file content (one ``stat`` per file)."""
    out: dict[str, dict[str, Any]] = {}
    for role, paths in sorted(files.items()):
        stats = []
        for p in paths:
            st = os.stat(p)
            stats.append([st.st_size, st.st_mtime_ns, st.st_ino])
        names = "\n".join(_names(paths, base)) if paths else ""
        out[role] = {"stat": stats, "names": hashlib.sha256(names.encode()).hexdigest()}
    return out


def current_hashes(
    files: dict[str, list[Path]],
    fingerprints: dict[str, dict[str, Any]],
    previous: dict[str, Any] | None,
    *,
    base: Path | None = None,
    verify: bool = False,
) -> tuple[dict[str, str], list[str]]:
    """The inputs' SHA-256 per role and the roles that were hashed.

    A role whose fingerprint equals the one in ``previous`` (a provenance) keeps its recorded
    hash without reading the files; every other role, and every role with ``verify``, is hashed.
    """
    old_fp = (previous or {}).get("input_fingerprint") or {}
    old_hash = (previous or {}).get("input_sha256") or {}
    hashes: dict[str, str] = {}
    hashed: list[str] = []
    for role, paths in sorted(files.items()):
        if not verify and role in old_hash and old_fp.get(role) == fingerprints[role]:
            hashes[role] = old_hash[role]
        else:
            hashes[role] = hash_role(paths, base)
            hashed.append(role)
    return hashes, hashed


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

    def outputs_intact(self, participant_id: str, prov: dict[str, Any]) -> bool:
        """True if every output the provenance lists exists with the size it records."""
        sizes = prov.get("outputs")
        if not isinstance(sizes, dict) or "metrics.parquet" not in sizes:
            return False
        for name, size in sizes.items():
            try:
                if self.path(participant_id, name).stat().st_size != size:
                    return False
            except OSError:
                return False
        return True

    def is_current(
        self,
        participant_id: str,
        input_hashes: dict[str, str],
        parameters: dict[str, Any],
        prov: dict[str, Any] | None = None,
    ) -> bool:
        """True if all outputs are intact and were made from these inputs with these parameters."""
        prov = self.read_provenance(participant_id) if prov is None else prov
        if prov is None or not self.outputs_intact(participant_id, prov):
            return False
        return prov.get("input_sha256") == input_hashes and prov.get("parameters") == _jsonable(
            parameters
        )

    def merge_key(self, participant_ids: list[str], errors: list[dict[str, str]]) -> str:
        """SHA-256 of what the merged outputs are made of: each participant's metrics, slices and
        QC image by (name, size, mtime in ns), and the failures. Equal keys mean that merging
        again would write the same ``metrics.parquet``, ``slices.parquet`` and ``qc.html``."""
        h = hashlib.sha256()
        for pid in sorted(set(participant_ids)):
            for name in ("metrics.parquet", "slices.parquet", "qc.png"):
                try:
                    st = os.stat(self.path(pid, name))
                    h.update(f"{pid}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{pid}/{name}\0-\n".encode())
        h.update(json.dumps(sorted(errors, key=lambda e: e["participant_id"]), sort_keys=True).encode())
        return h.hexdigest()

    def merged_sizes(self) -> dict[str, int] | None:
        """Sizes (bytes) of the merged outputs that exist (``slices.parquet`` may not), or None
        without ``metrics.parquet`` or ``qc.html``."""
        sizes = {}
        for name in MERGED_FILES:
            try:
                sizes[name] = (self.root / name).stat().st_size
            except OSError:
                if name != "slices.parquet":
                    return None
        return sizes

    def write_errors(self, rows: list[dict[str, str]]) -> Path:
        """Write ``DIR/errors.csv`` (header only when nothing failed), sorted by participant_id."""
        df = pd.DataFrame(rows, columns=list(ERROR_COLUMNS))
        df = df.sort_values("participant_id", kind="stable").reset_index(drop=True)
        return write_table(df, self.root / "errors.csv")

    def merge(self, participant_ids: list[str]) -> list[tuple[str, dict[str, bool], str]]:
        """Stream participants' metrics and slices into ``DIR/metrics.parquet``/``slices.parquet``.

        Participants are read :data:`MERGE_BATCH` at a time and written as row groups, so memory
        does not grow with the cohort. Rows are sorted by participant_id, then group (metrics)
        or muscle and slice (slices), stably, so the tables do not depend on the order in which
        tasks finished. Returns ``(participant_id, flags, notes)`` per participant for the QC page.
        """
        import pyarrow.compute as pc

        from myocomp.imaging.qc import FLAG_COLUMNS

        ids = sorted(set(participant_ids))
        qc: list[tuple[str, dict[str, bool], str]] = []

        def metrics_tables():
            for i in ids:
                t = _read_sorted(self.path(i, "metrics.parquet"), ("group",))
                names = t.column_names
                flags = {c: bool(pc.any(t[c]).as_py()) for c in FLAG_COLUMNS if c in names}
                notes = t["qc_notes"][0].as_py() if "qc_notes" in names and len(t) else ""
                qc.append((i, flags, str(notes or "")))
                yield t

        def slice_tables():
            for i in ids:
                if self.path(i, "slices.parquet").is_file():
                    yield _read_sorted(self.path(i, "slices.parquet"), ("muscle", "slice"))

        stream_parquet(metrics_tables(), self.root / "metrics.parquet", always=True)
        if stream_parquet(slice_tables(), self.root / "slices.parquet") is None:
            (self.root / "slices.parquet").unlink(missing_ok=True)  # no stale table of a past run
        return qc


def _read_sorted(path: Path, keys: tuple[str, ...]):
    """A participant's table (Arrow) sorted stably by the ``keys`` it has, without metadata."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.ParquetFile(path).read(use_threads=False).replace_schema_metadata(None)
    present = [(k, "ascending") for k in keys if k in t.column_names]
    return t.take(pc.sort_indices(t, sort_keys=present)) if present and len(t) else t


def stream_parquet(frames, path: Path, *, always: bool = False, batch: int | None = None) -> Path | None:
    """Write Arrow tables to one Parquet file, ``batch`` tables (default :data:`MERGE_BATCH`)
    per row group, atomically.

    Empty tables are dropped; a column that is all-null in some tables takes the type it has in
    the others. Nothing is written when there are no rows, unless ``always`` (then an empty
    table with no columns).
    """
    try:
        with atomic_path(path) as tmp:
            _write_batches(frames, tmp, batch or MERGE_BATCH, always)
    except _NothingToWrite:
        return None
    return path


def _write_batches(frames, tmp: Path, batch: int, always: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in _batches(frames, batch):
            table = pa.concat_tables(chunk, promote_options="permissive")
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            elif table.schema != writer.schema:
                table = _conform(table, writer)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        if not always:
            raise _NothingToWrite
        pd.DataFrame().to_parquet(tmp, index=False)


class _NothingToWrite(Exception):
    pass


def _conform(table, writer):
    """``table`` cast to the writer's schema (a null-typed column in either side is promoted)."""
    import pyarrow as pa

    if set(table.schema.names) != set(writer.schema.names):
        raise ValueError(
            f"participants' tables have different columns: {sorted(table.schema.names)} vs "
            f"{sorted(writer.schema.names)}"
        )
    table = table.select(writer.schema.names)
    fields = []
    for f in writer.schema:
        t = table.schema.field(f.name).type
        fields.append(f if not pa.types.is_null(f.type) or pa.types.is_null(t) else f.with_type(t))
    target = pa.schema(fields)
    if target != writer.schema:
        raise ValueError(f"column types changed between participants ({target} vs {writer.schema})")
    return table.cast(target)


def _batches(frames: Iterator, n: int) -> Iterator[list]:
    chunk: list = []
    for t in frames:
        if len(t):
            chunk.append(t)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _jsonable(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), for equality checks."""
    return json.loads(json.dumps(obj, sort_keys=True))
