"""Single analyses on a small synthetic cohort, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import special

from myocomp.study import analyses as an
from myocomp.study.phenotypes import StudyConfig, join_metrics, validate_phenotypes
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
    row = t1[(t1["variable"] == "osteoarthritis")].iloc[0]
    k = int(((d["osteoarthritis"] == 1) & (d["cbp"] == 1)).sum())
    assert row["cbp"] == f"{k:,} ({100 * k / int(d['cbp'].sum()):.1f} %)"
    age = t1[t1["variable"] == "age"].iloc[0]
    q1, q2, q3 = d.loc[d["cbp"] == 1, "age"].quantile([0.25, 0.5, 0.75])
    assert age["cbp"] == f"{q2:.0f} [{q1:.0f}–{q3:.0f}]"  # integer ages: no decimals
    bmi = t1[t1["variable"] == "bmi"].iloc[0]
    q1, q2, q3 = d["bmi"].quantile([0.25, 0.5, 0.75])
    assert bmi["overall"] == f"{q2:.1f} [{q1:.1f}–{q3:.1f}]"
    assert age["p"] < 1e-6  # CBP is older in the generator
    pa = an.pa_prevalence(d).set_index("pa_category")
    expected = d.groupby("pa_category")["cbp"].agg(["size", "mean"])
    for level in ("low", "moderate", "high"):
        assert pa.loc[level, "n"] == expected.loc[level, "size"]
        assert np.isclose(pa.loc[level, "prevalence"], expected.loc[level, "mean"])
        assert pa.loc[level, "lower"] < pa.loc[level, "prevalence"] < pa.loc[level, "upper"]


def test_met_spline_band(data):
    s = an.met_spline(data)
    assert (s["lower"] <= s["probability"]).all() and (s["probability"] <= s["upper"]).all()
    assert s["met_min_week"].is_monotonic_increasing
    assert 0.05 < s["probability"].mean() < 0.5


def test_logistic_newton_matches_statsmodels(data):
    from myocomp.stats.validation import logistic_newton

    X = sm.add_constant(data[["z_intermat", "z_lmm", "age", "female"]].to_numpy())
    y = data["cbp"].to_numpy(float)
    ref = sm.Logit(y, X).fit(disp=0)
    beta, cov = logistic_newton(X, y)
    np.testing.assert_allclose(beta, ref.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), ref.bse, rtol=1e-6)


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
    ordinal = an.ordinal_sensitivity(data)
    assert np.isfinite(ordinal.set_index("term").loc[["z_intermat", "z_lmm"], "OR"]).all()


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
    val = nomo.validation_table().set_index("metric")
    assert 0.5 < val.loc["AUC (C-index), apparent", "value"] < 0.9
    assert val.loc["AUC (C-index), apparent", "lower"] < val.loc[
        "AUC (C-index), apparent", "value"]


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
