"""Maximum-likelihood logistic regression by Newton-Raphson on a design matrix: the one
fixed-effects logistic fitter of the numerical core (the optimism bootstrap's refits, the
calibration slope, the starting values of the mixed model)."""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.special import expit

__all__ = ["logistic_newton"]


def logistic_newton(
    X: np.ndarray,
    y: np.ndarray,
    beta0: np.ndarray | None = None,
    tol: float = 1e-9,
    maxiter: int = 50,
    trials: np.ndarray | None = None,
    covariance: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Maximum-likelihood logistic regression by Newton-Raphson: ``(beta, covariance)``.

    ``X``: (n, p) design (with an intercept column if wanted); ``y``: (n,) successes, 0/1 for
    binary outcomes; ``trials``: (n,) binomial trials (default 1). The covariance is the
    inverse information at the estimate (None with ``covariance=False``, which saves its
    computation). A start ``beta0`` that fails is retried from zero.
    Raises ``np.linalg.LinAlgError`` on a singular information matrix or no convergence (e.g.
    separation).
    """
    m = np.ones(len(y)) if trials is None else np.asarray(trials, float)
    if beta0 is not None:
        try:
            return _newton(X, y, m, np.array(beta0, float), tol, maxiter, covariance)
        except np.linalg.LinAlgError:
            pass
    return _newton(X, y, m, np.zeros(X.shape[1]), tol, maxiter, covariance)


def _newton(
    X: np.ndarray, y: np.ndarray, m: np.ndarray, beta: np.ndarray, tol: float, maxiter: int,
    covariance: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    for _ in range(maxiter):
        p = expit(X @ beta)
        info = (X * (m * p * (1.0 - p))[:, None]).T @ X
        try:
            step = linalg.solve(info, X.T @ (y - m * p), assume_a="pos")
        except (linalg.LinAlgError, ValueError) as exc:
            raise np.linalg.LinAlgError(str(exc)) from None
        beta = beta + step
        if not np.all(np.isfinite(beta)):
            break
        if np.max(np.abs(step)) < tol * (1.0 + np.max(np.abs(beta))):
            if not covariance:
                return beta, None
            p = expit(X @ beta)
            info = (X * (m * p * (1.0 - p))[:, None]).T @ X
            return beta, np.linalg.inv(info)
    raise np.linalg.LinAlgError("logistic Newton iterations did not converge (separation?)")


def logistic_newton_weighted(
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    beta0: np.ndarray,
    tol: float = 1e-9,
    maxiter: int = 50,
    products: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Many weighted logistic fits of one design at once, by Newton-Raphson: ``(beta, ok)``.

    ``X``: (n, p) design; ``y``: (n,) 0/1 outcomes; ``weights``: (k, n) non-negative case
    weights of the k fits (e.g. bootstrap counts: a fit with the counts of a resample is the
    fit on the resampled rows); ``beta0``: (p,) start of every fit. ``products``: the (n,
    p(p+1)/2) products of :func:`column_products` of ``X`` if already computed. Returns the
    (k, p) estimates and a (k,) mask of the fits that converged by the rule of
    :func:`logistic_newton` (the others, e.g. separated or singular, are left to it).
    """
    k, p = weights.shape[0], X.shape[1]
    XX = column_products(X) if products is None else products
    rows, cols = np.triu_indices(p)
    beta = np.tile(np.asarray(beta0, float), (k, 1))
    active, ok = np.ones(k, bool), np.zeros(k, bool)
    for _ in range(maxiter):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        mu = expit(beta[a] @ X.T)
        info = np.empty((a.size, p, p))
        info[:, rows, cols] = (weights[a] * mu * (1.0 - mu)) @ XX
        info[:, cols, rows] = info[:, rows, cols]
        grad = (weights[a] * (y - mu)) @ X
        pd_ok = np.array([_is_positive_definite(m) for m in info])
        step = np.zeros((a.size, p))
        if pd_ok.any():
            step[pd_ok] = np.linalg.solve(info[pd_ok], grad[pd_ok][:, :, None])[:, :, 0]
        beta[a] += step
        finite = np.isfinite(beta[a]).all(axis=1) & pd_ok
        done = finite & (np.abs(step).max(axis=1) < tol * (1.0 + np.abs(beta[a]).max(axis=1)))
        ok[a[done]] = True
        active[a[done | ~finite]] = False
    return beta, ok


def column_products(X: np.ndarray) -> np.ndarray:
    """``X[:, i] * X[:, j]`` for ``i <= j`` (upper triangle, row by row): (n, p(p+1)/2), so
    that ``w @ column_products(X)`` holds the upper triangle of ``X' diag(w) X``."""
    rows, cols = np.triu_indices(X.shape[1])
    return X[:, rows] * X[:, cols]


def _is_positive_definite(m: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        return False
    return True
