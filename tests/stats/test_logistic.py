"""The one Newton logistic fitter of the numerical core, against statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from myocomp.stats.logistic import logistic_newton


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
