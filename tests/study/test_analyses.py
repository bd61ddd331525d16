"""Single analyses on a small synthetic cohort, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import special

from myocomp.study import analyses as an
from myocomp.study.phenotypes import StudyConfig, join_metrics, validate_phenotypes
from myocomp.study.report import table1_display
from myocomp.synth.cohort import simulate_cohort


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    cohort = simulate_cohort(2000, seed=21)
    joined, _ = join_metrics(validate_phenotypes(cohort.data), None)
    d, _ = an.prepare_analysis_data(joined, StudyConfig())
    return d


def test_prepared_columns(data):
    d = data
    assert set(d["pa_category"]) == {"low", "moderate", "high"}
    assert ((d["met_min_week"] < 500) == (d["pa_category"] == "low")).all()
    assert ((d["met_min_week"] > 5000) == (d["pa_category"] == "high")).all()
    np.testing.assert_allclose(d["z_intermat"],
                               (d["intermat_volume_ml"] - d["intermat_volume_ml"].mean())
                               / d["intermat_volume_ml"].std(ddof=1))
    assert ((d["pain_intensity"] >= 4) == (d["symptomatic"] == 1)).all()
    assert d.loc[d["pain_intensity"] == 7, "pain_category"].eq(2).all()


def test_table1_and_pa_counts(data):
    d = data
    t1 = an.table1(d)
    shown = table1_display(t1).set_index("variable")
    row = t1[(t1["variable"] == "osteoarthritis")].iloc[0]
    k = int(((d["osteoarthritis"] == 1) & (d["cbp"] == 1)).sum())
    assert row["cbp"] == k and row["cbp_percent"] == pytest.approx(100 * k / d["cbp"].sum())
    assert shown.loc["osteoarthritis", "cbp"] == f"{k:,} ({100 * k / int(d['cbp'].sum()):.1f} %)"
    age = t1[t1["variable"] == "age"].iloc[0]
    q1, q2, q3 = d.loc[d["cbp"] == 1, "age"].quantile([0.25, 0.5, 0.75])
    assert (age["cbp_q1"], age["cbp"], age["cbp_q3"]) == pytest.approx((q1, q2, q3))
    assert shown.loc["age", "cbp"] == f"{q2:.0f} [{q1:.0f}–{q3:.0f}]"  # integer ages
    bmi = t1[t1["variable"] == "bmi"].iloc[0]
    q1, q2, q3 = d["bmi"].quantile([0.25, 0.5, 0.75])
    assert (bmi["overall_q1"], bmi["overall"], bmi["overall_q3"]) == pytest.approx((q1, q2, q3))
    assert shown.loc["bmi", "overall"] == f"{q2:.1f} [{q1:.1f}–{q3:.1f}]"
    assert shown.loc["n", "overall"] == f"{len(d):,}" and t1.iloc[0]["overall"] == len(d)
    assert age["p"] < 1e-6  # CBP is older in the generator
    pa = an.pa_prevalence(d).set_index("pa_category")
    expected = d.groupby("pa_category")["cbp"].agg(["size", "mean"])
    for level in ("low", "moderate", "high"):
        assert pa.loc[level, "n"] == expected.loc[level, "size"]
        assert np.isclose(pa.loc[level, "prevalence"], expected.loc[level, "mean"])
        assert pa.loc[level, "lower"] < pa.loc[level, "prevalence"] < pa.loc[level, "upper"]


def test_met_spline_band(data):
    s = an.met_spline(data)
    # the band is the delta-method interval on the log-odds scale: symmetric around the fit there
    lo, mid, hi = (special.logit(s[c].to_numpy()) for c in ("lower", "probability", "upper"))
    np.testing.assert_allclose(hi - mid, mid - lo, rtol=1e-8)
    assert (hi - mid > 0).all()
    met = data["met_min_week"].dropna()
    np.testing.assert_allclose(s["met_min_week"].iloc[[0, -1]],
                               10 ** np.log10(met + 1).quantile([0.005, 0.995]) - 1, rtol=1e-9)


def test_met_spline_recovers_a_known_curve():
    """CBP drawn with a known U-shaped log-odds in log10(MET + 1): the fitted curve's band
    covers the truth on most of the grid and the nonlinearity test detects the U."""
    rng = np.random.default_rng(5)
    log_met = rng.uniform(1.0, 4.0, 20_000)

    def truth(x):
        return -1.2 + 0.9 * (x - 2.5) ** 2

    d = pd.DataFrame({"met_min_week": 10**log_met - 1,
                      "cbp": rng.binomial(1, special.expit(truth(log_met))).astype(float)})
    s = an.met_spline(d)
    p_true = special.expit(truth(np.log10(s["met_min_week"] + 1)))
    covered = ((s["lower"] <= p_true) & (p_true <= s["upper"])).mean()
    assert covered > 0.8
    assert np.max(np.abs(s["probability"] - p_true)) < 0.05
    assert s["p_nonlinear"].iloc[0] < 1e-6
    linear = d.assign(cbp=rng.binomial(1, special.expit(0.5 * log_met - 2)).astype(float))
    assert an.met_spline(linear)["p_nonlinear"].iloc[0] > 1e-3


def test_interaction_heatmap_at_reference(data):
    table, predicted, observed, fit = an.interaction_analysis(data, grid=5)
    assert "z_intermat:z_lmm" in set(table["term"])
    p = fit.results.params
    ref = an.reference_covariates(data)
    for zi, zl in ((0.0, 0.0), (2.0, -2.0), (-1.0, 1.0)):
        lp = (p["Intercept"] + p["z_intermat"] * zi + p["z_lmm"] * zl
              + p["z_intermat:z_lmm"] * zi * zl + p["age"] * ref["age"])
        got = predicted[(predicted["z_intermat"] == zi) & (predicted["z_lmm"] == zl)]
        assert np.isclose(got["probability"].iloc[0], special.expit(lp), rtol=1e-10)
    assert len(observed) == 25 and observed["n"].sum() == len(data)
    assert np.isclose((observed["prevalence"] * observed["n"]).sum(), data["cbp"].sum())


def test_strata_and_symptom_models(data):
    strata = an.strata_models(data)
    assert len(strata) == 2 * 9
    female = strata[(strata["stratum"] == "sex") & (strata["level"] == "female")]
    assert (female["n"] == (data["sex"] == "female").sum()).all()
    oa = strata[(strata["stratum"] == "osteoarthritis") & (strata["level"] == "yes")]
    assert (oa["n"] == (data["osteoarthritis"] == 1).sum()).all()
    table, fit = an.symptom_burden(data, threshold=4)
    assert fit.n == int(data["cbp"].sum())
    assert fit.events == int(((data["cbp"] == 1) & (data["pain_intensity"] >= 4)).sum())
    assert {"z_intermat", "z_lmm"} <= set(table["term"])
    ordinal = an.ordinal_sensitivity(data).set_index("term")
    beta = _proportional_odds_by_hand(data)
    for term in ("z_intermat", "z_lmm"):
        np.testing.assert_allclose(ordinal.loc[term, "OR"], np.exp(2 * beta[term]), rtol=1e-6)
    np.testing.assert_allclose(ordinal["estimate"], beta[ordinal.index], atol=1e-6)
    assert (ordinal["note"] == "").all()


def _proportional_odds_by_hand(data: pd.DataFrame) -> pd.Series:
    """Proportional-odds model of the pain category among CBP cases, by direct maximisation
    of its log-likelihood with scipy, exact (complex-step) gradients and a tight tolerance
    (independent of myocomp.stats.ordinal)."""
    from scipy import optimize

    cols = ["z_intermat", "z_lmm", "age", "female", "diabetes", "dyslipidemia",
            "osteoporosis", "osteoarthritis", "pa_low", "pa_high"]
    cc = data[data["cbp"] == 1].dropna(subset=["pain_category", "site", *cols])
    X = pd.concat([cc[cols].astype(float), pd.get_dummies(cc["site"].astype(str),
                   drop_first=True, dtype=float)], axis=1)
    X = X.loc[:, X.std() > 0]
    Xv, k = X.to_numpy(), cc["pain_category"].to_numpy(int)
    rows = np.arange(len(k))

    def nll(theta):
        b, c1, c2 = theta[:-2], theta[-2], theta[-2] + np.exp(theta[-1])
        eta = Xv @ b
        with np.errstate(over="ignore", divide="ignore"):
            cdf = np.column_stack([np.zeros(len(k)), 1.0 / (1.0 + np.exp(eta - c1)),
                                   1.0 / (1.0 + np.exp(eta - c2)), np.ones(len(k))])
            return -np.sum(np.log(cdf[rows, k + 1] - cdf[rows, k]))

    def grad(theta):
        steps = np.eye(theta.size) * 1e-30j
        return np.array([nll(theta + e).imag / 1e-30 for e in steps])

    start = np.r_[np.zeros(Xv.shape[1]), 0.0, 0.0]
    fit = optimize.minimize(lambda t: nll(t).real, start, jac=grad, method="BFGS",
                            options={"gtol": 1e-9, "maxiter": 2000})
    return pd.Series(fit.x[:-2], index=X.columns)


def test_not_estimable_stratum_is_reported(data):
    tiny = data.iloc[:40]
    fit = an.fit_model("tiny", "", tiny, "cbp", ["z_intermat"], min_events=30)
    assert fit.results is None and fit.note.startswith("not estimable")
    table = an.odds_ratio_table(fit)
    assert table["OR"].isna().all() and (table["n"] == 40).all()


def test_nomogram_reproduces_logistic_fit(data):
    nomo = an.nomogram_analysis(data, B=3, seed=1)
    pts = nomo.nomogram.points(data.dropna(subset=["z_lmm"]))
    lp = nomo.nomogram.linear_predictor(pts["total_points"].to_numpy())
    np.testing.assert_allclose(special.expit(lp), nomo.probability, rtol=1e-9)
    from sklearn.metrics import roc_auc_score

    val = nomo.validation_table().set_index("metric")
    auc = val.loc["AUC (C-index), apparent"]
    assert auc["value"] == pytest.approx(roc_auc_score(nomo.y, nomo.probability), abs=1e-12)
    assert auc["lower"] < auc["value"] < auc["upper"]
    assert val.loc["Brier score, apparent", "value"] == pytest.approx(
        np.mean((nomo.probability - nomo.y) ** 2), abs=1e-15)
    logit = np.log(nomo.probability / (1 - nomo.probability))
    ref = sm.Logit(nomo.y, sm.add_constant(logit)).fit(disp=0)
    # recalibrating a model on the data it was fitted to: slope 1, intercept 0
    assert val.loc["Calibration slope, apparent", "value"] == pytest.approx(ref.params[1], abs=1e-6)
    assert val.loc["Calibration slope, apparent", "value"] == pytest.approx(1.0, abs=1e-6)


def test_models_are_deterministic(data):
    a, _ = an.main_models(data.iloc[:800])
    b, _ = an.main_models(data.iloc[:800])
    pd.testing.assert_frame_equal(a, b)


def test_config_variants_of_the_z_scores(data):
    cfg = StudyConfig(intermat_metric="intermat_fraction", zscore_method="age_sex")
    d, zmodel = an.prepare_analysis_data(data.drop(columns=["z_intermat", "z_lmm"]), cfg)
    assert zmodel.method == "age_sex" and "intermat_fraction" in zmodel.metrics
    # age/sex references remove the age and sex gradients of the metrics
    assert abs(np.corrcoef(d["age"], d["z_lmm"])[0, 1]) < 1e-8
    assert abs(d.loc[d["sex"] == "female", "z_lmm"].mean()) < 1e-8
    X = np.column_stack([np.ones(len(d)), d["age"], d["sex"] == "male"]).astype(float)
    y = d["intermat_fraction"].to_numpy()
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(d["z_intermat"], resid / resid.std(ddof=1), rtol=1e-6, atol=1e-9)
    with pytest.raises(Exception, match="zscore_height"):
        StudyConfig(zscore_height=True)


def test_predict_needs_height_for_height_adjusted_reference(data):
    from myocomp.errors import DataError
    from myocomp.study.predict import predict_person

    cfg = StudyConfig(zscore_method="age_sex", zscore_height=True)
    d, zmodel = an.prepare_analysis_data(data.drop(columns=["z_intermat", "z_lmm"]), cfg)
    nomo = an.nomogram_analysis(d, B=0)
    model = {"intermat_metric": "intermat_volume_ml", "zscores": zmodel.to_dict(),
             "nomogram": nomo.nomogram.to_dict(),
             "nomogram_model": {"params": dict(nomo.result.params)}}
    kwargs = dict(age=50, sex="m", bmi=26, lean_volume_ml=1100, intermat_ml=45)
    with pytest.raises(DataError, match="height_cm"):
        predict_person(model, **kwargs)
    res = predict_person(model, height_cm=180, **kwargs)
    assert np.isclose(res.linear_predictor, res.linear_predictor_model, rtol=1e-9)
    assert 0 < res.probability < 1


def test_categorical_model_frame_fits_the_same_models(data):
    """The text columns coded once as Categoricals (what the study's model functions do) give
    the fits of the plain text table, also on rows that lack a PA level (the level is dropped,
    not left as an empty column)."""
    md = an.model_frame(data)
    assert isinstance(md["pa_category"].dtype, pd.CategoricalDtype)
    terms = [*an.MARKERS, *an.COVARIATES]
    no_high = data[data["pa_category"] != "high"]
    for frame, cat in ((data, md), (no_high, md[md["pa_category"] != "high"])):
        a = an.fit_model("m", "", frame, "cbp", terms)
        b = an.fit_model("m", "", cat, "cbp", terms)
        assert a.results is not None
        pd.testing.assert_series_equal(a.results.params, b.results.params, rtol=1e-13)
        pd.testing.assert_series_equal(a.results.bse, b.results.bse, rtol=1e-13)
        assert a.results.to_dict()["design"] == b.results.to_dict()["design"]
    assert not any("high" in name for name in b.results.params.index)


def test_strata_subsets_equal_the_full_strata_table(data):
    full = an.strata_models(data)
    sex = an.strata_models(data, variables=("sex",))
    pd.testing.assert_frame_equal(sex, full[full["stratum"] == "sex"].reset_index(drop=True))


def test_nomogram_model_is_statsmodels_logit_on_the_study_design(data):
    """The nomogram's model (the project's Newton) equals statsmodels' Logit on the study's
    design: estimates, standard errors, covariance, log-likelihood, p-values."""
    nomo = an.nomogram_analysis(data, B=0)
    res = nomo.result
    ref = smf.logit(nomo.formula, data).fit(disp=0)  # complete cases of the formula's columns
    assert list(res.params.index) == list(ref.params.index) and res.nobs == ref.nobs == nomo.n
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-8)
    np.testing.assert_allclose(res.cov_params(), ref.cov_params(), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(res.pvalues, ref.pvalues, rtol=1e-6, atol=1e-14)
    assert res.llf == pytest.approx(ref.llf, rel=1e-12) and res.converged
    np.testing.assert_allclose(res.predict(data.iloc[:50]), ref.predict(data.iloc[:50]),
                               rtol=1e-8, atol=1e-12)


def test_ordinal_model_that_cannot_converge_reports_no_numbers(data):
    """Separation (a covariate that marks the severe category) has no finite MLE: the table
    says so and carries no estimate, instead of the numbers where the optimiser stopped."""
    cbp = data["cbp"] == 1
    separated = data.assign(osteoporosis=np.where(cbp, (data["pain_category"] == 2) * 1.0,
                                                  data["osteoporosis"]))
    table = an.ordinal_sensitivity(separated)
    assert list(table["term"]) == list(an.MARKERS)
    assert table["OR"].isna().all() and table["p"].isna().all()
    assert (table["note"] == "not estimable: the ordinal model did not converge").all()


def test_not_estimable_names_separation_and_a_singular_information():
    from types import SimpleNamespace

    names = ["Intercept", "z_intermat", "age"]

    def result(params, variances):
        return SimpleNamespace(params=pd.Series(params, index=names),
                               vcov=pd.DataFrame(np.diag(variances), index=names, columns=names))

    assert an._not_estimable(result([0.1, 0.2, 0.01], [0.01, 0.02, 1e-4])) is None
    assert "separation" in an._not_estimable(result([0.1, 80.0, 0.01], [0.01, 0.02, 1e-4]))
    assert "separation" in an._not_estimable(result([0.1, np.inf, 0.01], [0.01, 0.02, 1e-4]))
    singular = an._not_estimable(result([0.1, 0.2, 0.01], [0.01, -0.02, np.nan]))
    assert "not positive definite" in singular and "z_intermat, age" in singular
