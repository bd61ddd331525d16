"""The self-contained HTML report of the CBP study (tables inline, figures as base64 PNG)."""

from __future__ import annotations

import base64
import html
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp.io import now_utc, write_text
from myocomp.study.analyses import LABELS, TABLE1_GROUPS
from myocomp.study.checks import QCExclusion, n_truncated_fov, truncated_fov_message
from myocomp.study.result import StudyResult

__all__ = ["write_report", "render_report", "SECTIONS", "METRIC_DEFINITIONS", "software_versions",
           "table1_display"]

#: section ids of the report, in order (tests check that each is present)
SECTIONS: tuple[str, ...] = (
    "summary", "data", "table1", "physical-activity", "main-models", "strata",
    "symptom-burden", "interaction", "nomogram", "models", "data-dictionary", "software",
)

METRIC_DEFINITIONS: tuple[tuple[str, str, str], ...] = (
    ("volume_ml", "mL", "voxel count of the muscle group × voxel volume"),
    ("ff_mean", "0–1", "mean fat fraction FF = F / (W + F) over the valid voxels of the group"),
    ("lean_volume_ml", "mL", "fat-free muscle volume: Σ over voxels with FF < τ of voxel volume "
     "× (1 − FF); τ is the fat threshold the metrics were computed with (myocomp default 0.5, "
     "recorded in each participant's provenance.json)"),
    ("intermat_volume_ml", "mL", "adipose volume in and around the group: voxels with FF ≥ τ in "
     "the group ∪ band (the band_mm of the metrics run; myocomp default 0: no band)"),
    ("intermat_fraction", "0–1", "intermat_volume_ml / volume of the group ∪ band"),
    ("lmm", "mL·m²/kg", "lean muscle mass index = lean_volume_ml / BMI (recomputed from the "
     "phenotype BMI)"),
    ("z_intermat, z_lmm", "SD units", "Z-scores: (value − reference mean) / reference SD of the "
     "InterMAT metric and of LMM, from the Z reference model (method in the parameters)"),
)

_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("participant_id", "text", "participant identifier; joins phenotypes and metrics"),
    ("site", "text", "study site (random intercept in mixed models)"),
    ("age", "years", "age at examination"),
    ("sex", "female / male", "sex"),
    ("bmi", "kg/m²", "body-mass index"),
    ("height_cm", "cm", "body height (optional)"),
    ("cbp", "0 / 1", "chronic back pain (back pain for more than 3 months): the outcome"),
    ("pain_intensity", "0–10", "back-pain intensity (numeric rating scale)"),
    ("met_min_week", "MET-min/week", "physical activity"),
    ("osteoarthritis", "0 / 1", "osteoarthritis (OA)"),
    ("osteoporosis", "0 / 1", "osteoporosis (OP)"),
    ("diabetes", "0 / 1", "diabetes mellitus"),
    ("dyslipidemia", "0 / 1", "dyslipidaemia"),
    ("female", "0 / 1", "derived: 1 if sex is female"),
    ("pa_category", "low / moderate / high", "derived: MET-min/week < lower break, between, "
     "> upper break (reference: moderate)"),
    ("symptomatic", "0 / 1", "derived: pain_intensity ≥ symptom threshold (moderate-to-severe)"),
    ("pain_category", "0 / 1 / 2", "derived: pain 0–3, 4–6, 7–10 (ordinal sensitivity model)"),
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:2px solid #1f4e79;
padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eef3f8}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.caption{font-size:.85em;color:#555;margin-top:-.2em}
nav ol{columns:2;font-size:.9em}.key{background:#f6f9fc;border-left:4px solid #1f4e79;
padding:.6em 1em}code{background:#f3f3f3;padding:0 3px}
"""


def software_versions() -> dict[str, str]:
    """Versions of Python and the libraries the study uses."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("myocomp", "numpy", "scipy", "pandas", "statsmodels", "patsy", "matplotlib",
                "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _fmt(value: Any, col: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float | np.floating):
        v = float(value)
        if col in ("p", "p_nonlinear") or col.startswith("p_"):
            return "< 0.0001" if v < 1e-4 else f"{v:.4f}"
        if col in ("n", "events", "n_dropped", "df"):
            return f"{v:,.0f}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return str(value)


def _table1_cell(row: pd.Series, group: str) -> str:
    value = row[group]
    if row["statistic"] == "n":
        return f"{int(value):,}"
    if row["statistic"] == "n (%)":
        pct = row[f"{group}_percent"]
        return "–" if pd.isna(pct) else f"{int(value):,} ({pct:.1f} %)"
    if pd.isna(value):
        return "–"
    k = int(row["decimals"])
    return f"{value:.{k}f} [{row[f'{group}_q1']:.{k}f}–{row[f'{group}_q3']:.{k}f}]"


def table1_display(table1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as shown in the report: one text cell per group ("n (%)", "median [IQR]")."""
    shown = table1[["variable", "label", "level", "statistic"]].copy()
    for group in TABLE1_GROUPS:
        shown[group] = [_table1_cell(row, group) for _, row in table1.iterrows()]
    return shown.assign(p=table1["p"], test=table1["test"], n_missing=table1["n_missing"])


def _table(df: pd.DataFrame, columns: list[str] | None = None, max_rows: int = 200) -> str:
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, row in df.iterrows():
        cells = "".join(f"<td>{html.escape(_fmt(row[c], str(c)))}</td>" for c in df.columns)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="caption">{html.escape(caption)}</figcaption></figure>')


_OR_COLS = ["description", "label", "unit", "OR", "lower", "upper", "p", "n", "events",
            "n_dropped", "note"]


def _key_results(result: StudyResult) -> str:
    main = result.tables["main_models"]
    adj = main[main["model"] == "adjusted"].set_index("term")
    items = []
    for term in ("z_intermat", "z_lmm"):
        if term in adj.index and np.isfinite(adj.loc[term, "OR"]):
            r = adj.loc[term]
            items.append(f"<li>{html.escape(str(r['label']))}: OR {r['OR']:.2f} "
                         f"(95 % CI {r['lower']:.2f}–{r['upper']:.2f}) per 2 units of Z, "
                         f"adjusted, n = {int(r['n']):,}</li>")
    pa = result.tables["pa_prevalence"]
    prev = ", ".join(f"{c} {100 * p:.1f} %" for c, p in zip(pa["pa_category"], pa["prevalence"],
                                                            strict=True))
    items.append(f"<li>CBP prevalence by physical activity: {html.escape(prev)} "
                 f"(χ² p {html.escape(_fmt(float(pa['p'].iloc[0]), 'p'))})</li>")
    val = result.tables["validation"].set_index("metric")
    auc = val.iloc[0]
    items.append(f"<li>Nomogram model: AUC {auc['value']:.3f} (DeLong 95 % CI "
                 f"{auc['lower']:.3f}–{auc['upper']:.3f})</li>")
    return f'<div class="key"><ul>{"".join(items)}</ul></div>'


def _qc_statements(data: pd.DataFrame | None, qc: QCExclusion | None = None) -> list[str]:
    """The data section's statements of the participants with QC flags (excluded before the
    join, or kept with ``include_flagged``) and of the joined participants whose muscles the
    field of view cuts (``qc_truncated_fov``: informational, never a reason to exclude); none
    without any."""
    out = []
    if qc is not None:
        flags = ", ".join(f"<code>{html.escape(k)}</code>: {v:,}" for k, v in qc.by_flag.items())
        out.append(f"<p id='qc-excluded'>QC: {qc.n:,} participant(s) with QC flags ({flags}) "
                   + ("excluded before the join; they are not counted among the phenotypes "
                      "without metrics (<code>include_flagged</code> keeps them).</p>"
                      if qc.excluded else "kept and analysed (<code>include_flagged</code>).</p>"))
    n = 0 if data is None else n_truncated_fov(data)
    if n:
        out.append(f"<p id='qc-truncated-fov'>QC: {html.escape(truncated_fov_message(n, of=len(data)))}. "
                   "The flag describes the field of view, not a fault of the data: these "
                   "participants are analysed, not excluded.</p>")
    return out


def _head_and_data(result: StudyResult, data: pd.DataFrame | None = None) -> list[str]:
    join, cfg = result.join.to_dict(), result.config
    n_cbp = int(result.tables["table1"].iloc[0]["cbp"])
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>myocomp CBP study report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Back-muscle composition and chronic back pain</h1>",
        f"<p>myocomp study report, generated {now_utc().strftime('%Y-%m-%d %H:%M UTC')}."
        f" {result.n_analysed:,} participants in the adjusted model; {n_cbp:,} with CBP. "
        "Analyses follow Ziegelmayer et al., <i>Lancet Reg Health Eur</i> 54:101323 (2025).</p>",
        "<nav><ol>" + "".join(f"<li><a href='#{s}'>{s.replace('-', ' ').title()}</a></li>"
                               for s in SECTIONS) + "</ol></nav>",
        "<h2 id='summary'>1. Summary</h2>", _key_results(result),
        "<h2 id='data'>2. Data</h2>",
        f"<p>Metrics from the {html.escape(join['source'])}, muscle group "
        f"<code>{html.escape(cfg.group)}</code>. Phenotype rows: {join['n_phenotypes']:,}; "
        f"metric rows: {join['n_metrics']:,}; joined on participant_id: {join['n_joined']:,}. "
        f"Phenotypes without metrics: {join['n_phenotypes_without_metrics']:,}; metrics "
        f"without phenotypes: {join['n_metrics_without_phenotypes']:,}.</p>",
    ]
    if join["phenotypes_without_metrics_first"] or join["metrics_without_phenotypes_first"]:
        parts.append("<p class='caption'>First unmatched ids: phenotypes "
                     f"{html.escape(', '.join(join['phenotypes_without_metrics_first']))}; "
                     f"metrics {html.escape(', '.join(join['metrics_without_phenotypes_first']))}"
                     "</p>")
    return parts + _qc_statements(data, result.qc_exclusion)


def _analysis_sections(result: StudyResult) -> list[str]:
    t, cfg = result.tables, result.config
    return [
        "<p>Missing values are handled complete-case per model; the rows dropped by each model "
        "are listed in section 10.</p>",
        "<h2 id='table1'>3. Table 1: characteristics by CBP status</h2>",
        _table(table1_display(t["table1"]), ["label", "level", "statistic", "overall", "no_cbp",
                                             "cbp", "p", "test", "n_missing"]),
        "<p class='caption'>n (%) with chi-square test; median [IQR] with Mann–Whitney U "
        "test.</p>",
        "<h2 id='physical-activity'>4. Physical activity</h2>",
        _table(t["pa_prevalence"], ["pa_category", "met_range", "n", "events", "prevalence",
                                    "lower", "upper", "chi2", "df", "p"]),
        _img(result.figures["pa"], "CBP by physical activity",
             "Figure 1. (a) CBP prevalence by PA category with Wilson 95 % CI; (b) unadjusted "
             "logistic regression of CBP on a natural cubic spline (4 df) of log10(MET + 1), "
             "95 % CI band; dashed lines: category breaks."),
        "<h2 id='main-models'>5. Mixed logistic models of CBP</h2>",
        "<p>Random intercept per site; maximum likelihood "
        f"({'Laplace' if cfg.nagq == 1 else f'adaptive Gauss–Hermite, nAGQ = {cfg.nagq}'}). "
        "Adjusted model: CBP ~ Z InterMAT + Z LMM + age + sex + diabetes + dyslipidaemia + "
        "osteoporosis + osteoarthritis + PA category + (1 | site). ORs per 2 units of Z.</p>",
        _table(t["main_models"], _OR_COLS),
        _img(result.figures["forest_main"], "forest plot of main models",
             "Figure 2. ORs per 2 units of Z of InterMAT and LMM in the adjusted, unadjusted "
             "and single-marker models."),
        "<h2 id='strata'>6. Strata</h2>",
        _table(t["strata_models"], ["stratum", "level", "label", "OR", "lower", "upper", "p",
                                    "n", "events", "n_dropped", "note"]),
        _img(result.figures["forest_strata"], "forest plot of strata",
             "Figure 3. Adjusted ORs within strata of osteoarthritis, osteoporosis, sex and "
             "physical activity (the stratifying variable leaves the model)."),
        "<h2 id='symptom-burden'>7. Symptom burden among participants with CBP</h2>",
        f"<p>Moderate-to-severe symptoms: pain_intensity ≥ {cfg.symptom_threshold:g}; mixed "
        "logistic model among participants with CBP. Sensitivity: proportional-odds model of "
        "the pain category (0–3 / 4–6 / 7–10) with site as a fixed effect.</p>",
        _table(t["symptom_burden"], _OR_COLS),
        "<h3>Ordinal (proportional-odds) sensitivity model</h3>",
        _table(t["symptom_ordinal"], ["label", "unit", "OR", "lower", "upper", "p", "n",
                                      "n_dropped", "note"]),
        _img(result.figures["forest_symptoms"], "symptom burden forest plot",
             "Figure 4. ORs of moderate-to-severe pain (binary) and of a higher pain category "
             "(ordinal) per 2 units of Z."),
        "<h2 id='interaction'>8. InterMAT × LMM interaction</h2>",
        _table(t["interaction_model"], _OR_COLS),
        _img(result.figures["interaction"], "interaction heatmap",
             "Figure 5. (a) Predicted CBP probability from the adjusted model with the "
             "InterMAT × LMM product term over Z in [−2, 2]², at reference covariates and site "
             "effect 0; (b) observed CBP prevalence in the 5 × 5 cells of the Z quintiles."),
        "<h3>Observed prevalence by Z quintiles</h3>", _table(t["interaction_observed"]),
        "<p class='caption'>The predicted grid of panel (a) is tables/interaction_predicted.csv;"
        " the spline curve of Figure 1b is tables/met_spline.csv.</p>",
    ]


def _nomogram_sections(result: StudyResult) -> list[str]:
    t, cfg = result.tables, result.config
    return [
        "<h2 id='nomogram'>9. Nomogram and validation</h2>",
        "<p>Fixed-effects logistic model of all variables of the adjusted model (no site "
        "term), built into a nomogram as R's rms does: the widest-ranging predictor spans "
        "0–100 points; axes cover the 1st–99th percentiles. "
        f"Bootstrap: B = {cfg.bootstrap}, seed {cfg.seed}.</p>",
        _img(result.figures["nomogram"], "nomogram", "Figure 6. Nomogram for CBP (also as "
             "figures/nomogram.svg)."),
        "<p>Risk calculator of this model (one self-contained page, works offline): "
        "<a id='calculator-link' href='calculator.html'>calculator.html</a>.</p>",
        _table(t["validation"]),
        _table(t["bootstrap_validation"]),
        _img(result.figures["calibration"], "calibration", "Figure 7. Calibration of the "
             "nomogram model (deciles of predicted probability, Wilson 95 % CI)."),
        _table(t["calibration_curve"]),
        _img(result.figures["roc"], "ROC", "Figure 8. ROC curve of the nomogram model."),
        "<h3>Points table</h3>", _table(t["nomogram_points"], max_rows=400),
        "<h3>Total points → probability</h3>", _table(t["nomogram_total_points"]),
        "<h3>Coefficients of the nomogram model</h3>", _table(t["nomogram_model"]),
        "<h2 id='models'>10. Models fitted and missing data</h2>",
        _table(t["models"]),
        "<h2 id='data-dictionary'>11. Data dictionary</h2>",
        "<h3>Variables</h3>",
    ]


def _dictionary_sections(result: StudyResult, data: pd.DataFrame | None) -> list[str]:
    cfg = result.config
    parts: list[str] = []
    var_rows = []
    for name, unit, meaning in _VARIABLES:
        source = cfg.columns.get(name, name) if name not in (
            "female", "pa_category", "symptomatic", "pain_category") else "derived"
        missing = ("" if data is None or name not in data.columns
                   else f"{int(data[name].isna().sum()):,}")
        var_rows.append({"variable": name, "label": LABELS.get(name, ""), "unit": unit,
                         "meaning": meaning, "source column": source, "missing": missing})
    parts.append(_table(pd.DataFrame(var_rows)))
    parts.append("<h3>Muscle composition metrics</h3>")
    parts.append(_table(pd.DataFrame(METRIC_DEFINITIONS,
                                     columns=["metric", "unit", "definition"])))
    params = [{"parameter": k, "value": str(v)} for k, v in cfg.to_dict()["options"].items()]
    params += [{"parameter": f"sex_coding[{k}]", "value": v} for k, v in cfg.sex_coding.items()]
    z = result.model.get("zscores", {})
    params.append({"parameter": "zscore reference", "value": str(z)[:600]})
    params += [
        {"parameter": "InterMAT biomarker", "value": cfg.intermat_metric},
        {"parameter": "odds-ratio scale of Z-scores", "value": "per 2 units"},
        {"parameter": "heatmap reference covariates",
         "value": str(result.model.get("reference_covariates"))},
        {"parameter": "nomogram axis range", "value": "1st–99th percentile"},
    ]
    parts.append("<h3>Parameters</h3>")
    parts.append(_table(pd.DataFrame(params)))
    parts.append("<h3>Output files</h3><p>tables/*.csv (every table above), figures/*.png, "
                 "figures/nomogram.svg, model.json (Z reference, fixed effects of the main model "
                 "and of the nomogram model, nomogram) — use <code>myocomp predict</code>.</p>")
    parts.append("<h2 id='software'>12. Software versions</h2>")
    parts.append(_table(pd.DataFrame(list(software_versions().items()),
                                     columns=["software", "version"])))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    parts.append(f"<p class='caption'>Run time: {html.escape(timing)}.</p></body></html>")
    return parts


def render_report(result: StudyResult, data: pd.DataFrame | None = None) -> str:
    """The report as one HTML string (every figure inline as base64 PNG)."""
    parts = [*_head_and_data(result, data), *_analysis_sections(result), *_nomogram_sections(result),
             *_dictionary_sections(result, data)]
    return "\n".join(parts)


def write_report(result: StudyResult, data: pd.DataFrame | None = None) -> Path:
    """Write ``result.report_path`` atomically and return it."""
    return write_text(render_report(result, data), result.report_path)
