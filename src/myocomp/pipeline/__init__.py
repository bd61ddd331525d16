"""Cohort-scale processing: manifest, per-participant task, resumable result store, Dask runner.

Dask is imported only when a batch runs (:func:`myocomp.pipeline.runner.open_client`).
"""

from myocomp.pipeline.manifest import Manifest, ManifestError, Participant, read_manifest
from myocomp.pipeline.runner import (
    BatchSummary,
    SlurmConfig,
    load_slurm_config,
    open_client,
    parse_slurm_config,
    run_batch,
)
from myocomp.pipeline.store import ResultStore, hash_inputs, sha256_file
from myocomp.pipeline.task import BatchParams, TaskOutcome, process_participant

__all__ = [
    "BatchParams",
    "BatchSummary",
    "Manifest",
    "ManifestError",
    "Participant",
    "ResultStore",
    "SlurmConfig",
    "TaskOutcome",
    "hash_inputs",
    "load_slurm_config",
    "open_client",
    "parse_slurm_config",
    "process_participant",
    "read_manifest",
    "run_batch",
    "sha256_file",
]
