"""The per-participant task: hash inputs, load, segment or read labels, quantify, QC, write.

:func:`process_participant` never raises for a bad participant: it returns a
:class:`TaskOutcome` whose ``status`` is ``"done"``, ``"skipped"`` (resume: outputs current) or
``"failed"`` with the ``stage`` and a one-line ``reason``. It runs in a Dask worker process; the
segmentation model (``--model``) is imported lazily there, so each worker process builds its
predictor once (``myocomp.segment`` caches it per process) and reuses it for every participant.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from myocomp.errors import LabelError, MyocompError
from myocomp.imaging.qc import QCConfig
from myocomp.pipeline.manifest import Participant
from myocomp.pipeline.store import ResultStore, hash_inputs

STAGES = ("hash", "load", "segment", "labels", "quantify", "qc", "write")


@dataclass(frozen=True)
class BatchParams:
    """Options shared by every participant of a batch (quantification, segmentation, QC)."""

    fat_threshold: float = 0.5
    band_mm: float = 0.0
    groups: tuple[str, ...] = ("back", "psoas")
    model: str | None = None
    device: str = "auto"
    qc: QCConfig = field(default_factory=QCConfig)
    skip_anatomy_check: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Parameters that determine the results (``device`` is an execution detail)."""
        return {
            "fat_threshold": float(self.fat_threshold),
            "band_mm": float(self.band_mm),
            "groups": list(self.groups),
            "model": self.model,
            "qc": self.qc.to_dict(),
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
        return d


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one participant (small; travels back from the worker)."""

    participant_id: str
    status: str
    stage: str = ""
    reason: str = ""
    seconds: float = 0.0

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

        return load_dixon(p.water, p.fat, in_phase=p.in_phase, opposed_phase=p.opposed_phase)
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


def _versions() -> dict[str, str]:
    import dask
    import distributed
    import pydicom

    return {
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "pydicom": pydicom.__version__,
    }


def process_participant(
    p: Participant, out_dir: str | Path, params: BatchParams, run_id: str, resume: bool = False
) -> TaskOutcome:
    """Compute and write one participant's outputs (see :mod:`myocomp.pipeline.store`).

    Failures become a ``"failed"`` outcome naming the stage; nothing is raised.
    """
    start = time.perf_counter()
    store = ResultStore(out_dir)
    pid = p.participant_id
    stage = "hash"
    try:
        files = p.input_files()
        hashes = hash_inputs(files, base=p.dicom_dir)
        parameters = params.for_participant(p)
        if resume and store.is_current(pid, hashes, parameters):
            return TaskOutcome(pid, "skipped", seconds=time.perf_counter() - start)

        stage = "load"
        dixon = load_volume(p)

        if p.labels is not None:
            stage = "labels"
            from myocomp.imaging.labels import load_labels

            labelmap = load_labels(
                p.labels, p.profile, reference=dixon, anatomy_check=not params.skip_anatomy_check
            )
        elif params.model:
            stage = "segment"
            from myocomp.segment import segment_dixon

            labelmap = segment_dixon(dixon, params.model, device=params.device)
        else:
            stage = "segment"
            raise LabelError("no labels in the manifest row and no --model to segment with")

        vertebrae = None
        if p.vertebrae is not None:
            from myocomp.imaging.levels import DEFAULT_VERTEBRA_PROFILE, load_vertebrae

            vertebrae = load_vertebrae(p.vertebrae, p.vertebrae_profile or DEFAULT_VERTEBRA_PROFILE, reference=dixon)

        stage = "quantify"
        from myocomp.imaging.composition import quantify

        result = quantify(
            dixon,
            labelmap,
            bmi=p.bmi,
            fat_threshold=params.fat_threshold,
            band_mm=params.band_mm,
            groups=params.groups,
            participant_id=pid,
            vertebrae=vertebrae,
            height_cm=p.height_cm,
        )
        if p.kind in ("ff_map", "echoes"):
            result.metrics["method"] = "ff_map" if p.kind == "ff_map" else "separated_pdff"

        stage = "qc"
        from myocomp.imaging import qc

        ff = qc.qc_fat_fraction(dixon) if dixon.fat is not None else None
        flags = qc.assess(dixon, labelmap, params.groups, params.qc, ff=ff)
        metrics = qc.add_flag_columns(result.metrics, flags, params.qc)
        png = qc.render_png(dixon, labelmap, ff=ff)

        stage = "write"
        from myocomp.io import atomic_path, write_json, write_table

        folder = store.participant_dir(pid)
        folder.mkdir(parents=True, exist_ok=True)
        store.path(pid, "provenance.json").unlink(missing_ok=True)
        write_table(metrics, store.path(pid, "metrics.parquet"))
        slices = (
            result.slices if result.slices is not None else metrics.iloc[0:0][["participant_id"]]
        )
        write_table(slices, store.path(pid, "slices.parquet"))
        store.path(pid, "levels.parquet").unlink(missing_ok=True)
        if result.levels is not None:
            write_table(result.levels, store.path(pid, "levels.parquet"))
        with atomic_path(store.path(pid, "qc.png")) as tmp:
            tmp.write_bytes(png)
        seconds = time.perf_counter() - start
        provenance = {
            "participant_id": pid,
            "site": p.site,
            "run_id": run_id,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "inputs": {role: [str(f) for f in fs] for role, fs in files.items()}
            if p.kind != "dicom"
            else {"dicom": [str(p.dicom_dir)]},
            "input_sha256": hashes,
            "parameters": parameters,
            "quantify": result.provenance,
            "qc": flags.to_dict(),
            "versions": {**result.provenance.get("versions", {}), **_versions()},
        }
        write_json(provenance, store.path(pid, "provenance.json"))
        return TaskOutcome(pid, "done", seconds=seconds)
    except Exception as exc:  # noqa: BLE001 - one bad participant must not stop the batch
        return TaskOutcome(
            pid, "failed", stage=stage, reason=one_line(exc), seconds=time.perf_counter() - start
        )
