"""`myocomp batch`: a manifest of participants -> per-participant outputs and merged tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from myocomp.cli.app import app
from myocomp.errors import ConfigError, InputFileError

BATCH_KEYS = frozenset(
    {
        "workers", "scheduler", "model", "device", "profile", "fat_threshold", "band_mm",
        "skip_anatomy_check",
        "groups", "volume_ranges", "min_label_ml", "max_anisotropy",
    }
)  # fmt: skip


def read_batch_config(path: Path) -> dict[str, Any]:
    """The ``[batch]`` table of a TOML file (unknown keys are an error)."""
    from myocomp.pipeline.runner import read_toml

    table = read_toml(path).get("batch", {})
    if not isinstance(table, dict):
        raise ConfigError("[batch] must be a table", source=path)
    unknown = sorted(set(table) - BATCH_KEYS)
    if unknown:
        raise ConfigError(f"unknown [batch] keys: {', '.join(unknown)}", source=path)
    return table


def parse_volume_ranges(items: list[str] | dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``["back=100:6000"]`` or ``{"back": [100, 6000]}`` -> ``{"back": (100.0, 6000.0)}`` (mL)."""
    pairs = items.items() if isinstance(items, dict) else []
    out: dict[str, tuple[float, float]] = {}
    if isinstance(items, list):
        for item in items:
            name, sep, rng = item.partition("=")
            lo, sep2, hi = rng.partition(":")
            if not (sep and sep2 and name.strip()):
                raise ConfigError(f"volume range {item!r} is not GROUP=LOW:HIGH (mL)")
            pairs = [*pairs, (name.strip(), (lo, hi))]  # type: ignore[list-item]
    for name, value in pairs:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"volume range of {name!r} must be two numbers (mL)") from exc
        if not lo < hi:
            raise ConfigError(f"volume range of {name!r}: low {lo:g} must be below high {hi:g}")
        out[name] = (lo, hi)
    return out


@app.command()
def batch(
    manifest: Path = typer.Argument(
        ..., help="Manifest CSV/TSV: participant_id and images (see the README)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    workers: int | None = typer.Option(
        None, "--workers", help="Local worker processes (default 1)."
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786."
    ),
    slurm: Path | None = typer.Option(
        None, "--slurm", help="TOML file with a [slurm] table: run on SLURM via dask-jobqueue."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file with a [batch] table of defaults for these options."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Skip participants whose outputs exist for the same inputs and parameters.",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Exit with code 1 if any participant failed."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Segmentation model (name or nnU-Net results folder) for rows without labels.",
    ),
    device: str | None = typer.Option(
        None, "--device", help="Device of the model: auto, cpu, cuda."
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        help="Label profile of rows without a profile column (e.g. mrsegmentator).",
    ),
    fat_threshold: float | None = typer.Option(
        None,
        "--fat-threshold",
        help="Fat fraction tau (0-1) at and above which a voxel is adipose (default 0.5).",
    ),
    band_mm: float | None = typer.Option(
        None, "--band-mm", help="Perimuscular band width in mm (default 0)."
    ),
    groups: str | None = typer.Option(
        None,
        "--groups",
        help="Comma-separated groups: back, psoas, gluteal, all (default back,psoas); with a manifest column vertebrae also level groups such as back_L1_L5.",
    ),
    volume_range: list[str] | None = typer.Option(
        None, "--volume-range", help="Plausible volume for QC, GROUP=LOW:HIGH in mL (repeatable)."
    ),
    min_label_ml: float | None = typer.Option(
        None,
        "--min-label-ml",
        help="QC: muscles smaller than this (mL) count as missing (default 1).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    skip_anatomy_check: bool = typer.Option(
        False, "--skip-anatomy-check",
        help="Do not check label maps against anatomy (odd fields of view); recorded in each provenance.",
    ),
) -> None:
    """Process a cohort on Dask: one resumable task per participant, failures listed in errors.csv."""
    from rich.console import Console

    from myocomp.cli.imaging import parse_groups
    from myocomp.imaging.labels import GROUP_BASES
    from myocomp.imaging.qc import DEFAULT_VOLUME_RANGES_ML, QCConfig
    from myocomp.pipeline.manifest import ManifestError, read_manifest
    from myocomp.pipeline.runner import load_slurm_config, open_client, run_batch
    from myocomp.pipeline.task import BatchParams

    cfg: dict[str, Any] = {}
    if config is not None:
        cfg.update(read_batch_config(config))
    if slurm is not None:
        cfg = {**read_batch_config(slurm), **cfg}

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else cfg.get(key, default)

    groups_value = pick(groups, "groups", "back,psoas")
    group_tuple = (
        parse_groups(groups_value) if isinstance(groups_value, str) else tuple(groups_value)
    )
    from myocomp.imaging.levels import parse_level_group

    unknown_groups = [g for g in group_tuple if g not in GROUP_BASES and parse_level_group(g) is None]
    if unknown_groups:
        raise ConfigError(
            f"unknown group(s) {', '.join(unknown_groups)}; known: {', '.join(GROUP_BASES)}"
        )
    model_value = pick(model, "model", None)
    if model_value:
        # Resolve once here: a shipped model is installed once, an unknown one fails before any
        # work starts, and the workers get an absolute results folder.
        from myocomp.segment.models import resolve_model

        local = Path(model_value).expanduser()
        model_value = str(resolve_model(local.resolve() if local.exists() else model_value))
    ranges = dict(DEFAULT_VOLUME_RANGES_ML)
    ranges.update(parse_volume_ranges(cfg.get("volume_ranges", {})))
    ranges.update(parse_volume_ranges(list(volume_range or [])))
    params = BatchParams(
        fat_threshold=float(pick(fat_threshold, "fat_threshold", 0.5)),
        band_mm=float(pick(band_mm, "band_mm", 0.0)),
        groups=group_tuple,
        model=model_value,
        device=str(pick(device, "device", "auto")),
        qc=QCConfig(
            volume_ranges_ml=ranges,
            min_label_ml=float(pick(min_label_ml, "min_label_ml", 1.0)),
            max_anisotropy=float(cfg.get("max_anisotropy", 4.0)),
        ),
        skip_anatomy_check=bool(skip_anatomy_check or cfg.get("skip_anatomy_check", False)),
    )
    if not 0.0 < params.fat_threshold < 1.0:
        raise ConfigError(f"--fat-threshold {params.fat_threshold:g} must lie between 0 and 1")
    if params.band_mm < 0:
        raise ConfigError(f"--band-mm {params.band_mm:g} must not be negative")

    err = Console(stderr=True)
    try:
        man = read_manifest(manifest, default_profile=pick(profile, "profile", None))
    except ManifestError as exc:
        typer.echo(f"error: {len(exc.problems)} problem(s) in manifest {manifest}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  - {problem}", err=True)
        raise typer.Exit(2) from None

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(
            f"cannot create the output folder ({exc.strerror})", source=out
        ) from exc
    slurm_cfg = load_slurm_config(slurm) if slurm is not None else None
    n_workers = (
        workers
        if workers is not None
        else (None if (scheduler or slurm_cfg) else cfg.get("workers"))
    )
    address = (
        scheduler
        if scheduler is not None
        else (None if (workers or slurm_cfg) else cfg.get("scheduler"))
    )
    with open_client(workers=n_workers, scheduler=address, slurm=slurm_cfg) as client:
        if progress:
            summary = _run_with_progress(man, out, params, client, resume, err)
        else:
            summary = run_batch(man, out, params, client, resume=resume)

    typer.echo(f"batch: {summary.summary()}")
    typer.echo(f"results: {out / 'metrics.parquet'}  QC: {out / 'qc.html'}")
    if summary.failed:
        typer.echo(f"{summary.failed} failed: see {out / 'errors.csv'}")
        if strict:
            raise typer.Exit(1)


def _run_with_progress(man, out, params, client, resume, console):
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
        task = bar.add_task("batch", total=len(man), done=0, skipped=0, failed=0)

        def update(outcome, summary):
            bar.update(
                task,
                completed=summary.finished,
                done=summary.done,
                skipped=summary.skipped,
                failed=summary.failed,
            )

        return run_batch(man, out, params, client, resume=resume, on_result=update)
