"""Maximum-likelihood logistic regression by Newton-Raphson on a design matrix: the one
fixed-effects logistic fitter of the numerical core (the nomogram's model by :func:`fit_logit`,
the optimism bootstrap's refits, the calibration slope, the starting values of the mixed
model)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import patsy
from scipy import linalg, stats
from scipy.special import expit

from myocomp.errors import DataError
from myocomp.stats.design import design_from_dict, design_to_dict, eval_env

__all__ = ["LogisticResults", "WaldInference", "fit_logit", "logistic_newton"]


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
    beta, converged, _ = _iterate(X, y, m, beta, tol, maxiter)
    if not converged:
        raise np.linalg.LinAlgError("logistic Newton iterations did not converge (separation?)")
    return beta, (_inverse_information(X, m, beta) if covariance else None)


def _iterate(
    X: np.ndarray, y: np.ndarray, m: np.ndarray, beta: np.ndarray, tol: float, maxiter: int,
    keep_last: bool = False,
) -> tuple[np.ndarray, bool, int]:
    """Newton steps from ``beta``: ``(beta, converged, iterations)``. A singular information
    matrix raises ``np.linalg.LinAlgError``, unless ``keep_last`` and a step was taken (the
    estimates running off under separation): then the last finite estimate, not converged."""
    for it in range(maxiter):
        p = expit(X @ beta)
        info = (X * (m * p * (1.0 - p))[:, None]).T @ X
        try:
            step = linalg.solve(info, X.T @ (y - m * p), assume_a="pos")
        except (linalg.LinAlgError, ValueError) as exc:
            if keep_last and it > 0:
                return beta, False, it
            raise np.linalg.LinAlgError(str(exc)) from None
        if not np.all(np.isfinite(beta + step)):
            return beta, False, it
        beta = beta + step
        if np.max(np.abs(step)) < tol * (1.0 + np.max(np.abs(beta))):
            return beta, True, it + 1
    return beta, False, maxiter


def _inverse_information(X: np.ndarray, m: np.ndarray, beta: np.ndarray) -> np.ndarray:
    p = expit(X @ beta)
    info = (X * (m * p * (1.0 - p))[:, None]).T @ X
    return np.linalg.inv(info)


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


class WaldInference:
    """Wald inference of a results object with ``params`` (Series) and their covariance
    ``vcov`` (DataFrame): shared by :class:`LogisticResults` and the mixed model's results."""

    params: pd.Series
    vcov: pd.DataFrame

    @property
    def bse(self) -> pd.Series:
        """Standard errors of the estimates."""
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.params.index)

    def cov_params(self) -> pd.DataFrame:
        """Covariance matrix of the estimates (inverse information)."""
        return self.vcov.copy()

    @property
    def tvalues(self) -> pd.Series:
        """Wald z statistics."""
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided Wald p-values (normal reference, as statsmodels' Logit)."""
        return pd.Series(2.0 * stats.norm.sf(np.abs(self.tvalues)), index=self.params.index)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals (log-odds scale), columns ``lower``, ``upper``."""
        q = stats.norm.ppf(1.0 - alpha / 2.0)
        return pd.DataFrame({"lower": self.params - q * self.bse,
                             "upper": self.params + q * self.bse})

    def coef_table(self) -> list[str]:
        """The coefficient table of a text summary: estimate, standard error, z, p, 95 % CI."""
        ci = self.conf_int()
        width = max(len(str(n)) for n in self.params.index) + 1
        lines = [f"{'':<{width}} {'coef':>10} {'std err':>10} {'z':>8} {'P>|z|':>10} {'[0.025':>10} {'0.975]':>10}"]
        for name in self.params.index:
            lines.append(f"{name!s:<{width}} {self.params[name]:>10.4f} {self.bse[name]:>10.4f} "
                         f"{self.tvalues[name]:>8.3f} {self.pvalues[name]:>10.3g} "
                         f"{ci.loc[name, 'lower']:>10.4f} {ci.loc[name, 'upper']:>10.4f}")
        return lines


@dataclass
class LogisticResults(WaldInference):
    """Results of :func:`fit_logit`, in the manner of statsmodels' ``LogitResults``.

    ``params``: the maximum-likelihood estimates (log-odds scale, a Series by design column);
    ``vcov``: their covariance, the inverse information (DataFrame); ``llf``: the
    log-likelihood; ``converged``, ``n_iter``: Newton's outcome; ``design_info``: the patsy
    design of the formula's right-hand side (applied again by :meth:`predict`); ``exog``
    (nobs, p), ``endog`` (nobs,): the complete cases' design and 0/1 outcome; ``row_labels``:
    their labels in the data.
    """

    formula: str
    params: pd.Series
    vcov: pd.DataFrame
    llf: float
    converged: bool
    n_iter: int
    exog: np.ndarray = field(repr=False)
    endog: np.ndarray = field(repr=False)
    row_labels: pd.Index = field(repr=False)
    design_info: patsy.DesignInfo = field(repr=False)

    @property
    def nobs(self) -> int:
        return len(self.endog)

    def predict(self, newdata: pd.DataFrame | None = None, linear: bool = False) -> pd.Series:
        """Probabilities (log-odds with ``linear``) of the rows of ``newdata``, through the
        formula's design; NaN where a variable is missing. ``None``: the fitted values."""
        if newdata is None:
            eta = pd.Series(self.exog @ self.params.to_numpy(), index=self.row_labels)
        else:
            try:
                (X,) = patsy.build_design_matrices([self.design_info], newdata,
                                                   NA_action="drop", return_type="dataframe")
            except patsy.PatsyError as exc:
                raise DataError(f"cannot build the design matrix for prediction: "
                                f"{str(exc).splitlines()[0]}") from None
            eta = (X @ self.params.to_numpy()).reindex(newdata.index)
        return eta if linear else pd.Series(expit(eta.to_numpy()), index=eta.index)

    def summary(self) -> str:
        """A text summary: fit statistics and the coefficient table."""
        lines = ["Logistic regression (maximum likelihood, Newton-Raphson)",
                 f"Formula: {self.formula}",
                 f"No. observations: {self.nobs}   log-likelihood: {self.llf:.4f}   "
                 f"converged: {self.converged} ({self.n_iter} iterations)", "", *self.coef_table()]
        if not self.converged:
            lines += ["", "WARNING: the Newton iterations did not converge (separation?)"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __getstate__(self) -> dict[str, Any]:
        # patsy's DesignInfo does not pickle: travel as its JSON description
        state = dict(self.__dict__)
        state["design_info"] = design_to_dict(self.design_info)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, design_info=design_from_dict(state["design_info"]))


def fit_logit(formula: str, data: pd.DataFrame, maxiter: int = 200) -> LogisticResults:
    """Maximum-likelihood logistic regression of ``formula`` (patsy; outcome coded 0/1) on the
    complete cases of its variables in ``data``, by :func:`logistic_newton`'s iterations.

    A design without full rank, or one outcome value, raises :class:`DataError`; estimates
    that run off (separation) stop at the last finite step, not converged, with a
    ``RuntimeWarning``.
    """
    if not data.index.is_unique:
        raise DataError("the data's index has duplicate labels")
    try:
        y, x = patsy.dmatrices(formula, data, NA_action="drop", return_type="dataframe",
                               eval_env=eval_env())
    except patsy.PatsyError as exc:
        raise DataError(f"formula {formula!r}: {str(exc).splitlines()[0]}") from exc
    if y.shape[1] != 1 or not set(np.unique(y.to_numpy())) <= {0.0, 1.0}:
        raise DataError(f"formula {formula!r}: the outcome must be one column coded 0/1")
    if len(np.unique(y.to_numpy())) < 2:
        raise DataError(
            f"formula {formula!r}: the outcome has only one value in the complete cases"
        )
    X, yv, m = x.to_numpy(float), y.iloc[:, 0].to_numpy(float), np.ones(len(y))
    try:
        beta, converged, n_iter = _iterate(X, yv, m, np.zeros(X.shape[1]), 1e-9, maxiter,
                                           keep_last=True)
    except np.linalg.LinAlgError as exc:
        raise DataError(f"logistic model {formula!r} cannot be fitted: {exc}") from exc
    try:
        cov = _inverse_information(X, m, beta)
    except np.linalg.LinAlgError:  # estimates run off: no information left
        cov = np.full((X.shape[1], X.shape[1]), np.nan)
    if not converged:
        warnings.warn(
            f"logistic model {formula!r} did not converge (separation?); check the estimates",
            RuntimeWarning,
            stacklevel=2,
        )
    eta, names = X @ beta, list(x.columns)
    return LogisticResults(
        formula=formula, params=pd.Series(beta, index=names),
        llf=float(np.sum(yv * eta - np.logaddexp(0.0, eta))), vcov=pd.DataFrame(cov, index=names, columns=names), converged=converged, n_iter=n_iter,
        exog=X, endog=yv, row_labels=x.index, design_info=x.design_info,
    )
