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
