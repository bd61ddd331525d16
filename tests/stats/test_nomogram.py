from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from myocomp.errors import ConfigError, DataError
from myocomp.stats.nomogram import (
    Nomogram,
    PredictorSpec,
    build_nomogram,
    fit_logistic,
    nomogram_from_formula,
)

FORMULA = "cbp ~ z_intermat + z_lmm + age + sex + diabetes + C(pa, Treatment('mid')) + C(site)"


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 600
    df = pd.DataFrame(
        {
            "age": rng.integers(25, 75, n).astype(float),
            "sex": rng.choice(["female", "male"], n),
            "pa": rng.choice(["low", "mid", "high"], n, p=[0.4, 0.45, 0.15]),
            "diabetes": rng.binomial(1, 0.1, n),
            "site": rng.integers(1, 6, n),
            "z_intermat": rng.normal(0, 1, n),
            "z_lmm": rng.normal(0, 1, n),
        }
    )
    lp = (
        -3.5
        + 0.04 * df.age
        + 0.4 * (df.sex == "female")
        + 0.3 * df.diabetes
        + 0.2 * df.z_intermat
        - 0.15 * df.z_lmm
        + 0.25 * (df.pa == "low")
        + 0.1 * (df.pa == "high")
        + 0.1 * (df.site - 3)
    )
    df["cbp"] = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    df.loc[[3, 50], "age"] = np.nan  # complete-case handling
    df.loc[[10], "pa"] = None
    return df


@pytest.fixture(scope="module")
def fitted(cohort):
    return nomogram_from_formula(FORMULA, cohort, labels={"z_intermat": "Z InterMAT"})


def test_total_points_reproduce_linear_predictor_exactly(cohort, fitted):
    nomo, res = fitted
    complete = cohort.loc[res.row_labels]
    assert len(complete) == len(cohort) - 3
    pts = nomo.points(complete)
    lp_points = nomo.linear_predictor(pts["total_points"].to_numpy())
    lp_model = res.exog @ res.params.to_numpy()  # design matrix x coefficients
    assert np.max(np.abs(lp_points - lp_model)) < 1e-9
    # the per-predictor points add up to the total
    parts = pts.drop(columns="total_points").sum(axis=1)
    np.testing.assert_allclose(parts, pts["total_points"], rtol=0, atol=1e-12)


def test_probability_equals_statsmodels_predict(cohort, fitted):
    nomo, res = fitted
    complete = cohort.loc[res.row_labels]
    prob = nomo.probability(nomo.points(complete)["total_points"].to_numpy())
    assert np.max(np.abs(prob - res.predict(complete).to_numpy())) < 1e-12
    np.testing.assert_allclose(nomo.predict(complete), res.predict(complete), atol=1e-12)


def test_widest_predictor_spans_exactly_0_to_100(cohort, fitted):
    nomo, res = fitted
    complete = cohort.loc[res.row_labels]
    beta = res.params
    # widths computed here independently: |beta| x data range, or max - min over the levels
    widths = {
        "age": abs(beta["age"]) * np.ptp(complete["age"]),
        "z_intermat": abs(beta["z_intermat"]) * np.ptp(complete["z_intermat"]),
        "z_lmm": abs(beta["z_lmm"]) * np.ptp(complete["z_lmm"]),
        "diabetes": abs(beta["diabetes"]),
        "sex": abs(beta["sex[T.male]"]),
    }
    pa = [0.0, beta["C(pa, Treatment('mid'))[T.high]"], beta["C(pa, Treatment('mid'))[T.low]"]]
    widths["pa"] = max(pa) - min(pa)
    site = [0.0] + [beta[f"C(site)[T.{k}]"] for k in range(2, 6)]
    widths["site"] = max(site) - min(site)
    widest = max(widths, key=widths.get)
    assert nomo.max_points[widest] == pytest.approx(100.0, abs=1e-12)
    for name, w in widths.items():
        assert nomo.max_points[name] == pytest.approx(100.0 * w / widths[widest], rel=1e-12)
    pts = nomo.points(complete)
    # over the data (whose min and max define the ranges) every axis starts at 0 points
    # and the widest predictor reaches exactly 100
    assert pts[widest].min() == pytest.approx(0.0, abs=1e-9)
    assert pts[widest].max() == pytest.approx(100.0, abs=1e-9)
    for name in widths:
        assert pts[name].min() == pytest.approx(0.0, abs=1e-9)
        assert pts[name].max() <= nomo.max_points[name] + 1e-9


def test_negative_coefficient_puts_zero_points_at_the_high_end(cohort, fitted):
    nomo, res = fitted
    assert res.params["z_lmm"] < 0
    spec = next(p for p in nomo.predictors if p.name == "z_lmm")
    row_low = {**_reference_row(nomo), "z_lmm": spec.low}
    row_high = {**_reference_row(nomo), "z_lmm": spec.high}
    assert nomo.points(row_high)["z_lmm"].iloc[0] == pytest.approx(0.0, abs=1e-12)
    assert nomo.points(row_low)["z_lmm"].iloc[0] == pytest.approx(nomo.max_points["z_lmm"])


def _reference_row(nomo: Nomogram) -> dict:
    row = {}
    for spec in nomo.predictors:
        row[spec.name] = spec.levels[0] if spec.kind == "categorical" else spec.low
    return row


def test_hand_computed_nomogram():
    # Intercept -1, age 0.05/year on [20, 80] (width 3.0 LP), female +0.5, smoker +1.2.
    params = pd.Series({"Intercept": -1.0, "age": 0.05, "sex[T.female]": 0.5, "smoker": 1.2})
    specs = [
        PredictorSpec.continuous("age", low=20, high=80),
        PredictorSpec.categorical("sex", ["male", "female"], [None, "sex[T.female]"]),
        PredictorSpec.continuous("smoker", low=0, high=1, ticks=[0, 1]),
    ]
    nomo = Nomogram.from_params(params, specs)
    assert nomo.scale == pytest.approx(100 / 3)
    pts = nomo.points({"age": 50, "sex": "female", "smoker": 1})
    assert pts["age"].iloc[0] == pytest.approx(50.0)
    assert pts["sex"].iloc[0] == pytest.approx(0.5 * 100 / 3)
    assert pts["smoker"].iloc[0] == pytest.approx(40.0)
    total = pts["total_points"].iloc[0]
    # LP = -1 + 0.05*50 + 0.5 + 1.2 = 3.2
    assert nomo.linear_predictor(total) == pytest.approx(3.2, abs=1e-12)
    assert nomo.probability(total) == pytest.approx(1 / (1 + np.exp(-3.2)), abs=1e-12)
    assert nomo.total_points_for_probability(nomo.probability(total)) == pytest.approx(total)
    assert nomo.max_total_points == pytest.approx(100 + 50 / 3 + 40)
    table = nomo.points_table()
    assert list(table.columns) == ["predictor", "label", "value", "points"]
    age = table[table.predictor == "age"]
    np.testing.assert_allclose(age["points"], (age["value"].astype(float) - 20) * 0.05 * 100 / 3)
    smoker = table[table.predictor == "smoker"]
    assert smoker["value"].tolist() == [0.0, 1.0]
    tp = nomo.total_points_table()
    assert tp["total_points"].iloc[0] == 0.0
    np.testing.assert_allclose(tp["linear_predictor"], -1 + 0.05 * 20 + tp["total_points"] * 0.03)
    assert "age" in nomo.summary()


def test_points_table_matches_points_of_each_level(fitted):
    nomo, _ = fitted
    table = nomo.points_table()
    base = _reference_row(nomo)
    for _, r in table.iterrows():
        row = {**base, r["predictor"]: r["value"]}
        assert nomo.points(row)[r["predictor"]].iloc[0] == pytest.approx(r["points"], abs=1e-12)
    site = table[table.predictor == "site"]
    assert site["value"].tolist() == [1, 2, 3, 4, 5]
    assert table.loc[table.predictor == "z_intermat", "label"].iloc[0] == "Z InterMAT"


def test_json_round_trip(cohort, fitted):
    nomo, res = fitted
    text = json.dumps(nomo.to_dict())
    back = Nomogram.from_dict(json.loads(text))
    assert back.to_dict() == nomo.to_dict()
    complete = cohort.loc[res.row_labels]
    pd.testing.assert_frame_equal(back.points(complete), nomo.points(complete))
    pd.testing.assert_frame_equal(back.points_table(), nomo.points_table())


def test_from_dict_rejects_tampered_or_malformed():
    params = pd.Series({"Intercept": 0.0, "x": 1.0})
    d = Nomogram.from_params(params, [PredictorSpec.continuous("x", low=0, high=2)]).to_dict()
    with pytest.raises(ConfigError, match="points_per_lp_unit"):
        Nomogram.from_dict({**d, "points_per_lp_unit": 12.0})
    with pytest.raises(ConfigError):
        Nomogram.from_dict({**d, "format": "other"})
    bad = json.loads(json.dumps(d))
    bad["predictors"][0]["colour"] = "red"
    with pytest.raises(ConfigError, match="unknown keys"):
        Nomogram.from_dict(bad)


def test_sum_coding_still_reproduces_linear_predictor(cohort):
    nomo, res = nomogram_from_formula("cbp ~ age + C(pa, Sum)", cohort)
    complete = cohort.loc[res.row_labels]
    lp = nomo.linear_predictor(nomo.points(complete)["total_points"].to_numpy())
    assert np.max(np.abs(lp - res.exog @ res.params.to_numpy())) < 1e-9


def test_quantile_ranges(cohort):
    res, specs = fit_logistic("cbp ~ age + z_intermat", cohort, quantiles=(0.05, 0.95))
    complete = cohort.dropna(subset=["age", "z_intermat", "cbp"])
    by_name = {s.name: s for s in specs}
    assert by_name["age"].low == pytest.approx(np.quantile(complete["age"], 0.05))
    assert by_name["z_intermat"].high == pytest.approx(np.quantile(complete["z_intermat"], 0.95))
    # build_nomogram fills ranges from data the same way
    nomo = build_nomogram(
        res.params,
        complete,
        [PredictorSpec.continuous("age"), PredictorSpec.continuous("z_intermat")],
        quantiles=(0.05, 0.95),
    )
    assert nomo.predictors[0].low == by_name["age"].low
    # values beyond the axis extrapolate linearly: the LP is still reproduced
    row = {"age": 120.0, "z_intermat": -9.0}
    lp = nomo.linear_predictor(nomo.points(row)["total_points"].iloc[0])
    beta = res.params
    assert lp == pytest.approx(beta["Intercept"] + 120 * beta["age"] - 9 * beta["z_intermat"])


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        ("cbp ~ np.log(age)", "no transforms"),
        ("cbp ~ age * z_lmm", "interactions"),
        ("cbp ~ age + nonexistent", "nonexistent"),
        ("site ~ age", "0/1"),
    ],
)
def test_formula_errors(cohort, formula, match):
    with pytest.raises(DataError, match=match):
        nomogram_from_formula(formula, cohort)


def test_points_errors(fitted):
    nomo, _ = fitted
    row = _reference_row(nomo)
    with pytest.raises(DataError, match="not a level"):
        nomo.points({**row, "pa": "extreme"})
    with pytest.raises(DataError, match="column missing"):
        nomo.points({k: v for k, v in row.items() if k != "age"})
    with pytest.raises(DataError, match="missing value"):
        nomo.points(pd.DataFrame([{**row, "age": np.nan}]))
    # string-typed codes of an integer-coded factor are accepted (e.g. from a CLI)
    as_text = nomo.points({**row, "site": "3"})["site"].iloc[0]
    assert as_text == nomo.points({**row, "site": 3})["site"].iloc[0]


def test_spec_errors():
    params = pd.Series({"Intercept": 0.0, "x": 1.0, "w": 2.0})
    with pytest.raises(ConfigError, match="not described"):
        Nomogram.from_params(params, [PredictorSpec.continuous("x", low=0, high=1)])
    with pytest.raises(ConfigError, match="not model parameters"):
        Nomogram.from_params(params, [PredictorSpec.continuous("v", low=0, high=1)])
    with pytest.raises(ConfigError, match="range"):
        Nomogram.from_params(params[["x"]], [PredictorSpec.continuous("x")])
    with pytest.raises(DataError, match="zero effect"):
        Nomogram.from_params(pd.Series({"x": 0.0}), [PredictorSpec.continuous("x", low=0, high=1)])


def test_model_matches_direct_statsmodels_fit(cohort, fitted):
    _, res = fitted
    direct = smf.logit(FORMULA, cohort.dropna(subset=["age", "pa"])).fit(disp=0)
    np.testing.assert_allclose(res.params, direct.params, rtol=1e-8)
    np.testing.assert_allclose(res.bse, direct.bse, rtol=1e-8)
    np.testing.assert_allclose(res.cov_params(), direct.cov_params(), rtol=1e-7, atol=1e-14)
    assert res.llf == pytest.approx(direct.llf, rel=1e-12)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_separated_model_warns(cohort):
    sep = cohort.dropna().assign(cbp=lambda d: (d["age"] > 50).astype(int))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        fit_logistic("cbp ~ age", sep)
