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
