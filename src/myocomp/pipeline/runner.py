"""Dask execution of a batch: a local cluster, an existing scheduler, or SLURM via dask-jobqueue.

Participants go to the workers in small chunks (:func:`myocomp.pipeline.task.process_chunk`),
submitted in a bounded window so that a cohort of 100,000 never means 100,000 futures at once;
on ``--resume`` the driver first skips participants whose outputs and input fingerprints are
unchanged (no input byte read). Results are collected as they finish, then merged in a fixed
order, so the outputs do not depend on the scheduler, the number of workers or the order of
completion.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from myocomp.errors import ConfigError, InputFileError
from myocomp.pipeline.manifest import Manifest
from myocomp.pipeline.store import ResultStore
from myocomp.pipeline.task import (
    TIMED_STAGES,
    BatchParams,
    TaskOutcome,
    is_unchanged,
    process_chunk,
)

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


#: Dask settings of myocomp's local workers. Dask's statistical profiler samples every worker's
#: stack every 10 ms, and its MALLOC_TRIM_THRESHOLD_ turns off glibc's adaptive mmap threshold
#: (every array is then a fresh mmap with its page faults): together they cost about a third of
#: the time of a small participant. A MALLOC_TRIM_THRESHOLD_ set in the environment still wins.
WORKER_DASK_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
#: The part of it a SLURM job script can set (Dask lower-cases the keys of ``DASK_*`` variables,
#: so the nanny's upper-case MALLOC_TRIM_THRESHOLD_ entry cannot be removed that way).
SLURM_WORKER_ENVIRONMENT = ("export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False",)


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
    kwargs["job_script_prologue"] = [*SLURM_WORKER_ENVIRONMENT, *kwargs.get("job_script_prologue", [])]
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


#: Seconds to wait for a Dask scheduler to answer (``--scheduler-timeout``).
SCHEDULER_TIMEOUT_S = 15.0


def check_scheduler(address: str, timeout: float = SCHEDULER_TIMEOUT_S) -> None:
    """Connect to a Dask scheduler and wait for its reply to one request, within ``timeout``
    seconds in all; :class:`ConfigError` if it does not answer (a listener that accepts TCP and
    never speaks, a wrong port, no route)."""
    from distributed.comm import connect

    async def probe() -> None:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            await comm.read()
        finally:
            comm.abort()

    async def bounded() -> None:
        await asyncio.wait_for(probe(), timeout)

    from concurrent.futures import ThreadPoolExecutor

    try:  # in a thread of its own: works whether or not the caller runs an event loop
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, bounded()).result()
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise ConfigError(
            f"cannot connect to the Dask scheduler at {address} within {timeout:g} s ({reason})"
        ) from exc


@contextmanager
def open_client(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    slurm: SlurmConfig | None = None,
    scheduler_timeout: float = SCHEDULER_TIMEOUT_S,
) -> Iterator[Any]:
    """A :class:`distributed.Client` for a local cluster (``workers`` processes, one thread each),
    an existing ``scheduler`` address, or a SLURM cluster; everything it started is closed on exit.
    """
    from distributed import Client, LocalCluster

    if sum(x is not None for x in (workers, scheduler, slurm)) > 1:
        raise ConfigError("give only one of --workers, --scheduler, --slurm")
    if scheduler is not None:
        check_scheduler(scheduler, scheduler_timeout)
        try:
            client = Client(scheduler, timeout=f"{scheduler_timeout}s")
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
    import dask

    with dask.config.set(WORKER_DASK_CONFIG):
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


def dashboard_link(client: Any) -> str | None:
    """The Dask dashboard's address, or None when the scheduler serves none."""
    try:
        info = client.scheduler_info()
        if "dashboard" not in info.get("services", {}):
            return None
        return str(client.dashboard_link)
    except Exception:  # noqa: BLE001 - the dashboard is optional
        return None


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
    stage_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    dashboard: str | None = None

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

    def count(self, outcome: TaskOutcome) -> None:
        """Add one participant's outcome."""
        if outcome.status == "failed":
            self.failed += 1
            self.errors.append(
                {
                    "participant_id": outcome.participant_id,
                    "stage": outcome.stage,
                    "reason": outcome.reason,
                }
            )
        else:
            self.done += outcome.status == "done"
            self.skipped += outcome.status == "skipped"


class StageTimes:
    """Seconds per stage of the participants computed in this run, summarised as median and
    95th percentile (``batch.json`` ``stage_seconds``). Stores 4 bytes per participant and stage."""

    def __init__(self) -> None:
        from array import array

        self._values = {s: array("f") for s in TIMED_STAGES}

    def add(self, stages: dict[str, float]) -> None:
        for stage, value in stages.items():
            if stage in self._values:
                self._values[stage].append(value)

    def summary(self) -> dict[str, dict[str, float]]:
        import numpy as np

        out = {}
        for stage, values in self._values.items():
            if len(values):
                v = np.frombuffer(values, dtype=np.float32).astype(float)
                out[stage] = {
                    "n": int(v.size),
                    "median": round(float(np.median(v)), 6),
                    "p95": round(float(np.percentile(v, 95)), 6),
                }
        return out


def chunk_size(n: int, workers: int) -> int:
    """Participants per task: 1 for small batches, up to 16 when there are many per worker."""
    return max(1, min(16, n // (max(1, workers) * 8)))


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _n_workers(client: Any) -> int:
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # noqa: BLE001 - only a sizing hint
        return 1


def run_batch(
    manifest: Manifest,
    out_dir: str | Path,
    params: BatchParams,
    client: Any,
    *,
    resume: bool = False,
    verify_hashes: bool = False,
    run_id: str | None = None,
    on_result: Callable[[TaskOutcome, BatchSummary], None] | None = None,
) -> BatchSummary:
    """Run every participant of ``manifest`` on ``client`` and write the merged outputs.

    Writes ``participants/<id>/*`` (in the tasks), then ``errors.csv``, ``metrics.parquet``,
    ``slices.parquet``, ``qc.html`` and ``batch.json`` in ``out_dir``. Rows the manifest could
    not use (``manifest.row_errors``) are failures of stage ``manifest``. ``on_result`` is called
    after each participant (for progress display).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out)
    run_id = run_id or uuid.uuid4().hex
    row_errors = list(getattr(manifest, "row_errors", ()))
    summary = BatchSummary(run_id=run_id, out_dir=out, total=len(manifest) + len(row_errors))
    summary.dashboard = dashboard_link(client)
    start = time.perf_counter()
    times = StageTimes()
    completed: list[str] = []

    def record(outcome: TaskOutcome) -> None:
        summary.count(outcome)
        times.add(outcome.stages)
        if outcome.status != "failed":
            completed.append(outcome.participant_id)
        summary.seconds = time.perf_counter() - start
        if on_result is not None:
            on_result(outcome, summary)

    for row in row_errors:
        record(TaskOutcome(row["participant_id"], "failed", stage="manifest", reason=row["reason"]))
    pending = []
    for p in manifest.participants:
        if resume and not verify_hashes and is_unchanged(p, store, params):
            record(TaskOutcome(p.participant_id, "skipped"))
        else:
            pending.append(p)
    args = (str(out.resolve()), params, run_id, resume, verify_hashes)
    for outcome in _run_windowed(client, pending, args, run_id):
        record(outcome)
    summary.stage_seconds = times.summary()
    finish_batch(store, summary, completed, manifest, params, start)
    return summary


def _run_windowed(client: Any, pending: list, args: tuple, run_id: str) -> Iterator[TaskOutcome]:
    """Outcomes of ``pending`` participants, at most a window of chunks in flight at a time."""
    from distributed import as_completed

    workers = _n_workers(client)
    size = chunk_size(len(pending), workers)
    window = max(8, 4 * workers)
    chunks = _chunks(pending, size)
    futures: dict[Any, list] = {}

    def submit(chunk: list) -> Any:
        first = chunk[0].participant_id
        fut = client.submit(
            process_chunk, chunk, *args, key=f"myocomp-{first}-{run_id[:8]}", pure=False
        )
        futures[fut] = chunk
        return fut

    queue = as_completed([submit(c) for c in itertools.islice(chunks, window)])
    for fut in queue:
        chunk = futures.pop(fut)
        if fut.status == "error":
            exc = fut.exception()
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            outcomes = _lost_chunk(ResultStore(args[0]), chunk, run_id, reason)
        else:
            outcomes = fut.result()
        fut.release()
        nxt = next(chunks, None)
        if nxt is not None:
            queue.add(submit(nxt))
        yield from outcomes


def _lost_chunk(store: ResultStore, chunk: list, run_id: str, reason: str) -> list[TaskOutcome]:
    """Outcomes of a chunk whose task Dask gave up on (its workers died): participants the task
    finished in this run before that (complete outputs and provenance of this ``run_id``) are
    done; the others failed at stage ``worker`` (``--resume`` redoes exactly them)."""
    outcomes = []
    for p in chunk:
        prov = store.read_provenance(p.participant_id)
        finished = prov is not None and prov.get("run_id") == run_id and store.outputs_intact(
            p.participant_id, prov
        )
        outcomes.append(
            TaskOutcome(p.participant_id, "done")
            if finished
            else TaskOutcome(p.participant_id, "failed", "worker", reason)
        )
    return outcomes


def finish_batch(
    store: ResultStore,
    summary: BatchSummary,
    completed: Iterable[str],
    manifest: Manifest,
    params: BatchParams,
    start: float,
) -> None:
    """Write the driver's outputs, each atomically; one that fails does not stop the others.

    ``errors.csv`` comes first, so the failed participants are on record whatever happens next;
    a merged table that cannot be written is removed rather than left stale. The merge is
    skipped when its inputs are those of the last run's merge (``batch.json`` ``merge.key``,
    :meth:`ResultStore.merge_key`) and its outputs still have the sizes recorded there (a no-op
    ``--resume``). Raises :class:`InputFileError` naming every output that could not be written.
    """
    from myocomp.io import write_json
    from myocomp.pipeline.qc_page import qc_entries, write_qc_html

    problems: list[str] = []
    qc: list = []
    completed = list(completed)

    def attempt(name: str, write: Callable[[], Any], stale: tuple[str, ...] = ()) -> None:
        try:
            write()
        except (OSError, ValueError) as exc:
            problems.append(f"{name}: {getattr(exc, 'strerror', None) or exc}")
            for n in stale:
                (store.root / n).unlink(missing_ok=True)

    attempt("errors.csv", lambda: store.write_errors(summary.errors))
    key = store.merge_key(completed, summary.errors)
    merge = {"key": key, "skipped": _merge_unchanged(store, key)}
    if not merge["skipped"]:
        attempt(
            "metrics.parquet",
            lambda: qc.extend(store.merge(completed)),
            stale=("metrics.parquet", "slices.parquet"),
        )
        attempt(
            "qc.html",
            lambda: write_qc_html(store.root / "qc.html", qc_entries(qc, store), failed=summary.errors),
        )
    merge["outputs"] = None if problems else store.merged_sizes()
    summary.seconds = time.perf_counter() - start
    attempt(
        "batch.json",
        lambda: write_json(
            {**summary.to_dict(), "manifest": str(manifest.path), "parameters": params.to_dict(),
             "merge": merge, "output_problems": problems},
            store.root / "batch.json",
        ),
    )  # fmt: skip
    if problems:
        raise InputFileError(
            f"could not write {'; '.join(problems)} (participants' results are kept: rerun "
            "with --resume)",
            source=store.root,
        )


def _merge_unchanged(store: ResultStore, key: str) -> bool:
    """True if the last run's merge had this key and its outputs are as it left them."""
    try:
        last = json.loads((store.root / "batch.json").read_text(encoding="utf-8")).get("merge") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return last.get("key") == key and last.get("outputs") is not None and (
        last["outputs"] == store.merged_sizes()
    )
