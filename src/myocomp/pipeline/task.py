"""The per-participant task: check inputs, load, segment or read labels, quantify, QC, write.

:func:`process_participant` never raises for a bad participant: it returns a
:class:`TaskOutcome` whose ``status`` is ``"done"``, ``"skipped"`` (resume: outputs current) or
``"failed"`` with the ``stage`` and a one-line ``reason``. It runs in a Dask worker process; the
segmentation model (``--model``) is imported lazily there, so each worker process builds its
predictor once (``myocomp.segment`` caches it per process) and reuses it for every participant.
"""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from myocomp.errors import GeometryError, LabelError, MyocompError
from myocomp.imaging.qc import QCConfig
from myocomp.io import utc_timestamp
from myocomp.pipeline.manifest import Participant
from myocomp.pipeline.store import ResultStore, current_hashes, fingerprint_inputs

STAGES = ("hash", "load", "segment", "labels", "quantify", "qc", "write")
#: Stages whose seconds are summarised in ``batch.json`` (``labels`` counts as ``segment``).
TIMED_STAGES = ("hash", "load", "segment", "quantify", "qc", "write")


@dataclass(frozen=True)
class BatchParams:
    """Options shared by every participant of a batch (quantification, segmentation, QC)."""

    fat_threshold: float = 0.5
    band_mm: float = 0.0
    groups: tuple[str, ...] = ("back", "psoas")
    model: str | None = None
    device: str = "auto"
    qc: QCConfig = field(default_factory=QCConfig)
    qc_images: str = "all"
    record_paths: bool = False
    skip_anatomy_check: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Parameters that determine the results (``device`` is an execution detail)."""
        return {
            "fat_threshold": float(self.fat_threshold),
            "band_mm": float(self.band_mm),
            "groups": list(self.groups),
            "model": self.model,
            "qc": self.qc.to_dict(),
            "qc_images": self.qc_images,
            "skip_anatomy_check": self.skip_anatomy_check,
        }

    def for_participant(self, p: Participant) -> dict[str, Any]:
        """The parameters recorded in (and compared against) a participant's provenance."""
        d = self.to_dict()
        d.update(
            {
                "source_kind": p.kind,
                "profile": p.profile,
                "bmi": p.bmi,
                "labels_from": "file" if p.labels else "model",
                "vertebrae_profile": p.vertebrae_profile if p.vertebrae else None,
                "height_cm": p.height_cm,
            }
        )
        if p.grid_from is not None:  # absent when unset: results made before the column stay current
            d["grid_from"] = p.grid_from
        return d


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one participant (small; travels back from the worker)."""

    participant_id: str
    status: str
    stage: str = ""
    reason: str = ""
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def one_line(exc: BaseException) -> str:
    """A one-line reason: the message of a user error, the type and message of anything else."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MyocompError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_volume(p: Participant):
    """The participant's :class:`~myocomp.imaging.dixon.DixonVolume` from NIfTI, DICOM or stations."""
    if p.kind == "nifti":
        from myocomp.imaging.dixon import load_dixon

        with _grid_from_column():
            return load_dixon(p.water, p.fat, in_phase=p.in_phase, opposed_phase=p.opposed_phase,
                              grid_from=p.grid_from)  # fmt: skip
    if p.kind == "dicom":
        from myocomp.imaging.dicom import read_dicom_dixon

        return read_dicom_dixon(p.dicom_dir)
    if p.kind == "ff_map":
        from myocomp.imaging.echoes import load_ff_map

        return load_ff_map(p.ff_map)
    if p.kind == "echoes":
        from myocomp.imaging.echoes import load_echo_folder, separate_echo_data
        from myocomp.imaging.fatwater import dixon_from_ff

        data = load_echo_folder(p.echoes)
        return dixon_from_ff(separate_echo_data(data).pdff, data.affine, source=str(p.echoes))
    from myocomp.imaging.stitch import stitch_dixon

    return stitch_dixon(p.stations, source=f"{p.participant_id} stations")


@contextmanager
def _grid_from_column():
    """The loaders' ``--grid-from`` (quantify's option) reworded as the manifest column ``grid_from``."""
    try:
        yield
    except GeometryError as exc:
        if "--grid-from" not in str(exc):
            raise
        text = re.sub(r"--grid-from (\w+) or --grid-from (\w+)", r"the manifest column grid_from (\1 or \2)",
                      str(exc))  # fmt: skip
        raise GeometryError(re.sub(r"--grid-from (\w+)", r"grid_from \1", text)) from exc


def _versions() -> dict[str, str]:
    import dask
    import distributed
    import pydicom

    return {
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "pydicom": pydicom.__version__,
    }


def is_unchanged(p: Participant, store: ResultStore, params: BatchParams) -> bool:
    """Resume test that reads no input byte: outputs intact, same parameters and every input's
    fingerprint (size, mtime, inode) as recorded. False means "look closer" (hash), not "changed".
    """
    prov = store.read_provenance(p.participant_id)
    if prov is None or not prov.get("input_fingerprint"):
        return False
    try:
        files = p.input_files()
        fingerprints = fingerprint_inputs(files, base=p.dicom_dir)
    except OSError:
        return False
    if prov["input_fingerprint"] != fingerprints:
        return False
    hashes = prov.get("input_sha256") or {}
    return store.is_current(p.participant_id, hashes, params.for_participant(p), prov)


class _Clock:
    """Seconds per stage of one participant (``labels`` is booked as ``segment``)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.stage = "hash"
        self._t = time.perf_counter()

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        key = "segment" if self.stage == "labels" else self.stage
        self.stages[key] = self.stages.get(key, 0.0) + now - self._t
        self.stage, self._t = stage, now


def _inputs_record(p: Participant, files: dict[str, list[Path]], record_paths: bool) -> dict:
    """Input paths for the provenance; a DICOM folder only by a hash of its path (its name may
    identify the patient) unless ``record_paths``."""
    if p.kind != "dicom":
        return {role: [str(f) for f in fs] for role, fs in files.items()}
    record = {role: [str(f) for f in fs] for role, fs in files.items() if role != "dicom"}
    folder = str(p.dicom_dir)
    record["dicom"] = {
        "participant_id": p.participant_id,
        "folder_sha256": hashlib.sha256(folder.encode()).hexdigest(),
        "files": len(files.get("dicom", [])),
    }
    if record_paths:
        record["dicom"]["folder"] = folder
    return record


def _still_current(store, pid, hashes, parameters, prov, fingerprints) -> bool:
    """True if the outputs are current; then a changed fingerprint of unchanged bytes (a touched
    or copied file) is recorded, so that the next resume need not hash again."""
    if not store.is_current(pid, hashes, parameters, prov):
        return False
    if prov.get("input_fingerprint") != fingerprints:
        from myocomp.io import write_json

        write_json({**prov, "input_fingerprint": fingerprints}, store.path(pid, "provenance.json"))
    return True


def _results_record(result, flags) -> dict[str, Any]:
    return {
        "quantify": result.provenance,
        "qc": flags.to_dict(),
        "versions": {**result.provenance.get("versions", {}), **_versions()},
    }


def _label_map(p: Participant, dixon, params: BatchParams, clock: _Clock):
    if p.labels is not None:
        clock.enter("labels")
        from myocomp.imaging.labelmap import load_labels

        with _grid_from_column():  # under grid_from the label map takes the grid's header too
            return load_labels(
                p.labels, p.profile, reference=dixon, anatomy_check=not params.skip_anatomy_check
            )
    clock.enter("segment")
    if not params.model:
        raise LabelError("no labels in the manifest row and no --model to segment with")
    from myocomp.segment import segment_dixon

    return segment_dixon(dixon, params.model, device=params.device)


def _qc(dixon, labelmap, result, params: BatchParams):
    """Metrics with QC columns, the flags, and the PNG bytes (None if ``qc_images`` says so)."""
    from myocomp.imaging import qc

    flags = qc.assess(dixon, labelmap, params.groups, params.qc, ff=result.ff, box=result.box)
    metrics = qc.add_flag_columns(result.metrics, flags, params.qc)
    flagged = bool(metrics[[c for c in qc.FLAG_COLUMNS if c in metrics]].to_numpy().any())
    png = None
    if params.qc_images == "all" or (params.qc_images == "flagged" and flagged):
        from myocomp.pipeline.qc_page import render_png

        png = render_png(dixon, labelmap, noise_floor=result.provenance["parameters"]["noise_floor"])
    return metrics, flags, png


def _write_outputs(store: ResultStore, pid: str, metrics, slices, png: bytes | None,
                   levels=None) -> dict:  # fmt: skip
    """Write the participant's tables and image; their sizes (bytes) by name. On failure,
    removes what it wrote (the participant is then simply absent)."""
    from myocomp.io import write_bytes, write_table

    folder = store.participant_dir(pid)
    folder.mkdir(parents=True, exist_ok=True)
    store.path(pid, "provenance.json").unlink(missing_ok=True)
    written: list[Path] = []
    try:
        written.append(write_table(metrics, store.path(pid, "metrics.parquet")))
        written.append(write_table(slices, store.path(pid, "slices.parquet")))
        store.path(pid, "levels.parquet").unlink(missing_ok=True)
        if levels is not None:
            written.append(write_table(levels, store.path(pid, "levels.parquet")))
        store.path(pid, "qc.png").unlink(missing_ok=True)
        if png is not None:
            written.append(write_bytes(png, store.path(pid, "qc.png")))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return {path.name: path.stat().st_size for path in written}


def _load_inputs(p: Participant, params: BatchParams, clock: _Clock):
    """(Dixon volume, muscle label map, vertebra label map or None) of one participant."""
    dixon = load_volume(p)
    labelmap = _label_map(p, dixon, params, clock)
    vertebrae = None
    if p.vertebrae is not None:
        from myocomp.imaging.levels import DEFAULT_VERTEBRA_PROFILE, load_vertebrae

        profile = p.vertebrae_profile or DEFAULT_VERTEBRA_PROFILE
        with _grid_from_column():  # under grid_from the vertebra map takes the grid's header too
            vertebrae = load_vertebrae(p.vertebrae, profile, reference=dixon)
    return dixon, labelmap, vertebrae


def _quantify(p: Participant, dixon, labelmap, vertebrae, params: BatchParams):
    """:func:`~myocomp.imaging.composition.quantify` with the batch parameters; the ``method``
    column names a fat-fraction map or separated PDFF where the row gave one."""
    from myocomp.imaging.composition import quantify

    result = quantify(
        dixon,
        labelmap,
        bmi=p.bmi,
        fat_threshold=params.fat_threshold,
        band_mm=params.band_mm,
        groups=params.groups,
        participant_id=p.participant_id,
        vertebrae=vertebrae,
        height_cm=p.height_cm,
    )
    if p.kind in ("ff_map", "echoes"):
        result.metrics["method"] = "ff_map" if p.kind == "ff_map" else "separated_pdff"
    return result


def process_participant(
    p: Participant,
    out_dir: str | Path,
    params: BatchParams,
    run_id: str,
    resume: bool = False,
    verify_hashes: bool = False,
) -> TaskOutcome:
    """Compute and write one participant's outputs (see :mod:`myocomp.pipeline.store`).

    With ``resume``, inputs whose fingerprint matches the provenance are not read again (unless
    ``verify_hashes``). Failures become a ``"failed"`` outcome naming the stage; nothing is raised.
    """
    start = time.perf_counter()
    store = ResultStore(out_dir)
    pid = p.participant_id
    clock = _Clock()
    try:
        files = p.input_files()
        fingerprints = fingerprint_inputs(files, base=p.dicom_dir)
        prov = store.read_provenance(pid) if resume else None
        hashes, _ = current_hashes(
            files, fingerprints, prov, base=p.dicom_dir, verify=verify_hashes or not resume
        )
        parameters = params.for_participant(p)
        if resume and _still_current(store, pid, hashes, parameters, prov, fingerprints):
            return TaskOutcome(pid, "skipped", seconds=time.perf_counter() - start)

        clock.enter("load")
        dixon, labelmap, vertebrae = _load_inputs(p, params, clock)
        clock.enter("quantify")
        result = _quantify(p, dixon, labelmap, vertebrae, params)
        clock.enter("qc")
        metrics, flags, png = _qc(dixon, labelmap, result, params)

        clock.enter("write")
        slices = (
            result.slices if result.slices is not None else metrics.iloc[0:0][["participant_id"]]
        )
        outputs = _write_outputs(store, pid, metrics, slices, png, result.levels)
        provenance = {
            "participant_id": pid,
            "site": p.site,
            "run_id": run_id,
            "created_utc": utc_timestamp(),
            "seconds": round(time.perf_counter() - start, 3),
            "inputs": _inputs_record(p, files, params.record_paths),
            "input_fingerprint": fingerprints,
            "input_sha256": hashes,
            "parameters": parameters,
            "outputs": outputs,
            **_results_record(result, flags),
        }
        from myocomp.io import write_json

        write_json(provenance, store.path(pid, "provenance.json"))
        clock.enter("done")
        return TaskOutcome(pid, "done", seconds=time.perf_counter() - start, stages=clock.stages)
    except Exception as exc:  # noqa: BLE001 - one bad participant must not stop the batch
        return TaskOutcome(
            pid,
            "failed",
            stage=clock.stage,
            reason=one_line(exc),
            seconds=time.perf_counter() - start,
        )


def process_chunk(
    participants: list[Participant],
    out_dir: str,
    params: BatchParams,
    run_id: str,
    resume: bool = False,
    verify_hashes: bool = False,
) -> list[TaskOutcome]:
    """:func:`process_participant` for several participants in one task (tiny participants
    cost less per task than Dask's per-task overhead)."""
    return [
        process_participant(p, out_dir, params, run_id, resume, verify_hashes)
        for p in participants
    ]
