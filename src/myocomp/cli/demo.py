"""`myocomp demo`: the main job on synthetic data, with a summary of what it found."""

from __future__ import annotations

from pathlib import Path

import typer

from myocomp.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for every output of the demo."),
    cohort_n: int = typer.Option(27_518, "--cohort-n", help="Size of the synthetic NAKO-like cohort."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random step (same seed, same tables)."),
    workers: int = typer.Option(2, "--workers", help="Dask worker processes for the phantom batch."),
    bootstrap: int = typer.Option(200, "--bootstrap", help="Bootstrap repetitions of the nomogram validation."),
) -> None:
    """Phantoms -> segmentation, metrics and QC in a Dask batch -> the CBP study on 27,518 people."""
    import time

    from rich.console import Console
    from rich.table import Table

    from myocomp.demo import TRUTH_METRICS, check_demo_options, run_demo
    from myocomp.io import check_output_paths, staged_outputs

    check_demo_options(cohort_n=cohort_n, seed=seed, workers=workers, bootstrap=bootstrap)
    check_output_paths({"--out": out}, folders=["--out"])
    console = Console(width=120)
    start = time.perf_counter()
    with staged_outputs() as stage:
        result = run_demo(stage.folder(out), cohort_n=cohort_n, seed=seed, workers=workers,
                          bootstrap=bootstrap, say=lambda msg: console.print(f"[bold cyan]>[/] {msg}"))

    table = Table(title="Phantoms, back muscles: measured vs ground truth (error: % for volumes, absolute for FF)")
    table.add_column("participant")
    for k in TRUTH_METRICS:
        table.add_column(k, justify="right")
        table.add_column("error", justify="right")
    for _, row in result.metrics.iterrows():
        pid = row["participant_id"] + (" (segmented)" if row["participant_id"] in result.segmented else "")
        cells = [pid]
        for k in TRUTH_METRICS:
            cells += [f"{row[k]:.4g}", f"{row[f'{k}_error']:+.3f}" if k == "ff_mean" else f"{row[f'{k}_error']:+.2f}%"]
        table.add_row(*cells)
    console.print(table)

    if result.odds_ratios is not None:
        ors = Table(title="CBP, adjusted mixed logistic model: odds ratio per 2 units of Z (NAKO: InterMAT 1.22, LMM 0.87)")
        for c in ("model", "term", "OR", "95 % CI", "p"):
            ors.add_column(c)
        odds = result.odds_ratios
        for _, r in odds[odds["term"].astype(str).str.startswith("z_")].iterrows():
            ors.add_row(str(r.get("model", "")), str(r.get("term", "")), f"{r['OR']:.3f}",
                        f"{r['lower']:.3f}-{r['upper']:.3f}", f"{r['p']:.2g}")
        console.print(ors)
    console.print(
        f"outputs in {out}/: metrics.csv, phantom_truth_comparison.csv, batch/ (qc.html, errors.csv), "
        f"study/report.html, study/model.json  ({time.perf_counter() - start:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + ")"
    )
