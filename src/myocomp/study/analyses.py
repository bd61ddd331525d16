"""The analyses of the CBP study (Ziegelmayer et al., Lancet Reg Health Eur 2025), each a
function of the prepared analysis table returning a tidy DataFrame.

The prepared table (:func:`prepare_analysis_data`) has our phenotype columns plus
``female`` (0/1), ``pa_category`` ("low" < 500 <= "moderate" <= 5000 < "high" MET-min/week),
``pa_low``/``pa_high`` (0/1), ``z_intermat``/``z_lmm`` (Z-scores), ``symptomatic``
(pain_intensity >= threshold, 0/1) and ``pain_category`` (0: 0-3, 1: 4-6, 2: 7-10).
Missing values are handled complete-case per model; every model table reports ``n`` and
``n_dropped``. Odds ratios of Z-scores are per 2 units of Z (as in the NAKO paper); of age per
year; of 0/1 covariates yes vs no.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from myocomp.errors import DataError, MyocompError
from myocomp.stats.validation import wilson_interval
from myocomp.study.phenotypes import StudyConfig

__all__ = [
    "PA_TERM",
    "COVARIATES",
    "MARKERS",
    "LABELS",
    "ModelFit",
    "prepare_analysis_data",
    "complete_cases",
    "main_formula",
    "fit_model",
    "odds_ratio_table",
    "table1",
    "pa_prevalence",
    "met_spline",
    "main_models",
    "strata_models",
    "symptom_burden",
    "ordinal_sensitivity",
    "interaction_analysis",
    "nomogram_analysis",
]

PA_TERM = "C(pa_category, Treatment('moderate'))"
MARKERS: tuple[str, ...] = ("z_intermat", "z_lmm")
COVARIATES: tuple[str, ...] = (
    "age", "female", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis", PA_TERM,
)
PA_LEVELS: tuple[str, ...] = ("low", "moderate", "high")
PAIN_CATEGORIES: tuple[str, ...] = ("none-mild (0-3)", "moderate (4-6)", "severe (7-10)")

#: display names of variables and model terms
LABELS: dict[str, str] = {
    "z_intermat": "InterMAT (Z)",
    "z_lmm": "LMM (Z)",
    "z_intermat:z_lmm": "InterMAT × LMM (Z²)",
    "age": "Age (years)",
    "female": "Female sex",
    "sex": "Sex",
    "diabetes": "Diabetes",
    "dyslipidemia": "Dyslipidaemia",
    "osteoporosis": "Osteoporosis",
    "osteoarthritis": "Osteoarthritis",
    "pa_category": "Physical activity",
    f"{PA_TERM}[T.low]": "PA low (< 500) vs moderate",
    f"{PA_TERM}[T.high]": "PA high (> 5,000) vs moderate",
    "bmi": "BMI (kg/m²)",
    "height_cm": "Height (cm)",
    "met_min_week": "Physical activity (MET-min/week)",
    "pain_intensity": "Pain intensity (0-10)",
    "volume_ml": "Back-muscle volume (mL)",
    "lean_volume_ml": "Lean back-muscle volume (mL)",
    "lmm": "LMM (mL·m²/kg)",
    "intermat_volume_ml": "InterMAT volume (mL)",
    "intermat_fraction": "InterMAT fraction",
    "ff_mean": "Mean fat fraction",
    "site": "Study site",
    "cbp": "Chronic back pain",
}


# ------------------------------------------------------------------------------------------
# preparation
# ------------------------------------------------------------------------------------------
def _zscore_columns(data: pd.DataFrame, config: StudyConfig, zmodel: Any | None
                    ) -> tuple[pd.DataFrame, Any]:
    from myocomp.stats.zscores import ZScoreModel

    if zmodel is None:
        zmodel = ZScoreModel.fit(data, {config.intermat_metric: "z_intermat", "lmm": "z_lmm"},
                                 method=config.zscore_method, height=config.zscore_height)
    z = zmodel.zscores(data)
    return z[["z_intermat", "z_lmm"]].astype(float), zmodel


def pa_category(met_min_week: pd.Series, breaks: Sequence[float] = (500.0, 5000.0)) -> pd.Series:
    """PA category of MET-min/week: "low" (< lo), "moderate" (lo..hi), "high" (> hi); NaN stays."""
    lo, hi = breaks
    met = pd.to_numeric(met_min_week, errors="coerce")
    cat = np.where(met < lo, "low", np.where(met > hi, "high", "moderate")).astype(object)
    cat[met.isna().to_numpy()] = None
    return pd.Series(cat, index=met_min_week.index, name="pa_category", dtype=object)


def prepare_analysis_data(joined: pd.DataFrame, config: StudyConfig | None = None,
                          zmodel: Any | None = None) -> tuple[pd.DataFrame, Any]:
    """Add the derived analysis columns to the joined phenotype-metrics table.

    Z-scores use ``config.zscore_method``; pass a fitted ``zmodel`` to apply a saved reference
    unchanged. Returns ``(table, zmodel)``.
    """
    config = config or StudyConfig()
    d = joined.copy()
    d["female"] = d["sex"].map({"female": 1.0, "male": 0.0}).astype(float)
    d["pa_category"] = pa_category(d["met_min_week"], config.pa_breaks)
    d["pa_low"] = (d["pa_category"] == "low").astype(float).where(d["pa_category"].notna())
    d["pa_high"] = (d["pa_category"] == "high").astype(float).where(d["pa_category"].notna())
    z, zmodel = _zscore_columns(d, config, zmodel)
    d["z_intermat"] = z["z_intermat"]
    d["z_lmm"] = z["z_lmm"]
    pain = d["pain_intensity"]
    d["symptomatic"] = (pain >= config.symptom_threshold).astype(float).where(pain.notna())
    d["pain_category"] = pd.cut(pain, [-0.5, 3.5, 6.5, 10.5], labels=False).astype(float)
    return d, zmodel


def _columns_of(terms: Sequence[str]) -> list[str]:
    cols = []
    for t in terms:
        if t == PA_TERM:
            cols.append("pa_category")
        else:
            cols.extend(t.split(":"))
    return list(dict.fromkeys(cols))


def complete_cases(d: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """Rows of ``d`` with no missing value in ``columns``, and the number of rows dropped."""
    cc = d.dropna(subset=list(columns))
    return cc, len(d) - len(cc)


def main_formula(outcome: str = "cbp", markers: Sequence[str] = MARKERS,
                 covariates: Sequence[str] = COVARIATES) -> str:
    """Patsy formula of the fixed part, e.g. ``cbp ~ z_intermat + z_lmm + age + ...``."""
    terms = list(markers) + list(covariates)
    return f"{outcome} ~ " + (" + ".join(terms) if terms else "1")


@dataclass
class ModelFit:
    """One fitted mixed logistic model with its bookkeeping."""

    name: str
    description: str
    formula: str
    n: int
    events: int
    n_dropped: int
    results: Any | None  # MixedLogitResults, None when not estimable
    note: str = ""


def fit_model(name: str, description: str, d: pd.DataFrame, outcome: str,
              terms: Sequence[str], *, nagq: int = 1, min_events: int = 10) -> ModelFit:
    """Complete-case mixed logistic fit ``outcome ~ terms + (1 | site)``.

    Fits that cannot be estimated (too few events, a failed fit) return ``results=None`` and a
    ``note`` instead of raising, so that one thin stratum does not stop the study.
    """
    from myocomp.stats.glmm import fit_mixed_logit

    formula = main_formula(outcome, (), terms)
    columns = [outcome, "site", *_columns_of(terms)]
    cc, dropped = complete_cases(d[list(dict.fromkeys(columns))], columns)
    cc = cc.assign(**{c: cc[c].cat.remove_unused_categories() for c in cc.columns
                      if isinstance(cc[c].dtype, pd.CategoricalDtype)})
    events = int(cc[outcome].sum()) if len(cc) else 0
    fit = ModelFit(name, description, formula, len(cc), events, dropped, None)
    if events < min_events or len(cc) - events < min_events:
        fit.note = f"not estimable: {events} events among {len(cc)}"
        return fit
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = fit_mixed_logit(formula, cc, groups="site", nagq=int(nagq))
        notes = sorted({str(w.message).split(";")[0] for w in caught
                        if issubclass(w.category, UserWarning)})
        fit.note = "; ".join(notes)
        problem = _not_estimable(res)
        if problem is None:
            fit.results = res
        else:
            fit.note = problem
    except (MyocompError, np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        fit.note = f"not estimable: {str(exc).splitlines()[0]}"
    return fit


def _not_estimable(res) -> str | None:
    """Why a mixed-model fit gives no usable estimates, or None: infinite or huge coefficients
    ((quasi-)separation), or an information matrix that is not positive definite at the fit
    (a variance <= 0 on the diagonal of its inverse: no standard error)."""
    params = res.params.to_numpy(float)
    if not (np.isfinite(params).all() and np.abs(params).max() < _SEPARATION_LIMIT):
        return "not estimable: (quasi-)separation, infinite estimates"
    variances = np.diag(res.vcov.to_numpy(float))
    if not (np.isfinite(variances).all() and (variances > 0).all()):
        bad = [str(n) for n, v in zip(res.params.index, variances, strict=True) if not (np.isfinite(v) and v > 0)]
        return (f"not estimable: information matrix not positive definite at the fit (no standard error "
                f"for {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; too few events for the covariates?)")
    return None


def model_frame(d: pd.DataFrame) -> pd.DataFrame:
    """``d`` with its text columns ``pa_category`` and ``site`` as pandas Categoricals with
    sorted levels: the levels patsy and the mixed model find in them, coded once for all the
    study's models instead of once per model (:func:`fit_model` drops the levels a model's
    rows lack, as a model fitted on text would not have them)."""
    out = {}
    for col in ("pa_category", "site"):
        if col in d.columns and not isinstance(d[col].dtype, pd.CategoricalDtype):
            levels = list(d[col].dropna().unique())
            if all(isinstance(v, str) for v in levels):
                out[col] = pd.Categorical(d[col], categories=sorted(levels))
    return d.assign(**out) if out else d


#: |log-odds coefficient| above which a fit is taken as separated (no finite MLE)
_SEPARATION_LIMIT = 15.0


def _scale_and_unit(term: str) -> tuple[float, str]:
    if term.startswith("z_") and ":" not in term:
        return 2.0, "per 2 Z"
    if term == "z_intermat:z_lmm":
        return 1.0, "per 1 Z × 1 Z"
    if term == "age":
        return 1.0, "per year"
    return 1.0, "yes vs no" if not term.startswith("C(") else "vs moderate"


def odds_ratio_table(fit: ModelFit, terms: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy OR table of one :class:`ModelFit`: model, term, label, unit, OR, lower, upper, p,
    estimate, se, n, events, n_dropped, group_sd, note (one NaN row per term if not estimable)."""
    cols = ["model", "description", "term", "label", "unit", "OR", "lower", "upper", "p",
            "estimate", "se", "n", "events", "n_dropped", "group_sd", "note"]
    rows = []
    res = fit.results
    if res is None:
        for term in terms or MARKERS:
            rows.append({"model": fit.name, "description": fit.description, "term": term,
                         "label": LABELS.get(term, term), "unit": _scale_and_unit(term)[1],
                         "n": fit.n, "events": fit.events, "n_dropped": fit.n_dropped,
                         "note": fit.note})
        return pd.DataFrame(rows, columns=cols)
    if terms is None:
        names = [t for t in res.params.index if t != "Intercept"]
        terms = sorted(names, key=lambda t: (0 if t.startswith("z_") else
                                             (2 if t.startswith("C(") else 1)))
    for term in terms:
        if term not in res.params.index:
            continue
        scale, unit = _scale_and_unit(term)
        orr = res.odds_ratios(scale=scale, terms=[term]).loc[term]
        rows.append({
            "model": fit.name, "description": fit.description, "term": term,
            "label": LABELS.get(term, term), "unit": unit, "OR": float(orr["OR"]),
            "lower": float(orr["lower"]), "upper": float(orr["upper"]), "p": float(orr["p"]),
            "estimate": float(res.params[term]), "se": float(res.bse[term]), "n": fit.n,
            "events": fit.events, "n_dropped": fit.n_dropped, "group_sd": float(res.group_sd),
            "note": fit.note,
        })
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------
# descriptive
# ------------------------------------------------------------------------------------------
def _median_iqr(x: pd.Series) -> dict[str, float]:
    """Median, quartiles and the decimals to show them with (0 for integer-valued variables
    such as age in years, else by magnitude)."""
    x = x.dropna()
    if x.empty:
        return {"": np.nan, "_q1": np.nan, "_q3": np.nan, "decimals": np.nan}
    q1, q2, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    scale = max(abs(q1), abs(q2), abs(q3))
    if np.allclose([q1, q2, q3], np.round([q1, q2, q3])) and (x == np.round(x)).all():
        digits = 0
    else:
        digits = 0 if scale >= 100 else (1 if scale >= 1 else 3)
    return {"": float(q2), "_q1": float(q1), "_q3": float(q3), "decimals": digits}


def _n_pct(k: int, n: int) -> dict[str, float]:
    return {"": k, "_percent": 100.0 * k / n if n else np.nan}


def _cells(stats_of: Callable[[pd.DataFrame], dict[str, float]],
           groups: dict[str, pd.DataFrame]) -> dict[str, float]:
    """``{group + suffix: value}`` for each group, plus ``decimals`` if the statistic has it."""
    out: dict[str, float] = {}
    for k, g in groups.items():
        for suffix, value in stats_of(g).items():
            out[suffix if suffix == "decimals" else k + suffix] = value
    return out


TABLE1_CONTINUOUS: tuple[str, ...] = (
    "age", "bmi", "height_cm", "met_min_week", "pain_intensity", "volume_ml", "lean_volume_ml",
    "lmm", "intermat_volume_ml", "intermat_fraction", "ff_mean", "z_intermat", "z_lmm",
)
TABLE1_CATEGORICAL: tuple[str, ...] = (
    "sex", "pa_category", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis", "site",
)


TABLE1_GROUPS: tuple[str, ...] = ("overall", "no_cbp", "cbp")


def table1(d: pd.DataFrame, outcome: str = "cbp") -> pd.DataFrame:
    """Table 1 by ``outcome`` status: n (%) for categorical variables with a chi-square test,
    median [IQR] for continuous ones with a Mann-Whitney U test. Numbers only; the report
    formats them (:func:`myocomp.study.report.table1_display`).

    Columns: variable, label, level, statistic; per group G of overall, no_cbp, cbp: ``G``
    (the count, or the median), ``G_percent`` (n (%) rows), ``G_q1``/``G_q3`` (median [IQR]
    rows); then p, test, n_missing and ``decimals`` (of the median [IQR] as shown).
    """
    d = d[d[outcome].notna()]
    groups = {"overall": d, "no_cbp": d[d[outcome] == 0], "cbp": d[d[outcome] == 1]}
    rows: list[dict[str, Any]] = [{
        "variable": "n", "label": "Participants", "level": "", "statistic": "n",
        **{k: len(g) for k, g in groups.items()}, "p": np.nan, "test": "", "n_missing": 0,
    }]
    for var in TABLE1_CONTINUOUS:
        if var not in d.columns or d[var].notna().sum() == 0:
            continue
        a, b = groups["no_cbp"][var].dropna(), groups["cbp"][var].dropna()
        p = (float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
             if len(a) and len(b) else np.nan)
        rows.append({"variable": var, "label": LABELS.get(var, var), "level": "",
                     "statistic": "median [IQR]",
                     **_cells(lambda g, var=var: _median_iqr(g[var]), groups),
                     "p": p, "test": "Mann-Whitney U", "n_missing": int(d[var].isna().sum())})
    for var in TABLE1_CATEGORICAL:
        if var in d.columns and d[var].notna().sum() > 0:
            rows.extend(_categorical_rows(d, groups, var, outcome))
    cols = ["variable", "label", "level", "statistic"]
    cols += [f"{g}{s}" for g in TABLE1_GROUPS for s in ("", "_percent", "_q1", "_q3")]
    return pd.DataFrame(rows, columns=[*cols, "p", "test", "n_missing", "decimals"])


def _categorical_rows(d: pd.DataFrame, groups: dict[str, pd.DataFrame], var: str,
                      outcome: str) -> list[dict[str, Any]]:
    binary = var in ("diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis")
    sub = d[d[var].notna()]
    values = sub[var].astype(float) if binary else sub[var]
    if binary:
        levels: list[Any] = [1.0]
    elif var == "pa_category":
        levels = [lv for lv in PA_LEVELS if (values == lv).any()]
    else:
        levels = sorted(values.unique(), key=str)
    tab = pd.crosstab(values, sub[outcome])
    p = np.nan
    if tab.shape[0] > 1 and tab.shape[1] > 1:
        p = float(stats.chi2_contingency(tab.to_numpy(), correction=False)[1])
    rows = []
    for i, level in enumerate(levels):
        def count(g: pd.DataFrame, level: Any = level) -> dict[str, float]:
            gv = g[var].dropna()
            gv = gv.astype(float) if binary else gv
            return _n_pct(int((gv == level).sum()), len(gv))

        rows.append({"variable": var, "label": LABELS.get(var, var),
                     "level": "yes" if level == 1.0 else str(level), "statistic": "n (%)",
                     **_cells(count, groups), "p": p if i == 0 else np.nan,
                     "test": "chi-square" if i == 0 else "",
                     "n_missing": int(d[var].isna().sum()) if i == 0 else 0})
    return rows


def pa_prevalence(d: pd.DataFrame, outcome: str = "cbp") -> pd.DataFrame:
    """CBP prevalence by PA category with Wilson 95 % CIs and the chi-square test of
    independence (3 × 2 table; same p on every row). Columns: pa_category, met_range, n,
    events, prevalence, lower, upper, chi2, df, p."""
    cc = d.dropna(subset=["pa_category", outcome])
    tab = pd.crosstab(cc["pa_category"], cc[outcome]).reindex(PA_LEVELS).dropna()
    n = tab.sum(axis=1).to_numpy(float)
    k = tab.get(1, pd.Series(0, index=tab.index)).to_numpy(float)
    lo, hi = wilson_interval(k, n)
    chi2, p, dof, _ = stats.chi2_contingency(tab.to_numpy(), correction=False)
    ranges = {"low": "< 500", "moderate": "500–5,000", "high": "> 5,000"}
    return pd.DataFrame({
        "pa_category": tab.index, "met_range": [ranges[c] for c in tab.index],
        "n": n.astype(int), "events": k.astype(int), "prevalence": k / n, "lower": lo,
        "upper": hi, "chi2": chi2, "df": dof, "p": p,
    }).reset_index(drop=True)


def met_spline(d: pd.DataFrame, outcome: str = "cbp", df: int = 4, n_grid: int = 200
               ) -> pd.DataFrame:
    """Unadjusted logistic regression of ``outcome`` on a natural cubic regression spline
    (patsy ``cr``, ``df`` degrees of freedom, centred) of log10(MET-min/week + 1).

    Returns the grid: met_min_week, probability, lower, upper (95 % CI from the delta method
    on the log-odds scale), and ``p_nonlinear`` (likelihood-ratio test against a linear
    term, same on every row)."""
    from statsmodels.genmod.families import Binomial
    from statsmodels.genmod.generalized_linear_model import GLM

    cc = d.dropna(subset=["met_min_week", outcome])[["met_min_week", outcome]].copy()
    cc["log_met"] = np.log10(cc["met_min_week"] + 1.0)
    fam = Binomial()
    spline = GLM.from_formula(f"{outcome} ~ cr(log_met, df={int(df)}, constraints='center')",
                              cc, family=fam).fit()
    linear = GLM.from_formula(f"{outcome} ~ log_met", cc, family=fam).fit()
    lr = 2.0 * (spline.llf - linear.llf)
    p_nl = float(stats.chi2.sf(lr, spline.df_model - linear.df_model))
    lo, hi = np.quantile(cc["log_met"], [0.005, 0.995])
    grid = pd.DataFrame({"log_met": np.linspace(lo, hi, n_grid)})
    pred = spline.get_prediction(grid).summary_frame(alpha=0.05)
    return pd.DataFrame({
        "met_min_week": 10.0 ** grid["log_met"] - 1.0,
        "probability": pred["mean"].to_numpy(),
        "lower": pred["mean_ci_lower"].to_numpy(),
        "upper": pred["mean_ci_upper"].to_numpy(),
        "p_nonlinear": p_nl,
    })


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------
def main_models(d: pd.DataFrame, nagq: int = 1) -> tuple[pd.DataFrame, dict[str, ModelFit]]:
    """The adjusted main model, the unadjusted two-marker model and the single-marker models
    (unadjusted and adjusted). Returns the OR table of every term and the fits."""
    specs = [
        ("adjusted", "InterMAT + LMM, adjusted", list(MARKERS) + list(COVARIATES)),
        ("unadjusted", "InterMAT + LMM, unadjusted", list(MARKERS)),
        ("intermat_only_adjusted", "InterMAT alone, adjusted", ["z_intermat", *COVARIATES]),
        ("lmm_only_adjusted", "LMM alone, adjusted", ["z_lmm", *COVARIATES]),
        ("intermat_only_unadjusted", "InterMAT alone, unadjusted", ["z_intermat"]),
        ("lmm_only_unadjusted", "LMM alone, unadjusted", ["z_lmm"]),
    ]
    md = model_frame(d)
    fits = {name: fit_model(name, desc, md, "cbp", terms, nagq=nagq) for name, desc, terms in specs}
    table = pd.concat([odds_ratio_table(f) for f in fits.values()], ignore_index=True)
    return table, fits


#: the strata of :func:`strata_models`: variable, (value, label) of each level, and the term
#: that leaves the model
STRATA: tuple[tuple[str, tuple[tuple[Any, str], ...], str], ...] = (
    ("osteoarthritis", ((1.0, "yes"), (0.0, "no")), "osteoarthritis"),
    ("osteoporosis", ((1.0, "yes"), (0.0, "no")), "osteoporosis"),
    ("sex", (("female", "female"), ("male", "male")), "female"),
    ("pa_category", tuple((lv, lv) for lv in PA_LEVELS), PA_TERM),
)


def strata_models(d: pd.DataFrame, nagq: int = 1,
                  variables: Sequence[str] | None = None) -> pd.DataFrame:
    """The adjusted main model within strata of osteoarthritis, osteoporosis, sex and PA
    category (the stratifying variable leaves the model; ``variables``: only these strata, in
    this order). OR table of the two markers with a ``stratum`` and ``level`` column."""
    chosen = [s[0] for s in STRATA] if variables is None else list(variables)
    strata = [next(s for s in STRATA if s[0] == v) for v in chosen]
    tables = []
    d = model_frame(d)
    for var, levels, term in strata:
        covs = [c for c in COVARIATES if c != term]
        for value, label in levels:
            sub = d[d[var] == value]
            fit = fit_model(f"{var}={label}", f"{LABELS.get(var, var)}: {label}", sub, "cbp",
                            [*MARKERS, *covs], nagq=nagq)
            t = odds_ratio_table(fit, MARKERS)
            t.insert(0, "level", label)
            t.insert(0, "stratum", var)
            tables.append(t)
    return pd.concat(tables, ignore_index=True)


def symptom_burden(d: pd.DataFrame, threshold: float = 4.0, nagq: int = 1
                   ) -> tuple[pd.DataFrame, ModelFit]:
    """Moderate-to-severe symptoms (pain_intensity >= threshold) among people with CBP:
    adjusted mixed logistic model. Returns the OR table and the fit."""
    sub = model_frame(d[d["cbp"] == 1])
    fit = fit_model("symptom_burden", f"pain intensity >= {threshold:g} among CBP", sub,
                    "symptomatic", [*MARKERS, *COVARIATES], nagq=nagq)
    return odds_ratio_table(fit), fit


def ordinal_sensitivity(d: pd.DataFrame) -> pd.DataFrame:
    """Proportional-odds (cumulative logit) model of the pain category (0-3 / 4-6 / 7-10)
    among people with CBP, with the adjusted model's covariates and site as fixed effects,
    fitted to the maximum of its likelihood (:func:`myocomp.stats.ordinal.fit_ordered_logit`,
    Newton-Raphson on the analytic score). ORs > 1 mean higher pain categories. A fit that
    cannot be estimated or does not converge is reported as NaN with a ``note``."""
    from myocomp.stats.ordinal import fit_ordered_logit

    sub = d[d["cbp"] == 1]
    exog_cols = ["z_intermat", "z_lmm", "age", "female", "diabetes", "dyslipidemia",
                 "osteoporosis", "osteoarthritis", "pa_low", "pa_high"]
    cc, dropped = complete_cases(sub, ["pain_category", "site", *exog_cols])
    cols = ["model", "term", "label", "unit", "OR", "lower", "upper", "p", "estimate", "se",
            "n", "n_dropped", "note"]

    def not_estimable(note: str) -> pd.DataFrame:
        return pd.DataFrame([{"model": "ordinal", "term": t, "label": LABELS[t], "n": len(cc),
                              "n_dropped": dropped, "note": note} for t in MARKERS],
                            columns=cols)

    if len(cc) < 30 or cc["pain_category"].nunique() < 2:
        return not_estimable("not estimable: too few people")
    exog = cc[exog_cols].astype(float)
    sites = pd.get_dummies(cc["site"].astype(str), prefix="site", drop_first=True, dtype=float)
    exog = pd.concat([exog, sites], axis=1)
    exog = exog.loc[:, exog.std() > 0]
    # category codes 0 .. K-1 of the categories present
    codes = np.unique(cc["pain_category"].astype(int), return_inverse=True)[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fit_ordered_logit(exog, codes.reshape(-1))
    except (MyocompError, np.linalg.LinAlgError) as exc:
        return not_estimable(f"not estimable: {str(exc).splitlines()[0]}")
    if not res.converged:
        return not_estimable("not estimable: the ordinal model did not converge")
    ci = res.conf_int()
    labels = {"pa_low": LABELS[f"{PA_TERM}[T.low]"], "pa_high": LABELS[f"{PA_TERM}[T.high]"]}
    rows = []
    for term in [c for c in exog_cols if c in exog.columns]:
        scale, unit = _scale_and_unit(term)
        if term in ("pa_low", "pa_high"):
            unit = "vs moderate"
        rows.append({"model": "ordinal", "term": term, "label": labels.get(term) or LABELS[term],
                     "unit": unit, "OR": math.exp(scale * res.params[term]),
                     "lower": math.exp(scale * ci.loc[term, "lower"]),
                     "upper": math.exp(scale * ci.loc[term, "upper"]),
                     "p": float(res.pvalues[term]), "estimate": float(res.params[term]),
                     "se": float(res.bse[term]), "n": len(cc), "n_dropped": dropped,
                     "note": ""})
    return pd.DataFrame(rows, columns=cols)


def reference_covariates(d: pd.DataFrame) -> dict[str, Any]:
    """Reference covariate values of the predicted heatmap: median age, male, no
    comorbidity, moderate physical activity."""
    return {"age": float(np.nanmedian(d["age"])), "female": 0.0, "diabetes": 0.0,
            "dyslipidemia": 0.0, "osteoporosis": 0.0, "osteoarthritis": 0.0,
            "pa_category": "moderate"}


def interaction_analysis(d: pd.DataFrame, nagq: int = 1, grid: int = 41
                         ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, ModelFit]:
    """The main model plus ``z_intermat:z_lmm``.

    Returns ``(or_table, predicted, observed, fit)``: ``predicted`` is the predicted CBP
    probability on a ``grid`` × ``grid`` lattice of Z in [-2, 2]² at the reference covariates
    (:func:`reference_covariates`, site effect 0); ``observed`` the CBP prevalence in the 5 × 5
    cells of the Z quintiles (columns intermat_quintile, lmm_quintile, n, events, prevalence,
    and the Z ranges).
    """
    terms = [*MARKERS, "z_intermat:z_lmm", *COVARIATES]
    fit = fit_model("interaction", "InterMAT × LMM, adjusted", model_frame(d), "cbp", terms,
                    nagq=nagq)
    table = odds_ratio_table(fit)
    z = np.linspace(-2.0, 2.0, grid)
    zi, zl = np.meshgrid(z, z, indexing="ij")
    ref = reference_covariates(d)
    newdata = pd.DataFrame({"z_intermat": zi.ravel(), "z_lmm": zl.ravel(),
                            **{k: [v] * zi.size for k, v in ref.items()}})
    if fit.results is not None:
        # patsy needs every level of the categorical: append and drop the other PA levels
        extra = newdata.iloc[:2].copy()
        extra["pa_category"] = ["low", "high"]
        prob = fit.results.predict(pd.concat([newdata, extra], ignore_index=True))
        prob = prob.to_numpy()[: len(newdata)]
    else:
        prob = np.full(len(newdata), np.nan)
    predicted = pd.DataFrame({"z_intermat": zi.ravel(), "z_lmm": zl.ravel(),
                              "probability": prob})
    cc = d.dropna(subset=["z_intermat", "z_lmm", "cbp"])
    qi = pd.qcut(cc["z_intermat"], 5, labels=False)
    ql = pd.qcut(cc["z_lmm"], 5, labels=False)
    obs = cc.groupby([qi.rename("intermat_quintile"), ql.rename("lmm_quintile")])
    observed = obs.agg(n=("cbp", "size"), events=("cbp", "sum"),
                       z_intermat_min=("z_intermat", "min"), z_intermat_max=("z_intermat", "max"),
                       z_lmm_min=("z_lmm", "min"), z_lmm_max=("z_lmm", "max")).reset_index()
    observed["prevalence"] = observed["events"] / observed["n"]
    observed["intermat_quintile"] += 1
    observed["lmm_quintile"] += 1
    return table, predicted, observed, fit


# ------------------------------------------------------------------------------------------
# nomogram and validation
# ------------------------------------------------------------------------------------------
_VAL_METRICS = ("c_index", "calibration_slope", "calibration_intercept", "brier")


@dataclass
class NomogramAnalysis:
    """The nomogram model and its validation."""

    formula: str
    nomogram: Any  # myocomp.stats.nomogram.Nomogram
    result: Any  # statsmodels Logit results
    n: int
    n_dropped: int
    auc: Any  # AUCResult
    brier: float
    calibration: Any  # CalibrationFit
    calibration_curve: pd.DataFrame
    bootstrap: pd.DataFrame
    y: np.ndarray
    probability: np.ndarray

    def validation_table(self) -> pd.DataFrame:
        """Tidy: metric, value, lower, upper, method."""
        rows = [
            {"metric": "AUC (C-index), apparent", "value": self.auc.auc, "lower": self.auc.lower,
             "upper": self.auc.upper, "method": "DeLong 95 % CI"},
            {"metric": "Brier score, apparent", "value": self.brier, "lower": np.nan,
             "upper": np.nan, "method": "mean squared error"},
            {"metric": "Calibration slope, apparent", "value": self.calibration.slope,
             "lower": np.nan, "upper": np.nan, "method": "logistic recalibration"},
            {"metric": "Calibration-in-the-large, apparent", "value": self.calibration.intercept,
             "lower": np.nan, "upper": np.nan, "method": "logistic recalibration"},
        ]
        b = self.bootstrap
        n_boot = int(b["n"].iloc[0])
        for key, label in (("c_index", "C-index"), ("calibration_slope", "Calibration slope"),
                           ("brier", "Brier score")):
            rows.append({"metric": f"{label}, optimism-corrected",
                         "value": float(b.loc[key, "corrected"]), "lower": np.nan,
                         "upper": np.nan,
                         "method": f"Harrell bootstrap, {n_boot} replicates "
                                   f"(optimism {float(b.loc[key, 'optimism']):+.4f})"})
        return pd.DataFrame(rows)


def nomogram_analysis(d: pd.DataFrame, B: int = 200, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> NomogramAnalysis:
    """Fixed-effects logistic model of all variables (the markers and covariates of the main
    model, no site), its nomogram (axes over the 1st-99th percentiles), apparent AUC with
    DeLong CI, Brier score, calibration, and the optimism bootstrap with ``B`` replicates."""
    from myocomp.stats.glmm import design_matrices
    from myocomp.stats.nomogram import nomogram_from_formula
    from myocomp.stats.validation import (
        brier_score,
        calibration_curve,
        calibration_slope_intercept,
        delong_auc,
        validate_logistic,
    )

    formula = main_formula("cbp", MARKERS, COVARIATES)
    cc, dropped = complete_cases(d, ["cbp", *_columns_of([*MARKERS, *COVARIATES])])
    if cc["cbp"].nunique() < 2:
        raise DataError("the nomogram needs people with and without CBP")
    cc = cc.reset_index(drop=True)
    labels = {k: v for k, v in LABELS.items() if k in cc.columns}
    nomo, result = nomogram_from_formula(formula, cc, quantiles=(0.01, 0.99), labels=labels)
    y, X, names = design_matrices(formula, cc)
    lp = X @ result.params.reindex(names).to_numpy()
    prob = special.expit(lp)
    boot = validate_logistic(formula, cc, B=B, seed=seed, progress=progress).table if B > 0 else (
        pd.DataFrame({"apparent": np.nan, "training": np.nan, "test": np.nan,
                      "optimism": np.nan, "corrected": np.nan, "n": 0},
                     index=pd.Index(_VAL_METRICS, name="metric")))
    return NomogramAnalysis(
        formula=formula, nomogram=nomo, result=result, n=len(cc), n_dropped=dropped,
        auc=delong_auc(y, lp), brier=brier_score(y, prob),
        calibration=calibration_slope_intercept(y, prob),
        calibration_curve=calibration_curve(y, prob, n_bins=10), bootstrap=boot, y=y,
        probability=prob,
    )
