"""`myocomp study`, `myocomp synth-cohort`, `myocomp predict`, `myocomp calculator`: the CBP study
from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from myocomp.cli.app import app


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(width=110, stderr=stderr, highlight=False)


@app.command()
def study(
    data: Path = typer.Option(..., "--data", help="Phenotype table (CSV, TSV or Parquet); may already contain the metric columns (synthetic cohort)."),
    out: Path = typer.Option(..., "--out", help="Output folder: report.html, model.json, tables/, figures/."),
    metrics: Path | None = typer.Option(None, "--metrics", help="Metrics table from `myocomp quantify`/`batch` (long format, one row per participant x group)."),
    config: Path | None = typer.Option(None, "--config", help="study.toml: column mapping ([columns]), sex codes ([sex_coding]) and [options]."),
    bootstrap: int | None = typer.Option(None, "--bootstrap", help="Bootstrap replicates of the nomogram validation (overrides the config; default 200)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (overrides the config; default 0)."),
    include_flagged: bool = typer.Option(False, "--include-flagged", help="Keep participants whose metrics carry a qc_* flag (default: they are excluded, and the count is printed)."),
) -> None:
    """Run the CBP study: Table 1, PA, mixed models, strata, symptoms, interaction, nomogram.

    Every output is written to a folder beside --out first and moved in only when the whole
    study succeeded; inputs are never overwritten. With the environment variable
    SOURCE_DATE_EPOCH (integer seconds since 1970-01-01 UTC) set, model.json and the report
    are stamped with that time instead of now: two runs on the same inputs then write
    byte-identical model.json.
    """
    import time
    import uuid

    from myocomp.cli.app import captured_warnings
    from myocomp.io import check_output_paths, staged_outputs, write_text
    from myocomp.options import check_options
    from myocomp.pipeline.lock import output_lock
    from myocomp.study.phenotypes import load_config
    from myocomp.study.run import run_study

    check_options({"--bootstrap": bootstrap, "--seed": seed})
    inputs = {"--data": data, "--metrics": metrics, "--config": config}
    check_output_paths({"--out": out}, inputs, folders=["--out"])
    cfg = load_config(config).with_options(bootstrap=bootstrap, seed=seed,
                                           include_flagged=include_flagged or None)
    console = _console()
    start = time.perf_counter()
    with (
        output_lock(out, uuid.uuid4().hex, "study", say=console.print),  # one run per --out
        staged_outputs(protect=[p for p in inputs.values() if p is not None]) as stage,
    ):
        folder = stage.folder(out)
        result = run_study(data, metrics=metrics, config=cfg, out_dir=folder,
                           progress=lambda msg: console.print(f"[bold blue]•[/] {msg}"))
        if captured_warnings():
            write_text("\n".join(captured_warnings()) + "\n", folder / "warnings.log")
    main = result.tables["main_models"]
    adj = main[main["model"] == "adjusted"].set_index("term")
    for term in ("z_intermat", "z_lmm"):
        if term in adj.index:
            r = adj.loc[term]
            console.print(f"{r['label']}: OR {r['OR']:.2f} ({r['lower']:.2f}–{r['upper']:.2f})"
                          f" per 2 Z, n = {int(r['n']):,}")
    j = result.join
    if j.phenotypes_without_metrics or j.metrics_without_phenotypes:
        console.print(f"unmatched ids: {len(j.phenotypes_without_metrics)} phenotypes "
                      f"without metrics, {len(j.metrics_without_phenotypes)} metrics "
                      "without phenotypes")
    console.print(f"wrote {out / 'report.html'} and {out / 'model.json'} "
                  f"({time.perf_counter() - start:.1f} s)")


@app.command("synth-cohort")
def synth_cohort(
    out: Path = typer.Option(..., "--out", help="Output table (.parquet, .csv or .tsv); true_parameters.json is written beside it."),
    n: int = typer.Option(27518, "--n", help="Number of participants."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Draw a NAKO-like synthetic cohort (phenotypes + back-muscle metrics) with known truth."""
    from myocomp.errors import InputFileError
    from myocomp.io import check_output_paths, staged_outputs
    from myocomp.options import check_options
    from myocomp.synth.cohort import simulate_cohort, write_cohort

    check_options({"--n": n, "--seed": seed})
    if out.suffix.lower() not in (".parquet", ".csv", ".tsv"):
        raise InputFileError("output must end in .parquet, .csv or .tsv", source=out)
    params_path = out.parent / "true_parameters.json"
    check_output_paths({"--out": out, "true_parameters.json": params_path})
    cohort = simulate_cohort(n=n, seed=seed)
    with staged_outputs() as stage:
        staged = stage.file(out)
        stage.file(params_path)
        write_cohort(cohort, staged)
    d = cohort.data
    _console().print(f"wrote {out} ({len(d):,} participants, CBP "
                     f"{100 * d['cbp'].mean():.1f} %) and {params_path}")


@app.command()
def calculator(
    model: Path = typer.Option(..., "--model", help="model.json written by `myocomp study`."),
    out: Path = typer.Option(..., "--out", help="The page to write (e.g. calculator.html): one self-contained HTML file, no network needed."),
) -> None:
    """Write the risk-calculator page of a saved model (what `myocomp study` writes as calculator.html)."""
    from myocomp.study.calculator import write_calculator

    path = write_calculator(model, out)
    _console().print(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")


@app.command()
def predict(
    model: Path = typer.Option(..., "--model", help="model.json written by `myocomp study`."),
    age: float = typer.Option(..., "--age", help="Age (years)."),
    sex: str = typer.Option(..., "--sex", help="female or male (f/m, w)."),
    bmi: float = typer.Option(..., "--bmi", help="Body-mass index (kg/m^2)."),
    lean_volume_ml: float = typer.Option(..., "--lean-volume-ml", help="Lean back-muscle volume (mL)."),
    intermat_ml: float | None = typer.Option(None, "--intermat-ml", help="InterMAT volume of the back muscles (mL)."),
    intermat_fraction: float | None = typer.Option(None, "--intermat-fraction", help="InterMAT fraction (0-1), for models built on intermat_fraction."),
    height_cm: float | None = typer.Option(None, "--height-cm", help="Height (cm); needed by height-adjusted Z references."),
    diabetes: bool = typer.Option(False, "--diabetes/--no-diabetes", help="Diabetes."),
    dyslipidemia: bool = typer.Option(False, "--dyslipidemia/--no-dyslipidemia", help="Dyslipidaemia."),
    osteoporosis: bool = typer.Option(False, "--osteoporosis/--no-osteoporosis", help="Osteoporosis."),
    osteoarthritis: bool = typer.Option(False, "--osteoarthritis/--no-osteoarthritis", help="Osteoarthritis."),
    met_min_week: float | None = typer.Option(None, "--met-min-week", help="Physical activity (MET-min/week); default: the reference category (moderate)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score one person: Z-scores, nomogram points per predictor, total points, CBP probability."""
    from myocomp.study.predict import predict_person

    res = predict_person(
        model, age=age, sex=sex, bmi=bmi, lean_volume_ml=lean_volume_ml,
        intermat_ml=intermat_ml, intermat_fraction=intermat_fraction, height_cm=height_cm,
        diabetes=diabetes, dyslipidemia=dyslipidemia, osteoporosis=osteoporosis,
        osteoarthritis=osteoarthritis, met_min_week=met_min_week,
    )
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    from rich.table import Table

    console = _console()
    console.print(f"Z-scores: InterMAT {res.zscores['z_intermat']:+.3f}, "
                  f"LMM {res.zscores['z_lmm']:+.3f}")
    table = Table(title="Nomogram points")
    table.add_column("predictor")
    table.add_column("points", justify="right")
    for name, pts in res.points.items():
        table.add_row(name, f"{pts:.2f}")
    table.add_row("[bold]total points[/]", f"[bold]{res.total_points:.2f}[/]")
    console.print(table)
    console.print(f"linear predictor: {res.linear_predictor:.6f}")
    console.print(f"probability of CBP: {res.probability:.6f}")
    for note in res.notes:
        console.print(f"note: {note}")
