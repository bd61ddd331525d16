"""The one Newton logistic fitter of the numerical core, against statsmodels."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from myocomp.errors import DataError
from myocomp.stats.logistic import fit_logit, logistic_newton


@pytest.fixture(scope="module")
def design():
    rng = np.random.default_rng(3)
    X = sm.add_constant(rng.normal(size=(1500, 3)))
    y = rng.binomial(1, 1 / (1 + np.exp(-(X @ np.array([-0.5, 0.8, -0.3, 0.1]))))).astype(float)
    return X, y


def test_matches_statsmodels_logit(design):
    X, y = design
    ref = sm.Logit(y, X).fit(disp=0, tol=1e-12)
    beta, cov = logistic_newton(X, y)
    np.testing.assert_allclose(beta, ref.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), ref.bse, rtol=1e-6)


def test_binomial_trials_match_statsmodels_glm():
    rng = np.random.default_rng(4)
    X = sm.add_constant(rng.normal(size=(300, 2)))
    m = rng.integers(1, 12, 300).astype(float)
    y = rng.binomial(m.astype(int), 1 / (1 + np.exp(-(X @ np.array([0.2, -0.7, 0.4]))))).astype(float)
    ref = sm.GLM(np.column_stack([y, m - y]), X, family=sm.families.Binomial()).fit(tol=1e-12)
    beta, cov = logistic_newton(X, y, trials=m)
    np.testing.assert_allclose(beta, ref.params, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), ref.bse, rtol=1e-6)


def test_bad_start_is_retried_and_separation_raises(design):
    X, y = design
    beta, _ = logistic_newton(X, y)
    again, _ = logistic_newton(X, y, beta0=np.full(4, 40.0))
    np.testing.assert_allclose(again, beta, rtol=1e-8)
    x = np.r_[np.arange(10.0), np.arange(10.0) + 20]
    with pytest.raises(np.linalg.LinAlgError):
        logistic_newton(sm.add_constant(x), (x > 15).astype(float))


def test_weighted_fits_equal_fits_on_resampled_rows():
    from myocomp.stats.logistic import logistic_newton_weighted

    rng = np.random.default_rng(0)
    n = 300
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 3)), rng.integers(0, 2, n)])
    y = rng.binomial(1, 1 / (1 + np.exp(-(X @ [0.2, 1.0, -0.5, 0.3, 0.8])))).astype(float)
    draws = [rng.integers(0, n, n) for _ in range(5)]
    counts = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)
    sep = np.zeros(n)
    sep[: n // 2] = 1.0  # weights on rows whose outcome a column separates: no finite fit
    Xs = np.column_stack([X[:, :2], y])
    beta, ok = logistic_newton_weighted(X, y, counts, np.zeros(5))
    assert ok.all()
    for b, d in zip(beta, draws, strict=True):
        np.testing.assert_allclose(b, logistic_newton(X[d], y[d], covariance=False)[0],
                                   rtol=1e-12, atol=1e-12)
    _, ok_sep = logistic_newton_weighted(Xs, y, np.stack([np.ones(n), sep]), np.zeros(3))
    assert not ok_sep.any()


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(11)
    n = 400
    df = pd.DataFrame({"x": rng.normal(size=n), "g": rng.choice(["a", "b", "c"], n),
                       "w": rng.integers(20, 80, n).astype(float)})
    lp = -0.3 + 0.7 * df.x + 0.5 * (df.g == "b") - 0.4 * (df.g == "c") + 0.01 * (df.w - 50)
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    df.loc[[5, 17], "x"] = np.nan
    df.loc[[9], "g"] = None
    return df


def test_fit_logit_equals_statsmodels_logit(toy):
    formula = "y ~ x + C(g, Treatment('b')) + w"
    res = fit_logit(formula, toy)
    ref = smf.logit(formula, toy).fit(disp=0)
    assert list(res.params.index) == list(ref.params.index) and res.nobs == ref.nobs == 397
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-8)
    np.testing.assert_allclose(res.cov_params(), ref.cov_params(), rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.pvalues, ref.pvalues, rtol=1e-7)
    np.testing.assert_allclose(res.conf_int(), ref.conf_int(), rtol=1e-8)
    assert res.llf == pytest.approx(ref.llf, rel=1e-12) and res.converged
    assert list(res.row_labels) == list(ref.model.data.row_labels)
    # the formula's design applied to new rows, missing values -> NaN
    new = pd.DataFrame({"x": [0.5, np.nan, -1.0], "g": ["c", "a", "a"], "w": [30.0, 40.0, 75.0]})
    got = res.predict(new)
    assert np.isnan(got.iloc[1])
    np.testing.assert_allclose(got.iloc[[0, 2]], ref.predict(new.iloc[[0, 2]]), rtol=1e-10)
    np.testing.assert_allclose(res.predict(), ref.predict(), rtol=1e-10)
    lines = res.summary().splitlines()
    assert any(line.split()[:1] == ["x"] and f"{ref.params['x']:.4f}" in line for line in lines)


def test_fit_logit_travels_by_pickle(toy):
    res = fit_logit("y ~ x + C(g)", toy)
    back = pickle.loads(pickle.dumps(res))
    new = toy.iloc[:20]
    pd.testing.assert_series_equal(back.predict(new), res.predict(new))
    pd.testing.assert_series_equal(back.params, res.params)


def test_fit_logit_refuses_or_warns(toy):
    with pytest.raises(DataError, match="cannot be fitted"):  # x2 = 2 x: no full rank
        fit_logit("y ~ x + x2", toy.assign(x2=2 * toy["x"]))
    with pytest.raises(DataError, match="only one value"):
        fit_logit("y ~ x", toy.assign(y=1))
    with pytest.raises(DataError, match="coded 0/1"):
        fit_logit("w ~ x", toy)
    separated = toy.dropna().assign(y=lambda d: (d["x"] > 0).astype(int))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = fit_logit("y ~ x", separated)
    assert not res.converged and np.isfinite(res.params).all() and res.params["x"] > 10
    assert "did not converge" in res.summary()
