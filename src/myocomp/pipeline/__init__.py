"""Cohort-scale processing: manifest, per-participant task, resumable result store, Dask runner.

Dask is imported only when a batch runs (:func:`myocomp.pipeline.runner.open_client`).
"""

from myocomp.pipeline.lock import OutputLockedError, output_lock
from myocomp.pipeline.manifest import Manifest, ManifestError, Participant, read_manifest
from myocomp.pipeline.params import RunOptions, resolve_batch_params, resolve_run_options
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
    "OutputLockedError",
    "Participant",
    "ResultStore",
    "RunOptions",
    "SlurmConfig",
    "TaskOutcome",
    "hash_inputs",
    "load_slurm_config",
    "open_client",
    "output_lock",
    "parse_slurm_config",
    "process_participant",
    "read_manifest",
    "resolve_batch_params",
    "resolve_run_options",
    "run_batch",
    "sha256_file",
]
