"""Run the whole CBP study: phenotypes + metrics -> tables, figures, model.json, report.html."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from myocomp.errors import ConfigError
from myocomp.io import write_json, write_table
from myocomp.study import analyses as an
from myocomp.study import calculator as calc
from myocomp.study import checks
from myocomp.study import figures as fg
from myocomp.study.phenotypes import (
    JoinReport,
    StudyConfig,
    join_metrics,
    load_config,
    read_table,
    validate_phenotypes,
)

__all__ = ["StudyResult", "run_study", "MODEL_FORMAT", "MODEL_VERSION"]

MODEL_FORMAT = "myocomp.study.model"
MODEL_VERSION = 1


@dataclass
class StudyResult:
    """Everything :func:`run_study` produced.

    ``tables``: name -> DataFrame (also written to ``out_dir/tables/<name>.csv``);
    ``figures``: name -> path of the PNG (and ``nomogram_svg``); ``model``: the contents of
    ``model.json``; ``timings``: seconds per step.
    """

    out_dir: Path
    config: StudyConfig
    join: JoinReport
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Path]
    model: dict[str, Any]
    report_path: Path
    model_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    n_analysed: int = 0


def _as_config(config: StudyConfig | str | Path | Mapping[str, Any] | None) -> StudyConfig:
    if config is None or isinstance(config, StudyConfig):
        return config or StudyConfig()
    if isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, Mapping):
        return StudyConfig.from_dict(dict(config))
    raise ConfigError(f"config must be a StudyConfig, a path or a dict, not {type(config)}")


def _as_table(data: pd.DataFrame | str | Path) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else read_table(data)


def _models_table(fits: list[an.ModelFit]) -> pd.DataFrame:
    rows = []
    for f in fits:
        r = f.results
        rows.append({
            "model": f.name, "description": f.description, "formula": f.formula + " + (1 | site)",
            "n": f.n, "events": f.events, "n_dropped": f.n_dropped,
            "group_sd": None if r is None else float(r.group_sd),
            "loglik": None if r is None else float(r.loglik),
            "converged": None if r is None else bool(r.converged), "note": f.note,
        })
    return pd.DataFrame(rows)


def run_study(
    data: pd.DataFrame | str | Path,
    metrics: pd.DataFrame | str | Path | None = None,
    config: StudyConfig | str | Path | Mapping[str, Any] | None = None,
    out_dir: str | Path = "study_out",
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run every analysis of the CBP study and write its outputs.

    Parameters
    ----------
    data : phenotype table (DataFrame or CSV/TSV/Parquet path); may already hold the metric
        columns (a synthetic cohort), then ``metrics`` may be None.
    metrics : metrics table (long format, one row per participant × group) or None.
    config : :class:`StudyConfig`, path of ``study.toml``, its dict, or None (defaults).
    out_dir : folder for ``report.html``, ``model.json``, ``tables/*.csv``, ``figures/*``.
    progress : called with a short message before each step (e.g. ``rich`` console print).

    Returns
    -------
    StudyResult. Files are written atomically; rerunning overwrites them.
    """
    from myocomp.study.report import write_report

    say = progress or (lambda _msg: None)
    cfg = _as_config(config)
    out = Path(out_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    say("reading and validating phenotypes")
    pheno = validate_phenotypes(_as_table(data), cfg)
    metric_table = None if metrics is None else checks.validate_metrics(_as_table(metrics))
    metric_table = checks.exclude_flagged(metric_table, cfg.include_flagged, say, cfg.group)
    pheno = checks.exclude_flagged(pheno, cfg.include_flagged, say) if metrics is None else pheno
    joined, join = join_metrics(pheno, metric_table, group=cfg.group)
    d, zmodel = an.prepare_analysis_data(joined, cfg)
    checks.check_estimable(d)
    step("input")

    tables: dict[str, pd.DataFrame] = {}
    say("Table 1 and physical activity")
    tables["table1"] = an.table1(d)
    tables["pa_prevalence"] = an.pa_prevalence(d)
    tables["met_spline"] = an.met_spline(d)
    step("descriptive")

    say("mixed logistic models (main, unadjusted, single marker)")
    tables["main_models"], fits = an.main_models(d, nagq=cfg.nagq)
    step("main_models")
    say("models within strata (OA, OP, sex, PA)")
    tables["strata_models"] = an.strata_models(d, nagq=cfg.nagq)
    step("strata")
    say("symptom burden (mixed logistic, ordinal sensitivity)")
    tables["symptom_burden"], sb_fit = an.symptom_burden(d, cfg.symptom_threshold, cfg.nagq)
    tables["symptom_ordinal"] = an.ordinal_sensitivity(d)
    step("symptom_burden")
    say("InterMAT × LMM interaction")
    (tables["interaction_model"], tables["interaction_predicted"],
     tables["interaction_observed"], int_fit) = an.interaction_analysis(d, nagq=cfg.nagq)
    step("interaction")
    say(f"nomogram and validation (bootstrap B = {cfg.bootstrap})")
    nomo = an.nomogram_analysis(d, B=cfg.bootstrap, seed=cfg.seed)
    tables["nomogram_points"] = nomo.nomogram.points_table()
    tables["nomogram_total_points"] = nomo.nomogram.total_points_table()
    tables["validation"] = nomo.validation_table()
    tables["bootstrap_validation"] = nomo.bootstrap.reset_index()
    tables["calibration_curve"] = nomo.calibration_curve
    nomo_coef = pd.DataFrame({
        "term": nomo.result.params.index, "estimate": nomo.result.params.to_numpy(),
        "se": nomo.result.bse.to_numpy(), "p": nomo.result.pvalues.to_numpy(),
    })
    tables["nomogram_model"] = nomo_coef
    step("nomogram")
    tables["models"] = _models_table([*fits.values(), sb_fit, int_fit])

    say("writing tables and figures")
    for name, table in tables.items():
        write_table(table, out / "tables" / f"{name}.csv")
    figs: dict[str, Path] = {}
    fdir = out / "figures"
    figs["pa"] = fg.plot_pa(tables["pa_prevalence"], tables["met_spline"], fdir / "pa.png",
                            cfg.pa_breaks)
    main = tables["main_models"]
    figs["forest_main"] = fg.plot_forest(
        main, fdir / "forest_main.png", row_label="description",
        title="Association of back-muscle composition with CBP (mixed logistic models)")
    figs["forest_strata"] = fg.plot_strata(tables["strata_models"], fdir / "forest_strata.png")
    sym = pd.concat([
        tables["symptom_burden"].assign(
            row=f"pain ≥ {cfg.symptom_threshold:g} (mixed logistic)"),
        tables["symptom_ordinal"].assign(row="pain category (proportional odds)"),
    ], ignore_index=True)
    figs["forest_symptoms"] = fg.plot_forest(
        sym, fdir / "forest_symptoms.png", row_label="row",
        title="Symptom burden among participants with CBP")
    figs["interaction"] = fg.plot_interaction(
        tables["interaction_predicted"], tables["interaction_observed"],
        fdir / "interaction.png", an.reference_covariates(d))
    from myocomp.stats.validation import plot_calibration, plot_roc
    from myocomp.study.nomogram_figure import plot_nomogram

    plot_nomogram(nomo.nomogram, fdir / "nomogram.png", fdir / "nomogram.svg",
                  outcome_label="Probability of CBP", title="Nomogram for chronic back pain")
    figs["nomogram"] = fdir / "nomogram.png"
    figs["nomogram_svg"] = fdir / "nomogram.svg"
    plot_calibration(nomo.calibration_curve, fdir / "calibration.png",
                     title="Calibration of the nomogram model", fit=nomo.calibration)
    figs["calibration"] = fdir / "calibration.png"
    plot_roc(nomo.y, nomo.probability, fdir / "roc.png", title="ROC of the nomogram model")
    figs["roc"] = fdir / "roc.png"
    step("figures")

    from myocomp import __version__

    adjusted = fits["adjusted"].results
    model = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "myocomp_version": __version__,
        "outcome": "cbp",
        "config": cfg.to_dict(),
        "intermat_metric": cfg.intermat_metric,
        "lmm_definition": "lean_volume_ml / bmi (mL·m²/kg)",
        "pa_breaks_met_min_week": list(cfg.pa_breaks),
        "zscores": zmodel.to_dict(),
        "main_model": None if adjusted is None else adjusted.to_dict(),
        "nomogram_model": {
            "formula": nomo.formula, "n": nomo.n, "n_dropped": nomo.n_dropped,
            "params": {k: float(v) for k, v in nomo.result.params.items()},
            "bse": {k: float(v) for k, v in nomo.result.bse.items()},
            "cov_params": calc.covariance_dict(nomo.result),
            "auc": nomo.auc.auc,
        },
        "nomogram": nomo.nomogram.to_dict(),
        "reference_covariates": an.reference_covariates(d),
        "interaction_heatmap": calc.heatmap_dict(tables["interaction_predicted"]),
        "created_utc": calc.utc_now(),
    }
    model_path = write_json(model, out / "model.json")
    calc.write_calculator(model_path, out / "calculator.html")
    n_analysed = int(fits["adjusted"].n)
    result = StudyResult(out_dir=out, config=cfg, join=join, tables=tables, figures=figs,
                         model=model, report_path=out / "report.html", model_path=model_path,
                         timings=timings, n_analysed=n_analysed)
    say("writing report.html")
    write_report(result, d)
    step("report")
    return result
