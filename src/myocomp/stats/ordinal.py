"""Proportional-odds (cumulative logit) regression by Newton-Raphson with the analytic score and
Hessian: the ordinal model of the study's sensitivity analysis, fitted to the maximum of its
likelihood (a quasi-Newton optimiser on numerical gradients stops visibly short of it).

The model (as ``MASS::polr`` and statsmodels' ``OrderedModel``): for an outcome with ordered
categories ``0 .. K-1`` and covariates ``x`` (no intercept),
``P(Y <= j | x) = expit(c_j - x'beta)``, ``j = 0 .. K-2``, with cutpoints
``c_0 < c_1 < ... < c_{K-2}``. Positive ``beta`` mean higher categories.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg
from scipy.special import expit

from myocomp.errors import DataError
from myocomp.stats.glmm import ConvergenceWarning
from myocomp.stats.logistic import WaldInference

__all__ = ["OrderedLogitResults", "fit_ordered_logit", "ordered_logit_score"]


def _pieces(theta: np.ndarray, X: np.ndarray, y: np.ndarray, k: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per person: log-likelihood, ``d l/d a``, ``-d l/d b`` and the expits of ``a`` and ``b``,
    where ``a = c_y - x'beta`` (``+inf`` for the top category) and ``b = c_{y-1} - x'beta``
    (``-inf`` for the bottom one). ``F(a) - F(b)`` is computed as
    ``F(a) (1 - F(b)) (1 - exp(b - a))``, exact and free of cancellation."""
    p = X.shape[1]
    beta, cuts = theta[:p], np.r_[-np.inf, theta[p:], np.inf]
    eta = X @ beta
    a, b = cuts[y + 1] - eta, cuts[y] - eta
    fa, fb = expit(a), expit(b)
    gap = -np.expm1(b - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = np.log(fa) + np.log1p(-fb) + np.log(gap)
        g_a = (1.0 - fa) / ((1.0 - fb) * gap)
        g_b = fb / (fa * gap)
    return loglik, g_a, g_b, fa, fb


def _indicators(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, K-1) 0/1 matrices: which cutpoint is ``a`` (upper) and ``b`` (lower) of each person."""
    upper = (y[:, None] == np.arange(k - 1)[None, :]).astype(float)
    lower = (y[:, None] == np.arange(1, k)[None, :]).astype(float)
    return upper, lower


def ordered_logit_score(theta: np.ndarray, X: np.ndarray, y: np.ndarray, k: int
                        ) -> tuple[float, np.ndarray, np.ndarray]:
    """Log-likelihood, score (gradient) and Hessian of the proportional-odds model at
    ``theta = (beta (p,), cutpoints (K-1,))``: ``(llf, (p+K-1,), (p+K-1, p+K-1))``.

    ``X``: (n, p) covariates without intercept; ``y``: (n,) category codes ``0 .. k-1``.
    Cutpoints out of order give ``llf = -inf``.
    """
    theta = np.asarray(theta, float)
    if np.any(np.diff(theta[X.shape[1]:]) <= 0):
        q = theta.size
        return -np.inf, np.full(q, np.nan), np.full((q, q), np.nan)
    loglik, g_a, g_b, fa, fb = _pieces(theta, X, y, k)
    upper, lower = _indicators(y, k)
    za, zb = np.hstack([-X, upper]), np.hstack([-X, lower])
    score = za.T @ g_a - zb.T @ g_b
    h_aa = g_a * (1.0 - 2.0 * fa) - g_a**2
    h_bb = -g_b * (1.0 - 2.0 * fb) - g_b**2
    h_ab = g_a * g_b
    cross = za.T @ (zb * h_ab[:, None])
    hess = za.T @ (za * h_aa[:, None]) + zb.T @ (zb * h_bb[:, None]) + cross + cross.T
    return float(loglik.sum()), score, hess


def _start(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """beta = 0 and the cutpoints of the marginal distribution (logits of its cumulative
    proportions)."""
    cum = np.cumsum(np.bincount(y, minlength=k))[:-1] / len(y)
    return np.r_[np.zeros(X.shape[1]), np.log(cum / (1.0 - cum))]


def _newton(X: np.ndarray, y: np.ndarray, k: int, tol: float, maxiter: int
            ) -> tuple[np.ndarray, bool, int]:
    """Newton-Raphson from :func:`_start` with step halving (the log-likelihood is concave in
    ``theta`` on ordered cutpoints): ``(theta, converged, iterations)``. Converged: the last
    step below ``tol`` (relative to the estimates) and the Newton decrement below ``tol``².
    A singular information matrix at the start raises ``np.linalg.LinAlgError``; later (the
    estimates running off) it ends the iterations, not converged."""
    theta = _start(X, y, k)
    llf, score, hess = ordered_logit_score(theta, X, y, k)
    for it in range(maxiter):
        try:
            step = linalg.solve(-hess, score, assume_a="pos")
        except (linalg.LinAlgError, ValueError) as exc:
            if it > 0:  # estimates running off (separation): no information left
                return theta, False, it
            raise np.linalg.LinAlgError(f"singular information matrix ({exc})") from None
        for _ in range(60):
            new = ordered_logit_score(theta + step, X, y, k)
            if np.isfinite(new[0]) and new[0] >= llf - 1e-12 * abs(llf):
                break
            step = step / 2.0
        else:
            return theta, False, it
        decrement = float(score @ step)
        theta = theta + step
        llf, score, hess = new
        if (np.max(np.abs(step)) < tol * (1.0 + np.max(np.abs(theta)))
                and decrement < tol**2):
            return theta, True, it + 1
    return theta, False, maxiter


@dataclass
class OrderedLogitResults(WaldInference):
    """Results of :func:`fit_ordered_logit`, in the manner of statsmodels' results.

    ``params``: the maximum-likelihood estimates, the covariates' log cumulative odds ratios
    then the cutpoints (named ``"0/1"``, ``"1/2"``, ... after the categories they separate);
    ``vcov``: their covariance, the inverse of the observed information (analytic Hessian);
    ``llf``: the log-likelihood; ``score``: its gradient at ``params`` (the check that they
    are the maximum: ~0); ``converged``, ``n_iter``: Newton's outcome; ``nobs``.
    """

    params: pd.Series
    vcov: pd.DataFrame
    llf: float
    score: pd.Series
    converged: bool
    n_iter: int
    nobs: int

    def summary(self) -> str:
        """A text summary: fit statistics and the coefficient table."""
        lines = ["Proportional-odds logistic regression (maximum likelihood, Newton-Raphson)",
                 f"No. observations: {self.nobs}   log-likelihood: {self.llf:.4f}   "
                 f"converged: {self.converged} ({self.n_iter} iterations, "
                 f"max |score| {np.max(np.abs(self.score)):.2g})", "", *self.coef_table()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def fit_ordered_logit(exog: pd.DataFrame, endog: np.ndarray, tol: float = 1e-10,
                      maxiter: int = 100) -> OrderedLogitResults:
    """Maximum-likelihood proportional-odds model of ``endog`` (n,) integer category codes
    ``0 .. K-1``, each occurring, K >= 2) on ``exog`` (n, p) covariates without intercept.

    Newton-Raphson on the analytic score and Hessian until the step and the Newton decrement
    fall below ``tol`` (quadratic convergence: the score at the estimates is then ~1e-10 or
    less). A singular information matrix (collinear covariates) raises
    ``np.linalg.LinAlgError``; iterations that do not converge (e.g. separation) return
    ``converged=False`` with a :class:`ConvergenceWarning`.
    """
    X = exog.to_numpy(float)
    y = np.asarray(endog)
    if y.ndim != 1 or len(y) != len(X) or not np.all(np.isfinite(X)):
        raise DataError("ordinal model: endog must be (n,) and exog finite (n, p)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError("ordinal model: the outcome must be integer category codes")
    k = int(y.max()) + 1 if len(y) else 0
    if k < 2 or y.min() < 0 or np.any(np.bincount(y, minlength=k) == 0):
        raise DataError("ordinal model: the outcome needs codes 0 .. K-1 (K >= 2), each present")
    theta, converged, n_iter = _newton(X, y, k, tol, maxiter)
    llf, score, hess = ordered_logit_score(theta, X, y, k)
    if not converged:
        warnings.warn(f"ordinal model did not converge in {n_iter} Newton iterations "
                      f"(max |score| {np.nanmax(np.abs(score)):.2g}); estimates not reliable",
                      ConvergenceWarning, stacklevel=2)
    names = [*map(str, exog.columns), *(f"{j}/{j + 1}" for j in range(k - 1))]
    try:
        cov = np.linalg.inv(-hess)
    except np.linalg.LinAlgError:
        cov = np.full(hess.shape, np.nan)
    return OrderedLogitResults(
        params=pd.Series(theta, index=names), vcov=pd.DataFrame(cov, index=names, columns=names),
        llf=llf, score=pd.Series(score, index=names), converged=converged, n_iter=n_iter,
        nobs=len(y))
