"""The synthetic cohort: calibration to the NAKO facts, determinism, documented truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import special

from myocomp.synth.cohort import CohortParameters, simulate_cohort, write_cohort


@pytest.fixture(scope="module")
def nako():
    return simulate_cohort(27518, seed=2025)


def test_prevalence_sex_and_site(nako):
    d = nako.data
    assert len(d) == 27518
    assert d["participant_id"].is_unique
    assert abs(d["cbp"].mean() - 0.218) < 0.01
    female = d["sex"] == "female"
    assert abs(female.mean() - 0.443) < 0.01
    assert abs(female[d["cbp"] == 1].mean() - 0.500) < 0.015
    assert abs(female[d["cbp"] == 0].mean() - 0.427) < 0.01
    assert d["site"].nunique() == 5


def test_age_medians_and_iqr(nako):
    d = nako.data
    q_all = d["age"].quantile([0.25, 0.5, 0.75]).to_numpy()
    q_cbp = d.loc[d["cbp"] == 1, "age"].quantile([0.25, 0.5, 0.75]).to_numpy()
    q_no = d.loc[d["cbp"] == 0, "age"].quantile([0.25, 0.5, 0.75]).to_numpy()
    assert abs(q_all[1] - 49) <= 1
    assert abs(q_cbp[1] - 53) <= 1.5
    assert abs(q_no[1] - 48) <= 1.5
    np.testing.assert_allclose(q_all[[0, 2]], [41, 57], atol=2)
    np.testing.assert_allclose(q_cbp[[0, 2]], [46, 60], atol=2)
    np.testing.assert_allclose(q_no[[0, 2]], [39, 56], atol=2)


def test_physical_activity_u_shape(nako):
    d = nako.data
    met = d["met_min_week"]
    cat = np.where(met < 500, "low", np.where(met > 5000, "high", "moderate"))
    counts = pd.Series(cat).value_counts()
    for level, n in (("low", 10892), ("moderate", 12826), ("high", 3800)):
        assert abs(counts[level] - n) < 0.03 * 27518, level
    prev = d.groupby(cat)["cbp"].mean()
    assert abs(prev["low"] - 0.246) < 0.012
    assert abs(prev["moderate"] - 0.194) < 0.012
    assert abs(prev["high"] - 0.220) < 0.02
    assert prev["low"] > prev["moderate"] < prev["high"]  # U shape


def test_comorbidities_and_metrics_plausible(nako):
    d = nako.data
    assert 0.03 < d["diabetes"].mean() < 0.12
    assert 0.10 < d["dyslipidemia"].mean() < 0.35
    assert 0.01 < d["osteoporosis"].mean() < 0.08
    assert 0.10 < d["osteoarthritis"].mean() < 0.35
    # osteoporosis mostly in women, fat infiltration rises with age, men have more muscle
    assert d.loc[d["sex"] == "female", "osteoporosis"].mean() > 2 * d.loc[
        d["sex"] == "male", "osteoporosis"].mean()
    assert np.corrcoef(d["age"], d["ff_mean"])[0, 1] > 0.2
    assert d.loc[d["sex"] == "male", "volume_ml"].median() > d.loc[
        d["sex"] == "female", "volume_ml"].median()
    np.testing.assert_allclose(d["lmm"], d["lean_volume_ml"] / d["bmi"])
    np.testing.assert_allclose(d["intermat_volume_ml"], d["volume_ml"] * d["intermat_fraction"])
    assert (d["lean_volume_ml"] < d["volume_ml"]).all()
    assert d["pain_intensity"].between(0, 10).all()
    # pain is worse with CBP
    assert d.loc[d["cbp"] == 1, "pain_intensity"].mean() > d.loc[
        d["cbp"] == 0, "pain_intensity"].mean() + 2


def test_true_parameters_and_solved_intercept(nako):
    truth = nako.true_parameters
    coef = truth["cbp_model"]["coefficients"]
    assert truth["odds_ratios_per_2z"] == {"z_intermat": 1.22, "z_lmm": 0.87}
    assert np.isclose(np.exp(2 * coef["z_lmm"]), 0.87)
    # the generating coefficient is shifted so that the model without the product term
    # recovers 1.22: shift = -0.4617 * interaction (documented in the module)
    assert np.isclose(coef["z_intermat"],
                      np.log(1.22) / 2 + 0.4617 * coef["z_intermat:z_lmm"])
    # rebuild the linear predictor from the table and the truth: expected prevalence 21.8 %
    d = nako.data
    z_i = (d["intermat_volume_ml"] - d["intermat_volume_ml"].mean()) / d[
        "intermat_volume_ml"].std()
    lean_over_bmi_raw = d["lmm"]  # bmi was rounded; lmm uses the stored bmi
    z_l = (lean_over_bmi_raw - lean_over_bmi_raw.mean()) / lean_over_bmi_raw.std()
    met = d["met_min_week"]
    eta = (coef["Intercept"] + d["site"].map(truth["cbp_model"]["site_effects"])
           + coef["z_intermat"] * z_i + coef["z_lmm"] * z_l
           + coef["z_intermat:z_lmm"] * z_i * z_l + coef["age"] * d["age"]
           + coef["sex[female]"] * (d["sex"] == "female") + coef["diabetes"] * d["diabetes"]
           + coef["dyslipidemia"] * d["dyslipidemia"] + coef["osteoporosis"] * d["osteoporosis"]
           + coef["osteoarthritis"] * d["osteoarthritis"]
           + coef["pa_category[low]"] * (met < 500) + coef["pa_category[high]"] * (met > 5000))
    assert abs(special.expit(eta.astype(float)).mean() - 0.218) < 2e-3


def test_deterministic_by_seed():
    a = simulate_cohort(500, seed=7)
    b = simulate_cohort(500, seed=7)
    c = simulate_cohort(500, seed=8)
    pd.testing.assert_frame_equal(a.data, b.data)
    assert a.true_parameters == b.true_parameters
    assert not a.data["age"].equals(c.data["age"])


def test_other_parameters_change_the_truth():
    p = CohortParameters(or_intermat_per_2z=1.5)
    c = simulate_cohort(300, seed=1, params=p)
    assert c.true_parameters["odds_ratios_per_2z"]["z_intermat"] == 1.5
    p0 = CohortParameters(or_intermat_per_2z=1.5, interaction=0.0)
    c0 = simulate_cohort(300, seed=1, params=p0)
    assert np.isclose(np.exp(2 * c0.true_parameters["cbp_model"]["coefficients"]["z_intermat"]),
                      1.5)


def test_write_cohort_and_cli(tmp_path):
    from myocomp.cli import main

    out = tmp_path / "c" / "cohort.parquet"
    assert main(["synth-cohort", "--n", "400", "--seed", "3", "--out", str(out)]) == 0
    data = pd.read_parquet(out)
    pd.testing.assert_frame_equal(data, simulate_cohort(400, seed=3).data, check_dtype=False)
    truth = json.loads((out.parent / "true_parameters.json").read_text())
    assert truth["seed"] == 3 and truth["n"] == 400
    csv_path, _ = write_cohort(simulate_cohort(100, seed=1), tmp_path / "x.csv")
    assert len(pd.read_csv(csv_path)) == 100
    assert main(["synth-cohort", "--n", "400", "--out", str(tmp_path / "x.xlsx")]) == 2
