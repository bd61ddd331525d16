"""The proportional-odds model: at the maximum of its likelihood (score ~0), equal to independent
fits (R's MASS::polr, scipy on a likelihood written here), and honest when it cannot fit."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

from myocomp.errors import DataError
from myocomp.stats.glmm import ConvergenceWarning
from myocomp.stats.ordinal import fit_ordered_logit, ordered_logit_score


def simulate(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Proportional-odds data: covariates (continuous, 0/1, site dummies), 3 categories."""
    rng = np.random.default_rng(seed)
    site = rng.integers(0, 4, n)
    X = pd.DataFrame({"z": rng.normal(size=n), "age": rng.uniform(20, 70, n),
                      "female": rng.binomial(1, 0.5, n).astype(float)})
    for s in (1, 2, 3):
        X[f"site_{s}"] = (site == s).astype(float)
    beta = np.array([0.4, 0.02, -0.3, 0.2, -0.1, 0.3, 0.0, 0.0, 0.0])[:X.shape[1]]
    latent = X.to_numpy() @ beta + rng.logistic(size=n)
    y = np.digitize(latent, [1.0, 2.5])
    return X, y, beta


def independent_nll(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Negative log-likelihood written independently of the module: cutpoints as the first
    one plus exp increments, cdf by 1 / (1 + exp(-x)) (complex input allowed: complex-step
    derivatives)."""
    p = X.shape[1]
    b = theta[:p]
    cuts = np.cumsum(np.r_[theta[p], np.exp(theta[p + 1:])])
    eta = X @ b
    with np.errstate(over="ignore", divide="ignore"):
        cdf = np.column_stack([np.zeros(len(y)), *(1.0 / (1.0 + np.exp(-(c - eta)))
                                                    for c in cuts), np.ones(len(y))])
        rows = np.arange(len(y))
        return -np.sum(np.log(cdf[rows, y + 1] - cdf[rows, y]))


def complex_step_grad(f, theta: np.ndarray, h: float = 1e-30) -> np.ndarray:
    """Gradient exact to rounding (no differencing error)."""
    out = np.empty(theta.size)
    for j in range(theta.size):
        e = np.zeros(theta.size, complex)
        e[j] = 1j * h
        out[j] = f(theta + e).imag / h
    return out


def to_increments(params: np.ndarray, p: int) -> np.ndarray:
    cuts = params[p:]
    return np.r_[params[:p], cuts[0], np.log(np.diff(cuts))]


def independent_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy BFGS on :func:`independent_nll` with exact (complex-step) gradients and a tight
    tolerance; returned as (beta, cutpoints)."""
    p = X.shape[1]
    start = np.r_[np.zeros(p), -0.5, 0.0]
    fit = optimize.minimize(lambda t: independent_nll(t, X, y).real, start, method="BFGS",
                            jac=lambda t: complex_step_grad(lambda u: independent_nll(u, X, y), t),
                            options={"gtol": 1e-9, "maxiter": 2000})
    t = fit.x
    return np.r_[t[:p], np.cumsum(np.r_[t[p], np.exp(t[p + 1:])])]


@pytest.fixture(scope="module")
def sim():
    X, y, beta = simulate()
    return X, y, beta, fit_ordered_logit(X, y)


def test_score_at_the_estimates_is_zero(sim):
    X, y, _, res = sim
    assert res.converged and res.n_iter < 15
    theta = to_increments(res.params.to_numpy(), X.shape[1])
    grad = complex_step_grad(lambda t: independent_nll(t, X.to_numpy(), y), theta)
    # the score of a likelihood of n people: per person ~1e-10 at the maximum
    assert np.max(np.abs(grad)) <= 1e-6 * len(y) ** 0.5, grad
    assert np.max(np.abs(res.score)) <= 1e-6
    # a point 4e-4 from the maximum (where a quasi-Newton optimiser stopped) fails this check
    off = theta.copy()
    off[0] += 4e-4
    grad_off = complex_step_grad(lambda t: independent_nll(t, X.to_numpy(), y), off)
    assert np.max(np.abs(grad_off)) > 1e-3 * len(y) ** 0.5


def test_equals_an_independent_scipy_fit(sim):
    X, y, beta, res = sim
    ref = independent_fit(X.to_numpy(), y)
    np.testing.assert_allclose(res.params.to_numpy(), ref, atol=1e-6)
    assert np.abs(res.params.to_numpy()[:len(beta)] - beta).max() < 0.25  # recovers the truth
    assert np.isclose(res.llf, -independent_nll(to_increments(ref, X.shape[1]),
                                                X.to_numpy(), y), rtol=1e-12)


def test_analytic_derivatives_equal_numerical_ones(sim):
    X, y, _, res = sim
    Xv = X.to_numpy()
    theta = res.params.to_numpy() + np.random.default_rng(1).normal(scale=0.05, size=len(res.params))
    theta[-2:] = np.sort(theta[-2:])
    llf, score, hess = ordered_logit_score(theta, Xv, y, 3)
    numeric = optimize.approx_fprime(theta, lambda t: ordered_logit_score(t, Xv, y, 3)[0], 1e-6)
    np.testing.assert_allclose(score, numeric, rtol=1e-5, atol=1e-3)
    num_h = np.column_stack([
        (ordered_logit_score(theta + e, Xv, y, 3)[1] - ordered_logit_score(theta - e, Xv, y, 3)[1])
        / 2e-6 for e in np.eye(theta.size) * 1e-6])
    np.testing.assert_allclose(hess, num_h, rtol=1e-5, atol=1e-2)
    at_mle = ordered_logit_score(res.params.to_numpy(), Xv, y, 3)[2]
    np.testing.assert_allclose(res.bse.to_numpy(), np.sqrt(np.diag(np.linalg.inv(-at_mle))),
                               rtol=1e-12)


def polr(X: pd.DataFrame, y: np.ndarray, tmp_path) -> pd.DataFrame:
    """MASS::polr (logistic) with a tight tolerance: coefficients, cutpoints and SEs."""
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not installed (make test installs r-cran-mass)")
    data, out = tmp_path / "d.csv", tmp_path / "polr.csv"
    X.assign(y=y).to_csv(data, index=False)
    script = (f"d <- read.csv('{data}'); d$y <- factor(d$y, levels = 0:2, ordered = TRUE); "
              "f <- MASS::polr(y ~ ., data = d, method = 'logistic', Hess = TRUE, "
              "control = list(reltol = 1e-15, maxit = 10000)); "
              "est <- c(coef(f), f$zeta); "
              f"write.csv(data.frame(est = est, se = sqrt(diag(vcov(f)))), '{out}')")
    run = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 and "MASS" in run.stderr:
        pytest.skip(f"R package MASS not available: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    return pd.read_csv(out, index_col=0)


def test_equals_mass_polr(sim, tmp_path):
    X, y, _, res = sim
    ref = polr(X, y, tmp_path)
    assert list(ref.index) == [*X.columns, "0|1", "1|2"]
    np.testing.assert_allclose(res.params.to_numpy(), ref["est"].to_numpy(), atol=1e-8)
    # polr's SEs come from a numerically differenced Hessian
    np.testing.assert_allclose(res.bse.to_numpy(), ref["se"].to_numpy(), rtol=1e-3)


def test_not_converging_is_flagged_and_collinear_refused():
    X, y, _ = simulate(400, seed=3)
    sep = X.assign(sep=(y == 2).astype(float))  # perfectly predicts the top category
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = fit_ordered_logit(sep, y, maxiter=30)
    assert not res.converged
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        fit_ordered_logit(X.assign(twin=X["z"]), y)
    with pytest.raises(DataError, match="each present"):
        fit_ordered_logit(X, np.where(y == 1, 0, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_ordered_logit(X, y).converged
