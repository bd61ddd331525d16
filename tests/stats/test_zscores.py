"""Tests of the Z-score reference models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from myocomp.errors import ConfigError, DataError, InputFileError
from myocomp.stats import ZScoreModel, fit_zscores


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 500
    female = rng.random(n) < 0.45
    age = rng.uniform(20, 72, n)
    height = np.where(female, rng.normal(166, 6.5, n), rng.normal(179, 7, n))
    intermat = np.exp(4.0 + 0.3 * female + 0.01 * age + rng.normal(0, 0.3, n))
    lmm = 55 - 12 * female - 0.1 * age + 0.2 * (height - 170) + rng.normal(0, 5, n)
    return pd.DataFrame(
        {
            "participant_id": [f"P{i:04d}" for i in range(n)],
            "age": age,
            "sex": np.where(female, "female", "male"),
            "height_cm": height,
            "intermat_volume_ml": intermat,
            "lmm": lmm,
        }
    )


METRICS = ["intermat_volume_ml", "lmm"]


def test_cohort_method(cohort):
    model = ZScoreModel.fit(cohort, METRICS)
    out = model.transform(cohort)
    for m in METRICS:
        z = out[f"z_{m}"]
        assert z.mean() == pytest.approx(0.0, abs=1e-12)
        assert z.std(ddof=1) == pytest.approx(1.0, rel=1e-12)
    person = pd.DataFrame({"intermat_volume_ml": [150.0], "lmm": [40.0]})
    x = cohort["intermat_volume_ml"]
    by_hand = (150.0 - x.mean()) / x.std(ddof=1)
    assert model.zscores(person)["z_intermat_volume_ml"].iloc[0] == pytest.approx(by_hand)
    # the input is not modified and other columns are kept
    assert "z_lmm" not in cohort.columns
    assert list(out.columns[: cohort.shape[1]]) == list(cohort.columns)


def test_sex_method(cohort):
    model = fit_zscores(cohort, {"lmm": "z_lmm"}, method="sex")
    out = model.transform(cohort)
    for sex in ("female", "male"):
        z = out.loc[out["sex"] == sex, "z_lmm"]
        assert z.mean() == pytest.approx(0.0, abs=1e-12)
        assert z.std(ddof=1) == pytest.approx(1.0, rel=1e-12)
    women = cohort.loc[cohort["sex"] == "female", "lmm"]
    person = pd.DataFrame({"sex": ["female"], "lmm": [30.0]})
    by_hand = (30.0 - women.mean()) / women.std(ddof=1)
    assert model.zscores(person)["z_lmm"].iloc[0] == pytest.approx(by_hand)


@pytest.mark.parametrize("height", [False, True])
def test_age_sex_method(cohort, height):
    model = fit_zscores(cohort, ["lmm"], method="age_sex", height=height)
    z = model.transform(cohort)["z_lmm"]
    assert z.mean() == pytest.approx(0.0, abs=1e-10)
    assert z.std(ddof=1) == pytest.approx(1.0, rel=1e-10)
    cols = [np.ones(len(cohort)), cohort["age"], (cohort["sex"] == "male").astype(float)]
    if height:
        cols.append(cohort["height_cm"])
    X = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(X, cohort["lmm"].to_numpy(), rcond=None)
    resid_sd = np.std(cohort["lmm"].to_numpy() - X @ coef, ddof=1)
    person = pd.DataFrame({"age": [60.0], "sex": ["male"], "height_cm": [181.0], "lmm": [50.0]})
    row = [1.0, 60.0, 1.0] + ([181.0] if height else [])
    by_hand = (50.0 - np.dot(row, coef)) / resid_sd
    assert model.zscores(person)["z_lmm"].iloc[0] == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize("method", ["cohort", "sex", "age_sex"])
def test_json_round_trip_gives_identical_z(cohort, method, tmp_path):
    model = fit_zscores(cohort, METRICS, method=method)
    path = model.save(tmp_path / "zref.json")
    assert json.loads(path.read_text())["method"] == method
    back = ZScoreModel.load(path)
    assert back == model
    new = cohort.sample(50, random_state=1)
    pd.testing.assert_frame_equal(back.zscores(new), model.zscores(new))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed


def test_missing_values_give_missing_z(cohort):
    model = fit_zscores(cohort, ["lmm"], method="sex")
    new = pd.DataFrame({"sex": ["male", None, "male"], "lmm": [40.0, 40.0, np.nan]})
    z = model.zscores(new)["z_lmm"]
    assert np.isfinite(z.iloc[0]) and np.isnan(z.iloc[1]) and np.isnan(z.iloc[2])
    holes = cohort.copy()
    holes.loc[holes.index[:10], "lmm"] = np.nan
    fitted = fit_zscores(holes, ["lmm"])
    assert fitted.params["lmm"]["n"] == len(cohort) - 10


def test_bad_inputs(cohort, tmp_path):
    with pytest.raises(DataError, match="nosuch"):
        fit_zscores(cohort, ["nosuch"])
    coded = cohort.assign(sex=cohort["sex"].map({"female": "F", "male": "M"}))
    with pytest.raises(DataError, match="'F'"):
        fit_zscores(coded, ["lmm"], method="sex")
    model = fit_zscores(cohort, ["lmm"], method="age_sex")
    with pytest.raises(DataError, match="sex"):
        model.zscores(pd.DataFrame({"age": [50], "sex": ["divers"], "lmm": [40.0]}))
    with pytest.raises(DataError, match="age"):
        model.zscores(pd.DataFrame({"sex": ["male"], "lmm": [40.0]}))
    with pytest.raises(DataError, match="lmm"):
        model.zscores(pd.DataFrame({"age": [50], "sex": ["male"], "lmm": ["forty"]}))
    with pytest.raises(ConfigError, match="method"):
        fit_zscores(cohort, ["lmm"], method="bmi")
    with pytest.raises(ConfigError, match="height"):
        fit_zscores(cohort, ["lmm"], method="cohort", height=True)
    with pytest.raises(InputFileError):
        ZScoreModel.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(InputFileError, match="bad.json"):
        ZScoreModel.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="SD is 0"):
        fit_zscores(cohort.assign(lmm=1.0), ["lmm"])
