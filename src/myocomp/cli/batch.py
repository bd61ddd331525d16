"""`myocomp batch`: a manifest of participants -> per-participant outputs and merged tables."""

from __future__ import annotations

from pathlib import Path

import typer

from myocomp.cli.app import app
from myocomp.errors import InputFileError

_O = typer.Option


@app.command()
def batch(
    manifest: Path = typer.Argument(..., help="Manifest CSV/TSV: participant_id and images (see the README)."),
    out: Path = _O(..., "--out", help="Output folder (created)."),
    workers: int | None = _O(None, "--workers", help="Local worker processes (default 1)."),
    scheduler: str | None = _O(None, "--scheduler", help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786."),
    slurm: Path | None = _O(None, "--slurm", help="TOML file with a [slurm] table: run on SLURM via dask-jobqueue."),
    config: Path | None = _O(None, "--config", help="TOML file with a [batch] table of defaults for these options."),
    resume: bool = _O(False, "--resume", help="Skip participants whose outputs exist for the same inputs and parameters."),
    strict: bool = _O(False, "--strict", help="Exit with code 1 if any participant failed (or a manifest row has missing files)."),
    model: str | None = _O(None, "--model", help="Segmentation model (name or nnU-Net results folder) for rows without labels."),
    device: str | None = _O(None, "--device", help="Device of the model: auto, cpu, cuda."),
    profile: str | None = _O(None, "--profile", help="Label profile of rows without a profile column (e.g. mrsegmentator)."),
    fat_threshold: float | None = _O(None, "--fat-threshold", help="Fat fraction tau (0-1) at and above which a voxel is adipose (default 0.5)."),
    band_mm: float | None = _O(None, "--band-mm", help="Perimuscular band width in mm (default 0)."),
    groups: str | None = _O(None, "--groups", help="Comma-separated groups: back, psoas, gluteal, all (default back,psoas); with a manifest column vertebrae also level groups such as back_L1_L5."),
    volume_range: list[str] | None = _O(None, "--volume-range", help="Plausible volume for QC, GROUP=LOW:HIGH in mL (repeatable)."),
    min_label_ml: float | None = _O(None, "--min-label-ml", help="QC: muscles smaller than this (mL) count as missing (default 1)."),
    qc_images: str | None = _O(None, "--qc-images", help="QC overlay PNGs: all (default), flagged (only flagged participants) or none."),
    verify_hashes: bool = _O(False, "--verify-hashes", help="With --resume: re-hash every input instead of trusting unchanged size/mtime/inode."),
    record_paths: bool = _O(False, "--record-paths", help="Record DICOM folder paths in the provenance (default: a hash of the path only)."),
    scheduler_timeout: float | None = _O(None, "--scheduler-timeout", help="Seconds to wait for the --scheduler to answer before giving up (default 15)."),
    progress: bool = _O(True, "--progress/--no-progress", help="Show a progress bar."),
    skip_anatomy_check: bool = _O(False, "--skip-anatomy-check", help="Do not check label maps against anatomy (odd fields of view); recorded in each provenance."),
) -> None:  # fmt: skip
    """Process a cohort on Dask: one resumable task per participant, failures listed in errors.csv.

    Each participant's provenance.json records created_utc: now, or the time of the environment
    variable SOURCE_DATE_EPOCH (integer seconds since 1970-01-01 UTC) when it is set.
    """
    from myocomp.pipeline.params import read_batch_config  # the pipeline only when a batch runs

    options = {
        "workers": workers, "scheduler": scheduler, "scheduler_timeout": scheduler_timeout,
        "model": model, "device": device, "profile": profile, "fat_threshold": fat_threshold,
        "band_mm": band_mm, "groups": groups, "volume_range": volume_range,
        "min_label_ml": min_label_ml, "qc_images": qc_images, "record_paths": record_paths,
        "skip_anatomy_check": skip_anatomy_check,
    }  # fmt: skip
    cfg = {**(read_batch_config(slurm) if slurm else {}), **(read_batch_config(config) if config else {})}
    summary = _run(manifest, out, slurm, options, cfg, resume=resume, strict=strict,
                   verify_hashes=verify_hashes, progress=progress)  # fmt: skip
    typer.echo(f"batch: {summary.summary()}")
    typer.echo(f"results: {out / 'metrics.parquet'}  QC: {out / 'qc.html'}")
    if summary.failed:
        typer.echo(f"{summary.failed} failed: see {out / 'errors.csv'}")
        if strict:
            raise typer.Exit(1)


def _run(manifest, out, slurm, options, cfg, *, resume, strict, verify_hashes, progress):
    """Validate everything, then run the batch under the output-folder lock; the summary."""
    import uuid

    from rich.console import Console

    from myocomp.pipeline.lock import output_lock
    from myocomp.pipeline.manifest import ManifestError, ManifestRowError, read_manifest
    from myocomp.pipeline.params import resolve_batch_params, resolve_run_options
    from myocomp.pipeline.runner import dashboard_link, load_slurm_config, open_client, run_batch

    params = resolve_batch_params(options, cfg)
    run = resolve_run_options(options, cfg, slurm=slurm is not None)
    slurm_cfg = load_slurm_config(slurm) if slurm is not None else None
    try:
        man = read_manifest(manifest, default_profile=run.profile, strict=strict)
    except ManifestError as exc:
        typer.echo(f"error: {len(exc.problems)} problem(s) in manifest {manifest}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(1 if isinstance(exc, ManifestRowError) else 2) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"cannot create the output folder ({exc.strerror})", source=out) from exc
    run_id = uuid.uuid4().hex
    with output_lock(out, run_id, "batch", say=typer.echo), open_client(
        workers=run.workers, scheduler=run.scheduler, slurm=slurm_cfg,
        scheduler_timeout=run.scheduler_timeout,
    ) as client:  # fmt: skip
        link = dashboard_link(client)
        if link:
            typer.echo(f"dashboard: {link}")
        kwargs = {"resume": resume, "verify_hashes": verify_hashes, "run_id": run_id}
        if progress:
            return _run_with_progress(man, out, params, client, kwargs, Console(stderr=True))
        return run_batch(man, out, params, client, **kwargs)


def _run_with_progress(man, out, params, client, kwargs, console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from myocomp.pipeline.runner import run_batch

    columns = (
        TextColumn("participants"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "done {task.fields[done]} · skipped {task.fields[skipped]} · failed {task.fields[failed]}"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        total = len(man) + len(man.row_errors)
        task = bar.add_task("batch", total=total, done=0, skipped=0, failed=0)

        def update(outcome, summary):
            bar.update(
                task,
                completed=summary.finished,
                done=summary.done,
                skipped=summary.skipped,
                failed=summary.failed,
            )

        return run_batch(man, out, params, client, on_result=update, **kwargs)
