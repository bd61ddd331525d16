"""Maximum-likelihood mixed logistic regression with one random intercept per group.

The model is lme4's ``glmer(y ~ X + (1 | group), family = binomial)``::

    logit P(y_i = 1) = x_i' beta + theta * u_j(i),      u_j ~ N(0, 1) independently,

so ``theta`` is the standard deviation of the random intercepts. The marginal likelihood is an
integral over each scalar ``u_j``; it is approximated as lme4 does it:

* ``nagq = 1``: the Laplace approximation at the conditional modes ``u_j(theta, beta)``. By
  default (``laplace="lme4"``) the deviance is computed the way lme4's C++ code computes it
  (PIRLS from lme4's first-stage fit, lme4's stopping rule, log-determinant from the weights one
  iteration behind); with small clusters this moves the estimates by up to ~1e-2 compared with
  the exact Laplace approximation (``laplace="exact"``), with large clusters by ~1e-7.
* ``nagq > 1``: adaptive Gauss–Hermite quadrature, centred at the conditional mode of each group
  and scaled by its conditional standard deviation ``(1 + theta^2 sum_i w_i)^(-1/2)``.

As in lme4 (nAGQ > 0) the approximate deviance is minimised jointly over ``(theta, beta)``
(L-BFGS-B on a preconditioned scale, then Newton steps); the conditional modes are found by a
Newton (penalised IRLS) loop run for all groups at once, and the deviance comes with its
analytic gradient. Standard errors are lme4's default: ``2 H^{-1}`` restricted to ``beta``, with
``H`` the Hessian of the approximate deviance with respect to ``(theta, beta)`` (central
differences of the analytic gradient). ``loglik`` includes the binomial constant (lme4's
``logLik`` at nAGQ = 1); ``deviance`` is lme4's deviance (relative to the saturated model).
"""

from __future__ import annotations

import ast
import builtins
import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import patsy
from scipy import optimize, special

from myocomp.errors import DataError
from myocomp.stats.design import design_from_dict as _design_from_dict
from myocomp.stats.design import design_to_dict as _design_to_dict
from myocomp.stats.design import eval_env as _eval_env
from myocomp.stats.design import json_value as _json_value
from myocomp.stats.logistic import WaldInference, logistic_newton

__all__ = [
    "BoundaryFitWarning",
    "ConvergenceWarning",
    "MixedLogit",
    "MixedLogitResults",
    "design_matrices",
    "fit_mixed_logit",
]


class BoundaryFitWarning(UserWarning):
    """The random-intercept SD was estimated at (or next to) zero: a singular fit."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped before the convergence criteria were met."""


# A fit whose SD falls below this is reported as singular (lme4's isSingular tolerance).
_BOUNDARY_TOL = 1e-4


# --------------------------------------------------------------------------------------------
# Design matrices
# --------------------------------------------------------------------------------------------


def _known_names() -> set[str]:
    return {"np"} | set(vars(patsy.builtins)) | set(dir(builtins))


def _factor_names(code: str) -> set[str]:
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError as exc:
        raise DataError(f"cannot parse formula term {code!r}: {exc.msg}") from None
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _split_formula(formula: str) -> tuple[str, patsy.ModelDesc]:
    if not isinstance(formula, str) or "~" not in formula:
        raise DataError(f"formula must look like 'outcome ~ terms', got {formula!r}")
    try:
        desc = patsy.ModelDesc.from_formula(formula)
    except patsy.PatsyError as exc:
        raise DataError(f"invalid formula {formula!r}: {exc}") from None
    if len(desc.lhs_termlist) != 1 or len(desc.lhs_termlist[0].factors) != 1:
        raise DataError(f"formula {formula!r} must have exactly one outcome on the left of '~'")
    lhs_code = desc.lhs_termlist[0].factors[0].code
    return lhs_code, patsy.ModelDesc([], desc.rhs_termlist)


def _rhs_codes(rhs: patsy.ModelDesc) -> list[str]:
    return [f.code for term in rhs.rhs_termlist for f in term.factors]


def _used_columns(codes: list[str], data: pd.DataFrame) -> list[str]:
    known = _known_names()
    columns = set(map(str, data.columns))
    used: list[str] = []
    missing: list[str] = []
    for code in codes:
        if code in columns:  # a column whose name is not a Python identifier
            used.append(code)
            continue
        for name in sorted(_factor_names(code)):
            if name in columns:
                used.append(name)
            elif name not in known:
                missing.append(name)
        # Q("odd name") refers to a column by string
        for node in ast.walk(ast.parse(code.strip(), mode="eval")):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Q"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                name = str(node.args[0].value)
                (used if name in columns else missing).append(name)
    if missing:
        names = ", ".join(repr(m) for m in dict.fromkeys(missing))
        raise DataError(f"column(s) {names} used in the formula are not in the data")
    return list(dict.fromkeys(used))


def _outcome(code: str, frame: pd.DataFrame) -> np.ndarray:
    if code in frame.columns:
        col = frame[code]
        if col.dtype == bool or str(col.dtype) == "boolean":
            return col.to_numpy(dtype=float)
        values = pd.to_numeric(col, errors="coerce")
        if values.isna().any():
            raise DataError(f"outcome column {code!r} is not numeric (0/1 or counts)")
        return values.to_numpy(dtype=float)
    try:
        mat = patsy.dmatrix(
            patsy.ModelDesc([], [patsy.Term([patsy.EvalFactor(code)])]),
            frame,
            eval_env=_eval_env(),
            NA_action="raise",
            return_type="dataframe",
        )
    except patsy.PatsyError as exc:
        raise DataError(f"cannot evaluate outcome {code!r}: {exc}") from None
    if mat.shape[1] == 2 and str(mat.columns[1]).endswith("[True]"):
        return mat.iloc[:, 1].to_numpy(dtype=float)
    if mat.shape[1] != 1:
        raise DataError(f"outcome {code!r} must be one numeric column (0/1 or counts)")
    return mat.iloc[:, 0].to_numpy(dtype=float)


def _as_categorical(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Text columns as pandas Categoricals with sorted levels (patsy's own order): same design
    matrix, but patsy then codes them with numpy instead of one Python call per row."""
    out = {}
    for name in columns:
        col = frame[name]
        if pd.api.types.is_string_dtype(col.dtype) and not isinstance(
            col.dtype, pd.CategoricalDtype
        ):
            levels = list(col.unique())
            if all(isinstance(v, str) for v in levels):
                out[name] = pd.Categorical(col, categories=sorted(levels))
    return frame.assign(**out) if out else frame


def _design_matrix(rhs: patsy.ModelDesc, frame: pd.DataFrame) -> tuple[np.ndarray, patsy.DesignInfo]:
    """``patsy.dmatrix(rhs, frame)`` as a float array with its DesignInfo, in one pass.

    patsy learns the levels and transforms (fast for pandas Categoricals), then the columns are
    built here: patsy codes a boxed ``C(x)`` factor with one Python call per row, which costs
    more than the whole mixed-model fit on 27,518 people. Falls back to patsy's builder for
    factors it does not handle (numerical factors that are not one (n, k) array)."""
    (info,) = patsy.design_matrix_builders(
        [rhs.rhs_termlist], lambda: iter([frame]), _eval_env(), NA_action="raise"
    )
    X = _columns(info, frame)
    if X is None:
        (mat,) = patsy.build_design_matrices([info], frame, NA_action="raise")
        X = np.asarray(mat, dtype=float)
    return X, info


def _factor_values(info: patsy.DesignInfo, frame: pd.DataFrame) -> dict | None:
    """Each factor evaluated on ``frame``: integer level codes (categorical) or an (n, k)
    float array (numerical); None where a factor is of a kind left to patsy."""
    n = len(frame)
    values: dict = {}
    for factor, fi in info.factor_infos.items():
        v = factor.eval(fi.state, frame)
        if fi.type == "categorical":
            v = v.data if isinstance(v, patsy.categorical._CategoricalBox) else v
            codes = _level_codes(v, list(fi.categories))
            if codes.shape != (n,) or (codes < 0).any():
                return None
            values[factor] = codes
        else:
            a = np.asarray(v)
            a = a[:, None] if a.ndim == 1 else a
            if a.shape != (n, fi.num_columns) or not np.issubdtype(a.dtype, np.number):
                return None
            values[factor] = a.astype(float)
    return values


def _level_codes(v: Any, categories: list) -> np.ndarray:
    """Index of each value of ``v`` in ``categories`` (-1 if absent); a pandas Categorical
    with these very categories is read off its codes."""
    dtype = getattr(v, "dtype", None)
    if isinstance(dtype, pd.CategoricalDtype) and list(dtype.categories) == categories:
        return np.asarray(v.cat.codes if isinstance(v, pd.Series) else v.codes)
    return np.asarray(pd.Categorical(np.asarray(v, dtype=object), categories=categories).codes)


def _columns(info: patsy.DesignInfo, frame: pd.DataFrame) -> np.ndarray | None:
    """The design matrix of ``info`` on ``frame``, column for column as patsy builds it
    (within a subterm the left-most factor's columns vary fastest)."""
    values = _factor_values(info, frame)
    if values is None:
        return None
    n, cols = len(frame), []
    for subterms in info.term_codings.values():
        for st in subterms:
            widths = [
                st.contrast_matrices[f].matrix.shape[1]
                if f in st.contrast_matrices
                else info.factor_infos[f].num_columns
                for f in st.factors
            ]
            for combo in itertools.product(*[range(k) for k in reversed(widths)]):
                col = np.ones(n)
                for f, j in zip(st.factors, combo[::-1], strict=True):
                    if f in st.contrast_matrices:
                        col = col * st.contrast_matrices[f].matrix[values[f], j]
                    else:
                        col = col * values[f][:, j]
                cols.append(col)
    return np.column_stack(cols) if cols else np.empty((n, 0))


def design_matrices(formula: str, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(y, X, column names)`` of the patsy ``formula`` on the rows of ``data`` with no
    missing value in the columns it uses: the numbers of ``patsy.dmatrices(formula, data)``,
    built as :class:`MixedLogit` builds its design (categorical factors coded in one
    vectorised pass). Raises :class:`DataError` for a bad formula or non-finite values."""
    lhs_code, rhs = _split_formula(formula)
    used = _used_columns([lhs_code, *_rhs_codes(rhs)], data)
    frame = data.loc[data[used].notna().all(axis=1).to_numpy()]
    try:
        X, info = _design_matrix(rhs, _as_categorical(frame, used))
    except patsy.PatsyError as exc:
        raise DataError(f"cannot build the design matrix of {formula!r}: {exc}") from None
    if not np.isfinite(X).all():
        raise DataError(f"the design matrix of {formula!r} has non-finite values")
    return _outcome(lhs_code, frame), X, list(info.column_names)


@dataclass
class _Design:
    X: np.ndarray  # (n, p) fixed-effects design
    y: np.ndarray  # (n,) successes
    m: np.ndarray  # (n,) trials (1 for binary outcomes)
    codes: np.ndarray  # (n,) group index 0..J-1
    levels: list  # group labels, in the order of the codes
    design_info: patsy.DesignInfo
    n_dropped: int


def _build(
    formula: str, data: pd.DataFrame, groups: str, trials: str | None
) -> tuple[_Design, str]:
    if not isinstance(data, pd.DataFrame):
        raise DataError("data must be a pandas DataFrame")
    lhs_code, rhs = _split_formula(formula)
    if groups not in data.columns:
        raise DataError(f"groups column {groups!r} is not in the data")
    if data[groups].isna().all():
        raise DataError(f"groups column {groups!r} has no non-missing values")
    if trials is not None and trials not in data.columns:
        raise DataError(f"trials column {trials!r} is not in the data")
    used = _used_columns([lhs_code, *_rhs_codes(rhs)], data)
    used = list(dict.fromkeys([*used, groups, *([trials] if trials else [])]))
    keep = data[used].notna().all(axis=1).to_numpy()
    frame = data.loc[keep]
    n_dropped = int(len(data) - len(frame))
    if len(frame) == 0:
        raise DataError(
            f"no rows left after dropping rows with missing values in {', '.join(used)}"
        )
    try:
        Xv, design_info = _design_matrix(rhs, _as_categorical(frame, used))
    except patsy.PatsyError as exc:
        raise DataError(f"cannot build the design matrix of {formula!r}: {exc}") from None
    y = _outcome(lhs_code, frame)
    if trials is None:
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"outcome {lhs_code!r} must be coded 0/1 (or give trials= for counts)")
        m = np.ones_like(y)
    else:
        m = pd.to_numeric(frame[trials], errors="coerce").to_numpy(dtype=float)
        if np.isnan(m).any() or (m < 0).any() or (m != np.round(m)).any():
            raise DataError(f"trials column {trials!r} must hold non-negative integers")
        if (y < 0).any() or (y > m).any() or (y != np.round(y)).any():
            raise DataError(
                f"outcome {lhs_code!r} must hold integer successes between 0 and {trials!r}"
            )
    if not np.isfinite(Xv).all():
        raise DataError(f"the design matrix of {formula!r} has non-finite values")
    rank = np.linalg.matrix_rank(Xv)
    if rank < Xv.shape[1]:
        raise DataError(
            f"the fixed-effects design of {formula!r} is rank deficient "
            f"(rank {rank} < {Xv.shape[1]} columns: {', '.join(design_info.column_names)})"
        )
    codes, uniques = pd.factorize(frame[groups], sort=True)
    design = _Design(
        X=Xv,
        y=y,
        m=m,
        codes=codes.astype(np.intp),
        levels=list(uniques),
        design_info=design_info,
        n_dropped=n_dropped,
    )
    return design, lhs_code


# --------------------------------------------------------------------------------------------
# The approximate deviance and its gradient
# --------------------------------------------------------------------------------------------


def _softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))`` without overflow (5x faster than ``np.logaddexp(0, x)``)."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _expit(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``; exp overflows to inf for x < -709, giving exactly 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# Up to this many groups, group sums of 2-D arrays are BLAS products over each group's rows
# (several times faster than np.add.reduceat along axis 0); beyond it, reduceat.
_SLICED_GROUPS = 64


class _Deviance:
    """Approximate deviance ``D(theta, beta)`` (lme4's, minus the saturated constant).

    Rows are sorted by group so that group sums run over contiguous slices.
    """

    def __init__(self, design: _Design, nagq: int) -> None:
        order = np.argsort(design.codes, kind="stable")
        self.X = design.X[order]
        self.y = design.y[order]
        self.m = design.m[order]
        self.g = design.codes[order]
        self.J = len(design.levels)
        self.starts = np.flatnonzero(np.r_[True, np.diff(self.g) != 0])
        ends = np.r_[self.starts[1:], len(self.g)]
        self.slices = [slice(a, b) for a, b in zip(self.starts, ends, strict=True)]
        self.ones = np.ones(len(self.g))
        nodes, weights = np.polynomial.hermite_e.hermegauss(nagq)
        self.z = nodes
        # weights of the standard normal density times exp(z^2/2): sum_k wt_k f(z_k) ~ int f
        self.wt = weights / math.sqrt(2.0 * math.pi) * np.exp(nodes**2 / 2.0)
        self.u = np.zeros(self.J)
        self.nfev = 0
        self.sat_const = float(
            2.0
            * np.sum(
                special.xlogy(self.y, self.y)
                + special.xlogy(self.m - self.y, self.m - self.y)
                - special.xlogy(self.m, self.m)
            )
        )
        self.log_binom = float(
            np.sum(
                special.gammaln(self.m + 1)
                - special.gammaln(self.y + 1)
                - special.gammaln(self.m - self.y + 1)
            )
        )

    def gsum(self, a: np.ndarray) -> np.ndarray:
        """Group sums of ``a``, (n,) -> (J,) or (n, K) -> (J, K)."""
        if a.ndim == 1 or self.J > _SLICED_GROUPS:
            return np.add.reduceat(a, self.starts, axis=0)
        return self.wsum(self.ones, a)

    def wsum(self, w: np.ndarray, M: np.ndarray) -> np.ndarray:
        """Group sums of ``w[:, None] * M``: (n,), (n, K) -> (J, K)."""
        if self.J > _SLICED_GROUPS:
            return np.add.reduceat(w[:, None] * M, self.starts, axis=0)
        return np.stack([w[sl] @ M[sl] for sl in self.slices])

    def _h(self, eta: np.ndarray) -> np.ndarray:
        """Per-group data deviance ``2 sum(m softplus(eta) - y eta)``; ``eta`` is (n,) or (n,K)."""
        if eta.ndim == 1:
            return self.gsum(2.0 * (self.m * _softplus(eta) - self.y * eta))
        return self.gsum(2.0 * (self.m[:, None] * _softplus(eta) - self.y[:, None] * eta))

    def modes(self, eta0: np.ndarray, theta: float, u: np.ndarray | None = None) -> np.ndarray:
        """Conditional modes of u (one per group) by damped Newton steps, all groups at once."""
        u = (self.u if u is None else u).copy()
        if theta == 0.0:
            return np.zeros(self.J)
        g = self.g
        eta = eta0 + theta * u[g]
        h = self._h(eta) + u**2
        for _ in range(200):
            mu = _expit(eta)
            r = self.gsum(self.y - self.m * mu)
            S = self.gsum(self.m * mu * (1.0 - mu))
            step = (u - theta * r) / (1.0 + theta**2 * S)
            if np.max(np.abs(step)) < 1e-11 * (1.0 + np.max(np.abs(u))):
                u = u - step
                break
            frac = np.ones(self.J)
            for _ in range(60):
                u_new = u - frac * step
                eta_new = eta0 + theta * u_new[g]
                h_new = self._h(eta_new) + u_new**2
                worse = h_new > h + 1e-12 * np.abs(h)
                if not worse.any():
                    break
                frac[worse] *= 0.5
            u, eta, h = u_new, eta_new, h_new
        return u

    def __call__(self, theta: float, beta: np.ndarray) -> tuple[float, np.ndarray]:
        """Return ``D`` and its gradient with respect to ``(theta, beta)``."""
        self.nfev += 1
        X, y, m, g = self.X, self.y, self.m, self.g
        eta0 = X @ beta
        u = self.modes(eta0, theta)
        self.u = u
        eta = eta0 + theta * u[g]
        mu = _expit(eta)
        v = m * mu * (1.0 - mu)
        vp = v * (1.0 - 2.0 * mu)
        S = self.gsum(v)
        r = self.gsum(y - m * mu)
        A = 1.0 + theta**2 * S
        s = 1.0 / np.sqrt(A)
        h0 = self._h(eta) + u**2
        # derivatives of the conditional modes (implicit function theorem)
        du_db = -theta * self.wsum(v, X) / A[:, None]  # (J, p)
        du_dt = (r - theta * u * S) / A  # (J,)
        Vp = self.gsum(vp)
        dS_db = self.wsum(vp, X) + theta * Vp[:, None] * du_db
        dS_dt = Vp * (u + theta * du_dt)
        dA_db = theta**2 * dS_db
        dA_dt = 2.0 * theta * S + theta**2 * dS_dt
        ds_db = -0.5 * A[:, None] ** -1.5 * dA_db
        ds_dt = -0.5 * A**-1.5 * dA_dt
        # quadrature nodes a_jk = u_j + s_j z_k
        a = u[:, None] + s[:, None] * self.z[None, :]  # (J, K)
        eta_k = eta0[:, None] + theta * a[g]  # (n, K)
        hk = self._h(eta_k) + a**2
        e = self.wt[None, :] * np.exp(-(hk - h0[:, None]) / 2.0)
        Q = e.sum(axis=1)
        D = float(np.sum(h0 + np.log(A) - 2.0 * np.log(Q)))
        omega = e / Q[:, None]  # (J, K)
        res = y[:, None] - m[:, None] * _expit(eta_k)  # (n, K)
        Rk = self.gsum(res)  # (J, K)
        hp = -2.0 * theta * Rk + 2.0 * a  # d h / d u at the nodes
        om1 = np.sum(omega * hp, axis=1)
        om2 = np.sum(omega * hp * self.z[None, :], axis=1)
        c = -2.0 * np.sum(omega[g] * res, axis=1)
        grad_b = X.T @ c + np.sum((-2.0 / s + om2)[:, None] * ds_db + om1[:, None] * du_db, axis=0)
        grad_t = float(
            np.sum(
                -2.0 * ds_dt / s
                + np.sum(omega * (-2.0 * Rk * a), axis=1)
                + om1 * du_dt
                + om2 * ds_dt
            )
        )
        return D, np.r_[grad_t, grad_b]

    # ---- lme4's Laplace deviance ------------------------------------------------------------
    def joint_modes(
        self, theta: float, beta: np.ndarray, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Joint minimiser of ``sum dev + |u|^2`` over ``(beta, u)`` for fixed theta (lme4's
        nAGQ = 0 inner problem); returns beta, u and the profiled deviance with log|L|^2."""
        X, y, m, g = self.X, self.y, self.m, self.g
        beta, u = beta.copy(), u.copy()

        def pdev(b: np.ndarray, uu: np.ndarray) -> tuple[float, np.ndarray]:
            e = X @ b + theta * uu[g]
            return float(np.sum(self._h(e)) + uu @ uu), e

        P, eta = pdev(beta, u)
        for _ in range(100):
            mu = _expit(eta)
            w = m * mu * (1.0 - mu)
            res = y - m * mu
            A = 1.0 + theta**2 * self.gsum(w)
            gu = u - theta * self.gsum(res)
            gb = -(X.T @ res)
            Xw = X * w[:, None]
            Hub = theta * self.gsum(Xw)  # (J, p)
            schur = X.T @ Xw - Hub.T @ (Hub / A[:, None])
            db = np.linalg.solve(schur, gb - Hub.T @ (gu / A))
            du = (gu - Hub @ db) / A
            t = 1.0
            for _ in range(40):
                P_new, eta_new = pdev(beta - t * db, u - t * du)
                if P_new <= P + 1e-12 * abs(P):
                    break
                t /= 2.0
            beta, u, P, eta = beta - t * db, u - t * du, P_new, eta_new
            if max(np.max(np.abs(db)), np.max(np.abs(du))) < 1e-10:
                break
        mu = _expit(eta)
        A = 1.0 + theta**2 * self.gsum(self.m * mu * (1.0 - mu))
        return beta, u, P + float(np.sum(np.log(A)))

    def stage1(self, theta_hint: float, beta: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """lme4's first stage (nAGQ = 0): optimise theta with (beta, u) profiled out.

        Returns the linear predictor at that fit, lme4's ``lp0`` (every later PIRLS starts
        there), and the fit's ``theta`` and ``beta`` (the start of the second stage).
        """
        state = {"beta": beta.copy(), "u": np.zeros(self.J)}

        def f(theta: float) -> float:
            b, u, val = self.joint_modes(theta, state["beta"], state["u"])
            state["beta"], state["u"] = b, u
            return val

        upper = max(5.0, 3.0 * theta_hint)
        while True:
            opt = optimize.minimize_scalar(
                f, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-7}
            )
            if opt.x < 0.9 * upper or upper > 1e3:
                break
            upper *= 10.0
        theta1 = float(opt.x)
        b, u, _ = self.joint_modes(theta1, state["beta"], state["u"])
        return self.X @ b + theta1 * u[self.g], theta1, b

    def lme4_laplace(
        self, theta: float, beta: np.ndarray, lp0: np.ndarray, tol: float = 1e-7
    ) -> tuple[float, np.ndarray] | None:
        """lme4's Laplace deviance (nAGQ = 1) and its gradient w.r.t. ``(theta, beta)``.

        lme4's PIRLS starts each evaluation from ``lp0``, stops when the penalised deviance
        changes by less than ``tol`` (relative), and takes log|L|^2 from the weights of the
        iterate *before* the last step. The result differs from the exact Laplace approximation
        by a small amount that moves the estimates (up to ~1e-2 on small clusters), so it is
        reproduced here iteration by iteration, with forward-mode derivatives through the
        iterations. Returns None if PIRLS does not converge in lme4's 30 iterations.
        """
        self.nfev += 1
        X, y, m, g = self.X, self.y, self.m, self.g
        q = X.shape[1] + 1
        off = X @ beta
        # d eta / d(theta, beta) = c [0 | X] + M[g]: c = 0 at lp0, 1 after the first step
        c = 0.0
        M = np.zeros((self.J, q))
        eta = lp0
        old = np.finfo(float).max
        u_prev = M_prev = None

        def with_x(gx: np.ndarray, gm: np.ndarray) -> np.ndarray:
            """Group sums of weights times d eta: ``c * [0 | gsum(wt X)] + gsum(wt) M``."""
            out = gm[:, None] * M
            out[:, 1:] += c * gx
            return out

        for _ in range(30):
            mu = _expit(eta)
            w = m * mu * (1.0 - mu)
            wp = w * (1.0 - 2.0 * mu)
            r = eta - off
            S = self.gsum(w)
            A = 1.0 + theta**2 * S
            dA = theta**2 * with_x(self.wsum(wp, X) if c else 0.0, self.gsum(wp))
            dA[:, 0] += 2.0 * theta * S
            N = self.gsum(w * r + y - m * mu)
            wpr = wp * r
            dN = with_x(self.wsum(wpr, X) if c else 0.0, self.gsum(wpr))
            dN[:, 1:] -= self.wsum(w, X)
            u = theta * N / A
            du = theta * dN / A[:, None] - (theta * N / A**2)[:, None] * dA
            du[:, 0] += N / A
            eta_new = off + theta * u[g]
            pdev = float(np.sum(self._h(eta_new)) + u @ u + self.sat_const)
            M_new = theta * du
            M_new[:, 0] += u
            if abs((old - pdev) / pdev) < tol:
                res = y - m * _expit(eta_new)
                grad = 2.0 * (u @ du) + np.sum(dA / A[:, None], axis=0)
                grad -= 2.0 * (self.gsum(res) @ M_new)
                grad[1:] -= 2.0 * (res @ X)
                D = pdev - self.sat_const + float(np.sum(np.log(A)))
                return D, grad
            if pdev > old and u_prev is not None:
                for _ in range(10):
                    u = (u_prev + u) / 2.0
                    M_new = (M_prev + M_new) / 2.0
                    eta_new = off + theta * u[g]
                    pdev = float(np.sum(self._h(eta_new)) + u @ u + self.sat_const)
                    if pdev <= old:
                        break
            c, M = 1.0, M_new
            old, eta, u_prev, M_prev = pdev, eta_new, u, M_new
        return None


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


@dataclass
class _Optimum:
    """State of the outer optimisation on the preconditioned scale ``x = (theta, gamma)``,
    ``beta = beta0 + T gamma``."""

    x: np.ndarray
    D: float
    grad: np.ndarray
    success: bool
    message: str
    fun: Any  # x -> (D, gradient): the objective that was minimised


class MixedLogit:
    """The model ``glmer(y ~ X + (1 | group), family = binomial)``, fitted in stages.

    1. *design*: the formula is turned into ``X``, ``y``, trials and group codes once, at
       construction (:attr:`design`); every :meth:`fit` reuses it.
    2. *PIRLS*: :class:`_Deviance` finds the conditional modes of the random intercepts for
       given ``(theta, beta)`` and returns the approximate deviance with its gradient.
    3. *outer optimisation*: L-BFGS-B over ``(theta, beta)`` on a scale preconditioned by the
       fixed-effects information (:meth:`optimise`), then Newton steps (:meth:`polish`).
    4. *Hessian and standard errors*: central differences of the analytic gradient,
       ``vcov = 2 H^{-1}`` restricted to ``beta`` (:meth:`covariance`).

    :func:`fit_mixed_logit` is ``MixedLogit(formula, data, groups, trials).fit(...)``.
    """

    def __init__(
        self, formula: str, data: pd.DataFrame, groups: str, trials: str | None = None
    ) -> None:
        self.formula, self.groups, self.trials = formula, groups, trials
        self.design, _ = _build(formula, data, groups, trials)
        self.names = list(self.design.design_info.column_names)

    def fit(
        self,
        nagq: int = 1,
        *,
        start: dict[str, Any] | None = None,
        maxiter: int = 1000,
        laplace: str = "lme4",
    ) -> MixedLogitResults:
        """Fit by maximum likelihood; arguments as :func:`fit_mixed_logit`."""
        if not isinstance(nagq, int | np.integer) or nagq < 1 or nagq > 100:
            raise DataError(f"nagq must be an integer between 1 and 100, got {nagq!r}")
        if laplace not in ("lme4", "exact"):
            raise DataError(f"laplace must be 'lme4' or 'exact', got {laplace!r}")
        dev = _Deviance(self.design, int(nagq))
        beta0, theta0 = self.start_values(dev, start)
        T = self.preconditioner(dev, beta0)
        opt = self.optimise(dev, beta0, T, theta0, maxiter, lme4=nagq == 1 and laplace == "lme4")
        boundary = bool(opt.x[0] < _BOUNDARY_TOL)
        free = np.arange(1, len(beta0) + 1) if boundary else np.arange(len(beta0) + 1)
        opt, H = self.polish(opt, free)
        return self._results(dev, opt, H, beta0, T, free, int(nagq), boundary)

    # ---- stage 3: outer optimisation ---------------------------------------------------------
    def start_values(
        self, dev: _Deviance, start: dict[str, Any] | None
    ) -> tuple[np.ndarray, float]:
        """``beta`` of the fixed-effects logistic fit (with ``start`` overrides) and ``theta``."""
        try:
            beta0 = logistic_newton(dev.X, dev.y, trials=dev.m, covariance=False)[0]
        except np.linalg.LinAlgError:  # separation: the outer optimisation will report it
            beta0 = np.zeros(dev.X.shape[1])
        theta0 = 1.0
        if start:
            theta0 = float(start.get("theta", theta0))
            for k, val in (start.get("beta") or {}).items():
                if k not in self.names:
                    raise DataError(f"start value for unknown coefficient {k!r}")
                beta0[self.names.index(k)] = float(val)
        return beta0, theta0

    @staticmethod
    def preconditioner(dev: _Deviance, beta0: np.ndarray) -> np.ndarray:
        """``T`` with ``T' I T = 1`` for the GLM information ``I`` at ``beta0`` (Cholesky)."""
        p = len(beta0)
        mu0 = _expit(dev.X @ beta0)
        info = dev.X.T @ ((dev.m * mu0 * (1 - mu0))[:, None] * dev.X)
        try:
            return np.linalg.inv(np.linalg.cholesky(info + 1e-8 * np.eye(p))).T
        except np.linalg.LinAlgError:
            return np.eye(p)

    @staticmethod
    def optimise(
        dev: _Deviance, beta0: np.ndarray, T: np.ndarray, theta0: float, maxiter: int, lme4: bool
    ) -> _Optimum:
        """Minimise the approximate deviance (lme4's Laplace deviance if ``lme4``)."""

        def scaled(evaluate):
            def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
                D, grad = evaluate(float(x[0]), beta0 + T @ x[1:])
                return D, np.r_[grad[0], T.T @ grad[1:]]

            return fun

        x0 = np.r_[theta0, np.zeros(len(beta0))]
        lp0 = None
        if lme4 or len(dev.z) > 1:  # lme4's two stages: nAGQ = 0, then from that fit
            try:
                lp0, theta1, beta1 = dev.stage1(theta0, beta0)
                x0 = np.r_[theta1, np.linalg.solve(T, beta1 - beta0)]
            except np.linalg.LinAlgError:  # e.g. separation: start from the GLM fit
                lp0 = None
            lp0 = lp0 if lme4 else None

        def lme4_deviance(theta: float, beta: np.ndarray) -> tuple[float, np.ndarray]:
            out = dev.lme4_laplace(theta, beta, lp0)
            return dev(theta, beta) if out is None else out

        fun = scaled(dev if lp0 is None else lme4_deviance)
        opt = _Optimum(*_minimise(fun, x0, maxiter), fun)
        if 0.0 < opt.x[0] < _BOUNDARY_TOL:  # D is even in theta: a singular fit is at 0
            x = opt.x.copy()
            x[0] = 0.0
            dev_at_0, grad = fun(x)
            if dev_at_0 <= opt.D + 1e-12 * (1.0 + abs(opt.D)):
                opt = _Optimum(x, dev_at_0, grad, opt.success, opt.message, fun)
        return opt

    @staticmethod
    def polish(opt: _Optimum, free: np.ndarray) -> tuple[_Optimum, np.ndarray]:
        """Newton steps on the (well-conditioned) preconditioned scale; returns the optimum
        and the Hessian there (stage 4)."""
        fun, x, D, grad = opt.fun, opt.x, opt.D, opt.grad
        H = _hessian(fun, x)
        for _ in range(3):
            try:
                step = np.linalg.solve(H[np.ix_(free, free)], grad[free])
            except np.linalg.LinAlgError:
                break
            if np.max(np.abs(step)) < 1e-10:
                break
            x_new = x.copy()
            x_new[free] -= step
            x_new[0] = max(x_new[0], 0.0)
            D_new, grad_new = fun(x_new)
            if D_new > D + 1e-9 * (1.0 + abs(D)):
                break
            x, D, grad = x_new, D_new, grad_new
        if np.max(np.abs(grad[free])) > 1e-6 * (1 + abs(D)) ** 0.5:
            H = _hessian(fun, x)
        return _Optimum(x, D, grad, opt.success, opt.message, fun), H

    # ---- stage 4: standard errors ------------------------------------------------------------
    @staticmethod
    def covariance(H: np.ndarray, T: np.ndarray, free: np.ndarray) -> np.ndarray:
        """``2 H^{-1}`` on the free ``(theta, gamma)`` coordinates, mapped back to ``beta``:
        the (p, p) covariance of the fixed effects (NaN, with a warning, if ``H`` is not
        positive definite)."""
        p = T.shape[0]
        jac = np.eye(p + 1)
        jac[1:, 1:] = T
        vcov_full = np.full((p + 1, p + 1), np.nan)
        try:
            Hf = H[np.ix_(free, free)]
            Hf = (Hf + Hf.T) / 2.0
            if not np.all(np.linalg.eigvalsh(Hf) > 0):
                raise np.linalg.LinAlgError
            Jf = jac[np.ix_(free, free)]
            vcov_full[np.ix_(free, free)] = Jf @ (2.0 * np.linalg.inv(Hf)) @ Jf.T
        except np.linalg.LinAlgError:
            warnings.warn(
                "the Hessian of the deviance is not positive definite: standard errors are "
                "unreliable",
                ConvergenceWarning,
                stacklevel=4,
            )
        return vcov_full[1:, 1:]

    def _results(
        self,
        dev: _Deviance,
        opt: _Optimum,
        H: np.ndarray,
        beta0: np.ndarray,
        T: np.ndarray,
        free: np.ndarray,
        nagq: int,
        boundary: bool,
    ) -> MixedLogitResults:
        theta, beta = abs(float(opt.x[0])), beta0 + T @ opt.x[1:]
        vcov = self.covariance(H, T, free)
        gnorm = float(np.max(np.abs(opt.grad[free])))
        converged = bool((opt.success or gnorm < 1e-4) and gnorm < 1e-3)
        if not converged:
            warnings.warn(
                f"mixed logit did not converge (max |gradient| {gnorm:.2g}, {opt.message})",
                ConvergenceWarning,
                stacklevel=3,
            )
        if boundary:
            warnings.warn(
                f"boundary (singular) fit: the SD of the random intercepts of {self.groups!r} is "
                f"estimated at {theta:.2g}; the model reduces to a fixed-effects logistic "
                "regression",
                BoundaryFitWarning,
                stacklevel=3,
            )
        u = dev.modes(dev.X @ beta, theta)  # conditional modes at the optimum; b = theta * u
        names = self.names
        return MixedLogitResults(
            formula=self.formula,
            groups=self.groups,
            trials=self.trials,
            nagq=nagq,
            params=pd.Series(beta, index=names, name="estimate"),
            vcov=pd.DataFrame(vcov, index=names, columns=names),
            group_sd=theta,
            loglik=float(dev.log_binom - 0.5 * opt.D),
            deviance=float(opt.D + dev.sat_const),
            converged=converged,
            nfev=int(dev.nfev),
            nobs=int(len(dev.y)),
            ngroups=int(dev.J),
            n_dropped=self.design.n_dropped,
            random_effects=pd.Series(
                theta * u, index=pd.Index(self.design.levels, name=self.groups),
                name="random_effect",
            ),
            design_info=self.design.design_info,
            singular=boundary,
        )


def fit_mixed_logit(
    formula: str,
    data: pd.DataFrame,
    groups: str,
    nagq: int = 1,
    trials: str | None = None,
    *,
    start: dict[str, Any] | None = None,
    maxiter: int = 1000,
    laplace: str = "lme4",
) -> MixedLogitResults:
    """Fit a logistic regression with a random intercept per level of ``groups`` by ML.

    Parameters
    ----------
    formula : str
        Patsy formula ``"outcome ~ terms"``; categorical terms with ``C(...)``. The outcome is
        0/1 (or bool), or the number of successes when ``trials`` is given.
    data : DataFrame
        One row per observation. Rows with a missing value in any column used (terms, outcome,
        ``groups``, ``trials``) are dropped; their number is ``results.n_dropped``.
    groups : str
        Column whose levels get a random intercept (e.g. the study site).
    nagq : int
        1 = Laplace approximation; > 1 = adaptive Gauss–Hermite quadrature with this many nodes
        per group (lme4's ``nAGQ``).
    trials : str, optional
        Column with the number of binomial trials per row.
    start : dict, optional
        Starting values: ``{"theta": float, "beta": {name: value}}`` (either key optional).
    maxiter : int
        Maximum number of iterations of the outer optimiser.
    laplace : {"lme4", "exact"}
        Only for ``nagq = 1``. ``"lme4"`` (default) reproduces lme4's Laplace deviance as lme4
        computes it: its PIRLS starts from the nAGQ = 0 fit, stops at a relative change of the
        penalised deviance below 1e-7 and takes log|L|^2 from the iterate before the last
        step, which moves the estimates slightly (up to ~1e-2 with small clusters).
        ``"exact"`` evaluates the Laplace approximation at the exact conditional modes.

    Returns
    -------
    MixedLogitResults
        Estimates on the log-odds scale; ``group_sd`` is the SD of the random intercepts.
        The same as ``MixedLogit(formula, data, groups, trials).fit(nagq, ...)``.
    """
    if not isinstance(nagq, int | np.integer) or nagq < 1 or nagq > 100:
        raise DataError(f"nagq must be an integer between 1 and 100, got {nagq!r}")
    if laplace not in ("lme4", "exact"):
        raise DataError(f"laplace must be 'lme4' or 'exact', got {laplace!r}")
    model = MixedLogit(formula, data, groups, trials)
    return model.fit(nagq, start=start, maxiter=maxiter, laplace=laplace)


def _minimise(fun, x0: np.ndarray, maxiter: int) -> tuple[np.ndarray, float, np.ndarray, bool, str]:
    """L-BFGS-B over (theta >= 0, gamma); returns x, D, gradient, success, message."""
    opt = optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] + [(None, None)] * (len(x0) - 1),
        options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 20},
    )
    x = opt.x.copy()
    D, grad = fun(x)
    return x, D, grad, bool(opt.success), str(opt.message)


def _hessian(fun, x: np.ndarray) -> np.ndarray:
    """Central differences of the analytic gradient, symmetrised."""
    k = len(x)
    H = np.empty((k, k))
    for i in range(k):
        step = 1e-4 * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += step
        xm[i] -= step
        H[:, i] = (fun(xp)[1] - fun(xm)[1]) / (2.0 * step)
    return (H + H.T) / 2.0


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class MixedLogitResults(WaldInference):
    """Results of :func:`fit_mixed_logit` (estimates on the log-odds scale)."""

    formula: str
    groups: str
    trials: str | None
    nagq: int
    params: pd.Series
    vcov: pd.DataFrame
    group_sd: float
    loglik: float
    deviance: float
    converged: bool
    nfev: int
    nobs: int
    ngroups: int
    n_dropped: int
    random_effects: pd.Series
    design_info: patsy.DesignInfo = field(repr=False)
    singular: bool = False

    # ---- inference (bse, cov_params, tvalues, pvalues, conf_int: WaldInference) -------
    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * (len(self.params) + 1)

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + math.log(self.nobs) * (len(self.params) + 1)

    def odds_ratios(
        self, scale: float = 2.0, terms: list[str] | None = None, alpha: float = 0.05
    ) -> pd.DataFrame:
        """Odds ratios per ``scale`` units of each covariate: ``exp(scale * beta)``.

        Columns ``OR``, ``lower``, ``upper`` (Wald interval at level ``1 - alpha``) and ``p``.
        ``terms`` defaults to every coefficient except the intercept.
        """
        if terms is None:
            terms = [t for t in self.params.index if t != "Intercept"]
        unknown = [t for t in terms if t not in self.params.index]
        if unknown:
            raise DataError(
                f"unknown term(s) {', '.join(map(repr, unknown))}; "
                f"the model has {', '.join(self.params.index)}"
            )
        ci = self.conf_int(alpha).loc[terms] * scale
        lo = np.exp(np.minimum(ci["lower"], ci["upper"]))
        hi = np.exp(np.maximum(ci["lower"], ci["upper"]))
        return pd.DataFrame(
            {
                "OR": np.exp(scale * self.params.loc[terms]),
                "lower": lo,
                "upper": hi,
                "p": self.pvalues.loc[terms],
            }
        )

    # ---- prediction ------------------------------------------------------------------------
    def linear_predictor(self, newdata: pd.DataFrame, include_group: bool = False) -> pd.Series:
        """``x' beta`` (plus the group's conditional mode if asked); NaN where data are missing."""
        if not isinstance(newdata, pd.DataFrame):
            raise DataError("newdata must be a pandas DataFrame")
        codes = [f.code for f in self.design_info.factor_infos]
        used = _used_columns(codes, newdata)
        keep = newdata[used].notna().all(axis=1).to_numpy()
        eta = pd.Series(np.nan, index=newdata.index)
        if keep.any():
            try:
                (X,) = patsy.build_design_matrices(
                    [self.design_info], newdata.loc[keep], NA_action="raise"
                )
            except patsy.PatsyError as exc:
                raise DataError(f"cannot build the design matrix for prediction: {exc}") from None
            eta[keep] = np.asarray(X) @ self.params.to_numpy()
        if include_group:
            if self.groups not in newdata.columns:
                raise DataError(f"groups column {self.groups!r} is not in newdata")
            re = newdata[self.groups].map(self.random_effects.to_dict()).astype(float)
            eta = eta + re.fillna(0.0).to_numpy()
        return eta.rename("linear_predictor")

    def predict(self, newdata: pd.DataFrame, include_group: bool = False) -> pd.Series:
        """Predicted probabilities; with ``include_group`` the group's conditional mode is added
        (groups not seen in the fit get 0, the population average effect)."""
        eta = self.linear_predictor(newdata, include_group=include_group)
        return pd.Series(_expit(eta.to_numpy()), index=eta.index, name="probability")

    # ---- output ----------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per fixed effect: estimate, se, z, p, lower, upper (95 % Wald)."""
        ci = self.conf_int()
        return pd.DataFrame(
            {
                "estimate": self.params,
                "se": self.bse,
                "z": self.tvalues,
                "p": self.pvalues,
                "lower": ci["lower"],
                "upper": ci["upper"],
            }
        )

    def summary(self) -> str:
        """A text summary in the layout of lme4's ``summary(glmer(...))``."""
        method = (
            "Laplace Approximation"
            if self.nagq == 1
            else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}"
        )
        lines = [
            f"Generalized linear mixed model fit by maximum likelihood ({method})",
            " Family: binomial  ( logit )",
            f"Formula: {self.formula} + (1 | {self.groups})"
            + (f"   trials: {self.trials}" if self.trials else ""),
            "",
            f"{'AIC':>10} {'BIC':>10} {'logLik':>10} {'deviance':>10}",
            f"{self.aic:>10.1f} {self.bic:>10.1f} {self.loglik:>10.1f} {self.deviance:>10.1f}",
            "",
            "Random effects:",
            f" {'Groups':<12} {'Name':<12} {'Std.Dev.':>9}",
            f" {self.groups:<12} {'(Intercept)':<12} {self.group_sd:>9.4f}",
            f"Number of obs: {self.nobs}, groups:  {self.groups}, {self.ngroups}"
            + (f"  (rows dropped for missing values: {self.n_dropped})" if self.n_dropped else ""),
            "",
            "Fixed effects:",
        ]
        tab = self.to_frame()
        width = max(len(str(n)) for n in tab.index) + 1
        lines.append(
            f"{'':<{width}} {'Estimate':>10} {'Std. Error':>10} {'z value':>8} {'Pr(>|z|)':>10}"
        )
        for name, row in tab.iterrows():
            lines.append(
                f"{name!s:<{width}} {row['estimate']:>10.5f} {row['se']:>10.5f} "
                f"{row['z']:>8.3f} {row['p']:>10.3g}"
            )
        if self.singular:
            lines += ["", "boundary (singular) fit: random-intercept SD estimated at 0"]
        if not self.converged:
            lines += ["", "WARNING: the optimiser did not converge"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """JSON-safe description, enough for :meth:`from_dict` to predict and report."""
        return {
            "model": "mixed_logit",
            "formula": self.formula,
            "groups": self.groups,
            "trials": self.trials,
            "nagq": self.nagq,
            "params": {k: float(v) for k, v in self.params.items()},
            "vcov": [
                [float(v) if math.isfinite(v) else None for v in row]
                for row in self.vcov.to_numpy()
            ],
            "group_sd": self.group_sd,
            "loglik": self.loglik,
            "deviance": self.deviance,
            "converged": self.converged,
            "nfev": self.nfev,
            "nobs": self.nobs,
            "ngroups": self.ngroups,
            "n_dropped": self.n_dropped,
            "singular": self.singular,
            "random_effects": {
                "levels": [_json_value(v) for v in self.random_effects.index],
                "values": [float(v) for v in self.random_effects],
            },
            "design": _design_to_dict(self.design_info),
        }

    @classmethod
    def from_dict(cls, d: dict) -> MixedLogitResults:
        """Rebuild results written by :meth:`to_dict` (e.g. read back from model.json)."""
        try:
            names = list(d["params"])
            cov = np.asarray(d["vcov"], dtype=float)
            return cls(
                formula=d["formula"],
                groups=d["groups"],
                trials=d.get("trials"),
                nagq=int(d["nagq"]),
                params=pd.Series(d["params"], name="estimate", dtype=float),
                vcov=pd.DataFrame(cov, index=names, columns=names),
                group_sd=float(d["group_sd"]),
                loglik=float(d["loglik"]),
                deviance=float(d["deviance"]),
                converged=bool(d["converged"]),
                nfev=int(d["nfev"]),
                nobs=int(d["nobs"]),
                ngroups=int(d["ngroups"]),
                n_dropped=int(d["n_dropped"]),
                random_effects=pd.Series(
                    d["random_effects"]["values"],
                    index=pd.Index(d["random_effects"]["levels"], name=d["groups"]),
                    name="random_effect",
                    dtype=float,
                ),
                design_info=_design_from_dict(d["design"]),
                singular=bool(d.get("singular", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a saved mixed logit model: {exc!r}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
