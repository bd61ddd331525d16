"""Dask execution of a batch: a local cluster, an existing scheduler, or SLURM via dask-jobqueue.

One task per participant (:func:`myocomp.pipeline.task.process_participant`); results are
collected as they finish, then merged in a fixed order, so the outputs do not depend on the
scheduler, the number of workers or the order of completion.
"""

from __future__ import annotations

import logging
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from myocomp.errors import ConfigError
from myocomp.pipeline.manifest import Manifest
from myocomp.pipeline.store import ResultStore
from myocomp.pipeline.task import BatchParams, TaskOutcome, process_participant

#: Keys of a ``[slurm]`` table passed on to :class:`dask_jobqueue.SLURMCluster`.
SLURM_CLUSTER_KEYS = frozenset(
    {
        "queue", "account", "walltime", "job_cpu", "job_mem", "cores", "memory", "processes",
        "interface", "death_timeout", "local_directory", "job_extra_directives",
        "job_script_prologue", "job_directives_skip", "worker_extra_args", "log_directory",
        "shebang", "python", "job_name", "scheduler_options", "nanny", "protocol",
    }
)  # fmt: skip
#: Keys of a ``[slurm]`` table that say how many jobs to run (fixed or adaptive).
SLURM_SCALE_KEYS = frozenset({"jobs", "minimum_jobs", "maximum_jobs"})


@dataclass(frozen=True)
class SlurmConfig:
    """A validated ``[slurm]`` table: SLURMCluster keyword arguments and the scaling rule."""

    cluster_kwargs: dict[str, Any]
    jobs: int | None = 1
    minimum_jobs: int | None = None
    maximum_jobs: int | None = None

    def make_cluster(self):
        """Create the :class:`dask_jobqueue.SLURMCluster` (submits nothing until scaled)."""
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(**self.cluster_kwargs)

    def scale(self, cluster) -> None:
        """Start the configured number of jobs (fixed) or let the cluster adapt."""
        if self.maximum_jobs is not None:
            cluster.adapt(minimum_jobs=self.minimum_jobs or 0, maximum_jobs=self.maximum_jobs)
        else:
            cluster.scale(jobs=self.jobs or 1)


def parse_slurm_config(table: dict[str, Any], source: str | Path | None = None) -> SlurmConfig:
    """Validate a ``[slurm]`` table (see the README) into a :class:`SlurmConfig`.

    ``cores`` and ``memory`` are required; ``processes`` defaults to ``cores`` so that every
    worker process runs one participant at a time (one thread each).
    """
    unknown = sorted(set(table) - SLURM_CLUSTER_KEYS - SLURM_SCALE_KEYS)
    if unknown:
        raise ConfigError(f"unknown [slurm] keys: {', '.join(unknown)}", source=source)
    missing = [k for k in ("cores", "memory") if k not in table]
    if missing:
        raise ConfigError(f"[slurm] needs {' and '.join(missing)}", source=source)
    kwargs = {k: v for k, v in table.items() if k in SLURM_CLUSTER_KEYS}
    for key in ("cores", "processes"):
        if key in kwargs and (not isinstance(kwargs[key], int) or kwargs[key] < 1):
            raise ConfigError(f"[slurm] {key} must be a positive integer", source=source)
    kwargs.setdefault("processes", kwargs["cores"])
    for key in (
        "job_extra_directives",
        "job_script_prologue",
        "job_directives_skip",
        "worker_extra_args",
    ):
        if key in kwargs and not (
            isinstance(kwargs[key], list) and all(isinstance(v, str) for v in kwargs[key])
        ):
            raise ConfigError(f"[slurm] {key} must be a list of strings", source=source)
    scale = {k: table[k] for k in SLURM_SCALE_KEYS if k in table}
    for key, value in scale.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"[slurm] {key} must be a non-negative integer", source=source)
    if "jobs" in scale and "maximum_jobs" in scale:
        raise ConfigError(
            "[slurm] give either jobs (fixed) or minimum_jobs/maximum_jobs (adaptive)",
            source=source,
        )
    if "minimum_jobs" in scale and "maximum_jobs" not in scale:
        raise ConfigError("[slurm] minimum_jobs needs maximum_jobs", source=source)
    return SlurmConfig(
        cluster_kwargs=kwargs,
        jobs=scale.get("jobs", None if "maximum_jobs" in scale else 1),
        minimum_jobs=scale.get("minimum_jobs"),
        maximum_jobs=scale.get("maximum_jobs"),
    )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; :class:`ConfigError` naming the file on failure."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("config file not found", source=path) from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read TOML ({exc})", source=path) from exc


def load_slurm_config(path: str | Path) -> SlurmConfig:
    """Read the ``[slurm]`` table of a TOML file."""
    data = read_toml(path)
    if "slurm" not in data or not isinstance(data["slurm"], dict):
        raise ConfigError("no [slurm] table", source=path)
    return parse_slurm_config(data["slurm"], source=path)


@contextmanager
def open_client(
    *, workers: int | None = None, scheduler: str | None = None, slurm: SlurmConfig | None = None
) -> Iterator[Any]:
    """A :class:`distributed.Client` for a local cluster (``workers`` processes, one thread each),
    an existing ``scheduler`` address, or a SLURM cluster; everything it started is closed on exit.
    """
    from distributed import Client, LocalCluster

    if sum(x is not None for x in (workers, scheduler, slurm)) > 1:
        raise ConfigError("give only one of --workers, --scheduler, --slurm")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot connect to the Dask scheduler at {scheduler} ({exc})"
            ) from exc
        try:
            try:
                client.wait_for_workers(1, timeout=120)
            except TimeoutError as exc:
                raise ConfigError(f"the Dask scheduler at {scheduler} has no workers") from exc
            yield client
        finally:
            client.close()
        return
    if slurm is not None:
        cluster = slurm.make_cluster()
        try:
            slurm.scale(cluster)
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    n = 1 if workers is None else int(workers)
    if n < 1:
        raise ConfigError("--workers must be at least 1")
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


@dataclass
class BatchSummary:
    """Counts and timing of one batch run; ``errors`` are the rows of ``errors.csv``."""

    run_id: str
    out_dir: Path
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    def summary(self) -> str:
        """One line: ``20 participants: 17 done, 0 skipped, 3 failed in 12.3 s``."""
        return (
            f"{self.total} participants: {self.done} done, {self.skipped} skipped, "
            f"{self.failed} failed in {self.seconds:.1f} s"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


def run_batch(
    manifest: Manifest,
    out_dir: str | Path,
    params: BatchParams,
    client: Any,
    *,
    resume: bool = False,
    on_result: Callable[[TaskOutcome, BatchSummary], None] | None = None,
) -> BatchSummary:
    """Run every participant of ``manifest`` on ``client`` and write the merged outputs.

    Writes ``participants/<id>/*`` (in the tasks), then ``metrics.parquet``, ``slices.parquet``,
    ``errors.csv``, ``qc.html`` and ``batch.json`` in ``out_dir``. ``on_result`` is called after
    each participant (for progress display).
    """
    from distributed import as_completed

    from myocomp.io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out)
    run_id = uuid.uuid4().hex
    summary = BatchSummary(run_id=run_id, out_dir=out, total=len(manifest))
    start = time.perf_counter()
    futures = {}
    for p in manifest.participants:
        fut = client.submit(
            process_participant,
            p,
            str(out.resolve()),
            params,
            run_id,
            resume,
            key=f"myocomp-{p.participant_id}-{run_id[:8]}",
            pure=False,
        )
        futures[fut] = p.participant_id
    completed: list[str] = []
    for fut in as_completed(list(futures)):
        pid = futures.pop(fut)
        if fut.status == "error":
            exc = fut.exception()
            outcome = TaskOutcome(
                pid, "failed", stage="worker", reason=f"{type(exc).__name__}: {exc}".splitlines()[0]
            )
        else:
            outcome = fut.result()
        fut.release()
        if outcome.status == "failed":
            summary.failed += 1
            summary.errors.append(
                {"participant_id": pid, "stage": outcome.stage, "reason": outcome.reason}
            )
        else:
            summary.done += outcome.status == "done"
            summary.skipped += outcome.status == "skipped"
            completed.append(pid)
        summary.seconds = time.perf_counter() - start
        if on_result is not None:
            on_result(outcome, summary)

    store.write_errors(summary.errors)
    merged = store.merge(completed)
    write_qc_page(store, merged, summary.errors)
    summary.seconds = time.perf_counter() - start
    write_json(
        {**summary.to_dict(), "manifest": str(manifest.path), "parameters": params.to_dict()},
        out / "batch.json",
    )
    return summary


def write_qc_page(store: ResultStore, merged: Any, errors: list[dict[str, str]]) -> Path:
    """``DIR/qc.html`` from the merged metrics' QC columns and the participants' images."""
    from myocomp.imaging.qc import FLAG_COLUMNS, write_qc_html

    entries = []
    if len(merged):
        for pid, rows in merged.groupby("participant_id", sort=True):
            flags = {c: bool(rows[c].any()) for c in FLAG_COLUMNS if c in rows.columns}
            notes = str(rows["qc_notes"].iloc[0]) if "qc_notes" in rows.columns else ""
            entries.append(
                {
                    "participant_id": str(pid),
                    "flags": flags,
                    "notes": notes,
                    "png": store.path(str(pid), "qc.png"),
                }
            )
    return write_qc_html(store.root / "qc.html", entries, failed=errors)
