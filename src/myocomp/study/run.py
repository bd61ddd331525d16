"""Run the whole CBP study: phenotypes + metrics -> tables, figures, model.json, report.html.

Three stages, each a function: :func:`compute_tables` (the analyses; numbers only),
:func:`build_model` (the contents of ``model.json``) and :func:`write_outputs` (tables, figures,
model, report). :func:`run_study` chains them.

On a machine with two or more cores the work is shared by two processes: the nomogram's
bootstrap and the models within strata run in a second process while the other mixed models
are fitted, and the figures are drawn by both; BLAS runs single-threaded in both (the matrices
are 27,518 × 12: threads cost more than they give). The results do not depend on this: the
same numbers are computed either way.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from myocomp import __version__
from myocomp.errors import ConfigError
from myocomp.io import utc_timestamp, write_json, write_table
from myocomp.study import analyses as an
from myocomp.study import calculator as calc
from myocomp.study import checks
from myocomp.study import figures as fg
from myocomp.study.nomogram_figure import plot_nomogram
from myocomp.study.phenotypes import (
    StudyConfig,
    join_metrics,
    load_config,
    read_table,
    validate_phenotypes,
)
from myocomp.study.report import write_report
from myocomp.study.result import MODEL_FORMAT, MODEL_VERSION, StudyResult

__all__ = [
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "StudyResult",
    "StudyTables",
    "build_model",
    "compute_tables",
    "run_study",
    "write_outputs",
]


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


@dataclass
class StudyTables:
    """The numbers of a study run: ``tables`` (name -> DataFrame) and the fits behind them."""

    tables: dict[str, pd.DataFrame]
    fits: dict[str, an.ModelFit]
    nomogram: an.NomogramAnalysis
    timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.last = now


def _background(fn: Callable[..., Any], *args: Any) -> tuple[Future, ProcessPoolExecutor | None]:
    """Run ``fn(*args)`` in a forked process when there is a second core, else now. Not
    forked while other Python threads run (e.g. a Dask client's): a fork could catch one
    holding a lock."""
    if ((os.cpu_count() or 1) > 1 and threading.active_count() == 1
            and "fork" in multiprocessing.get_all_start_methods()):
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        return pool.submit(fn, *args), pool
    fut: Future = Future()
    fut.set_result(fn(*args))
    return fut, None


def _nomogram_tables(nomo: an.NomogramAnalysis) -> dict[str, pd.DataFrame]:
    return {
        "nomogram_points": nomo.nomogram.points_table(),
        "nomogram_total_points": nomo.nomogram.total_points_table(),
        "validation": nomo.validation_table(),
        "bootstrap_validation": nomo.bootstrap.reset_index(),
        "calibration_curve": nomo.calibration_curve,
        "nomogram_model": pd.DataFrame({
            "term": nomo.result.params.index, "estimate": nomo.result.params.to_numpy(),
            "se": nomo.result.bse.to_numpy(), "p": nomo.result.pvalues.to_numpy(),
        }),
    }


#: the order of the study's tables (tables/*.csv, the report)
_TABLE_ORDER = ("table1", "pa_prevalence", "met_spline", "main_models", "strata_models",
                "symptom_burden", "symptom_ordinal", "interaction_model", "interaction_predicted",
                "interaction_observed")

#: the strata fitted in the second process; the others are fitted here (balance of the work)
_BACKGROUND_STRATA = ("osteoarthritis", "osteoporosis", "sex")


def _background_tables(d: pd.DataFrame, cfg: StudyConfig
                       ) -> tuple[an.NomogramAnalysis, pd.DataFrame, dict]:
    """The analyses of the second process: the nomogram with its bootstrap and the models
    within some strata; with their timings (seconds)."""
    timings: dict[str, float] = {}
    step = _Clock(timings)
    nomo = an.nomogram_analysis(d, cfg.bootstrap, cfg.seed)
    step("background: nomogram and bootstrap")
    strata = an.strata_models(d, nagq=cfg.nagq, variables=_BACKGROUND_STRATA)
    step("background: strata")
    return nomo, strata, timings


def compute_tables(d: pd.DataFrame, cfg: StudyConfig,
                   progress: Callable[[str], None] | None = None) -> StudyTables:
    """Every analysis of the study on the prepared table ``d``
    (:func:`myocomp.study.analyses.prepare_analysis_data`): tables of numbers, no files.
    The nomogram (bootstrap) and most strata models run in a second process when there is a
    second core (:func:`_background`), the rest here; about the same time each."""
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    step = _Clock(timings)
    say(f"in the background: nomogram and validation (bootstrap B = {cfg.bootstrap}), models "
        "within the OA, OP and sex strata")
    import statsmodels.discrete.discrete_model  # noqa: F401  (both processes need statsmodels)

    background, pool = _background(_background_tables, d, cfg)
    try:
        tables: dict[str, pd.DataFrame] = {}
        say("Table 1 and physical activity")
        tables["table1"] = an.table1(d)
        tables["pa_prevalence"] = an.pa_prevalence(d)
        tables["met_spline"] = an.met_spline(d)
        step("descriptive")
        say("mixed logistic models (main, unadjusted, single marker)")
        tables["main_models"], fits = an.main_models(d, nagq=cfg.nagq)
        step("main_models")
        say("symptom burden (mixed logistic, ordinal sensitivity)")
        tables["symptom_burden"], fits["symptom_burden"] = an.symptom_burden(
            d, cfg.symptom_threshold, cfg.nagq)
        tables["symptom_ordinal"] = an.ordinal_sensitivity(d)
        step("symptom_burden")
        say("InterMAT × LMM interaction")
        (tables["interaction_model"], tables["interaction_predicted"],
         tables["interaction_observed"], fits["interaction"]) = an.interaction_analysis(
            d, nagq=cfg.nagq)
        step("interaction")
        say("models within the PA strata")
        others = [s[0] for s in an.STRATA if s[0] not in _BACKGROUND_STRATA]
        strata_here = an.strata_models(d, nagq=cfg.nagq, variables=others)
        step("strata (PA)")
        if not background.done():
            fg.pyplot()  # matplotlib's set-up for the figures while the second process finishes
        nomo, strata, background_timings = background.result()
        tables["strata_models"] = pd.concat([strata, strata_here], ignore_index=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    tables.update(_nomogram_tables(nomo))
    step("waiting for the background")
    timings.update(background_timings)
    tables["models"] = _models_table(list(fits.values()))
    tables = {**{k: tables[k] for k in _TABLE_ORDER if k in tables}, **tables}
    return StudyTables(tables=tables, fits=fits, nomogram=nomo, timings=timings)


def build_model(cfg: StudyConfig, d: pd.DataFrame, zmodel: Any, computed: StudyTables
                ) -> dict[str, Any]:
    """The contents of ``model.json``: Z reference, main model, nomogram model and nomogram."""
    adjusted = computed.fits["adjusted"].results
    nomo = computed.nomogram
    return {
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
        "interaction_heatmap": calc.heatmap_dict(computed.tables["interaction_predicted"]),
        "created_utc": utc_timestamp(),
    }


def _second_figures(nomo: an.NomogramAnalysis, tables: dict[str, pd.DataFrame],
                    cfg: StudyConfig, fdir: Path) -> dict[str, Path]:
    """The figures drawn in the second process: nomogram, PA, and the forest plot of the
    strata."""
    fg.pyplot()  # the study's matplotlib style, also in a freshly forked process
    plot_nomogram(nomo.nomogram, fdir / "nomogram.png", fdir / "nomogram.svg",
                  outcome_label="Probability of CBP", title="Nomogram for chronic back pain")
    return {
        "pa": fg.plot_pa(tables["pa_prevalence"], tables["met_spline"], fdir / "pa.png",
                         cfg.pa_breaks),
        "nomogram": fdir / "nomogram.png",
        "nomogram_svg": fdir / "nomogram.svg",
        "forest_strata": fg.plot_strata(tables["strata_models"], fdir / "forest_strata.png"),
    }


def write_figures(computed: StudyTables, cfg: StudyConfig, d: pd.DataFrame, fdir: Path,
                  meanwhile: Callable[[], Any] | None = None) -> dict[str, Path]:
    """Draw every figure of the study into ``fdir`` (four of them in a second process when
    there is a second core; ``meanwhile()`` is called while that process still draws);
    returns name -> path."""
    tables = computed.tables
    fg.pyplot()  # imported once, before the fork
    needed = ("pa_prevalence", "met_spline", "strata_models")
    others, pool = _background(_second_figures, computed.nomogram,
                               {k: tables[k] for k in needed}, cfg, fdir)
    try:
        figs: dict[str, Path] = {}
        figs["forest_main"] = fg.plot_forest(
            tables["main_models"], fdir / "forest_main.png", row_label="description",
            title="Association of back-muscle composition with CBP (mixed logistic models)")
        figs["interaction"] = fg.plot_interaction(
            tables["interaction_predicted"], tables["interaction_observed"],
            fdir / "interaction.png", an.reference_covariates(d))
        nomo = computed.nomogram
        figs["calibration"] = fg.plot_calibration(
            nomo.calibration_curve, fdir / "calibration.png",
            title="Calibration of the nomogram model", fit=nomo.calibration)
        figs["roc"] = fg.plot_roc(nomo.y, nomo.probability, fdir / "roc.png",
                                  title="ROC of the nomogram model")
        sym = pd.concat([
            tables["symptom_burden"].assign(
                row=f"pain ≥ {cfg.symptom_threshold:g} (mixed logistic)"),
            tables["symptom_ordinal"].assign(row="pain category (proportional odds)"),
        ], ignore_index=True)
        figs["forest_symptoms"] = fg.plot_forest(
            sym, fdir / "forest_symptoms.png", row_label="row",
            title="Symptom burden among participants with CBP")
        if meanwhile is not None:
            meanwhile()
        figs.update(others.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    order = ["pa", "forest_main", "forest_strata", "forest_symptoms", "interaction", "nomogram",
             "nomogram_svg", "calibration", "roc"]
    return {k: figs[k] for k in order}


def write_outputs(result: StudyResult, computed: StudyTables, d: pd.DataFrame) -> StudyResult:
    """Write ``tables/*.csv``, ``figures/*``, ``model.json``, ``calculator.html`` and
    ``report.html`` of ``result``
    (atomically; rerunning overwrites them). Fills ``result.figures``."""
    out = result.out_dir
    for name, table in result.tables.items():
        write_table(table, out / "tables" / f"{name}.csv")
    def model_and_calculator() -> None:
        write_json(result.model, result.model_path)
        calc.write_calculator(result.model_path, out / "calculator.html")

    result.figures.update(write_figures(computed, result.config, d, out / "figures",
                                        meanwhile=model_and_calculator))
    write_report(result, d)
    return result


def _exclude_flagged(pheno: pd.DataFrame, metric_table: pd.DataFrame | None, cfg: StudyConfig,
                     say: Callable[[str], None],
                     ) -> tuple[pd.DataFrame, pd.DataFrame | None, checks.QCExclusion | None]:
    """The participants with QC flags out of the metrics table (of the analysed group), or of the
    phenotype table when it holds the metrics, unless ``include_flagged``; and who they were."""
    if metric_table is not None:
        qc = checks.qc_exclusion(metric_table, cfg.include_flagged, cfg.group)
        return pheno, checks.exclude_flagged(metric_table, cfg.include_flagged, say, cfg.group), qc
    qc = checks.qc_exclusion(pheno, cfg.include_flagged)
    return checks.exclude_flagged(pheno, cfg.include_flagged, say), None, qc


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
    say = progress or (lambda _msg: None)
    cfg = _as_config(config)
    out = Path(out_dir)
    timings: dict[str, float] = {}
    step = _Clock(timings)
    say("reading and validating phenotypes")
    pheno = validate_phenotypes(_as_table(data), cfg)
    metric_table = None if metrics is None else checks.validate_metrics(_as_table(metrics))
    pheno, metric_table, qc = _exclude_flagged(pheno, metric_table, cfg, say)
    joined, join = join_metrics(pheno, metric_table, group=cfg.group)
    if qc is not None and qc.excluded:  # excluded, not "without metrics"
        excluded = set(qc.ids)
        join = replace(join, phenotypes_without_metrics=tuple(
            i for i in join.phenotypes_without_metrics if i not in excluded))
    d, zmodel = an.prepare_analysis_data(joined, cfg)
    checks.check_estimable(d)
    step("input")
    with threadpool_limits(limits=1, user_api="blas"):
        computed = compute_tables(d, cfg, say)
    timings.update(computed.timings)
    step.last = time.perf_counter()
    model = build_model(cfg, d, zmodel, computed)
    result = StudyResult(out_dir=out, config=cfg, join=join, tables=computed.tables,
                         figures={}, model=model, report_path=out / "report.html",
                         model_path=out / "model.json", timings=timings,
                         n_analysed=int(computed.fits["adjusted"].n), qc_exclusion=qc)
    say("writing tables, figures, model.json and report.html")
    write_outputs(result, computed, d)
    step("outputs")
    return result
