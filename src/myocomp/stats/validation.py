"""Discrimination and calibration of predicted probabilities of a binary outcome.

- AUC (C-index) with DeLong's variance, by the O(n log n) midrank algorithm of Sun & Xu (IEEE
  Signal Process. Lett. 21:1389, 2014); a paired DeLong test of two scores on the same people.
  The confidence interval is the plain Wald interval ``AUC +/- z * se`` clipped to [0, 1], as
  pROC's ``ci.auc(method = "delong")``.
- Brier score, binned calibration curve with Wilson intervals, logistic recalibration
  (calibration slope and calibration-in-the-large).
- Harrell's optimism bootstrap (as ``rms::validate``): refit on each bootstrap sample, evaluate
  on it and on the original data, subtract the mean optimism from the apparent indexes.

Outcomes ``y`` are arrays of 0/1 (or booleans); scores and probabilities are arrays of the same
length; larger scores mean the outcome is more likely.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from myocomp.errors import ConfigError, DataError
from myocomp.stats.glmm import design_matrices
from myocomp.stats.logistic import column_products, logistic_newton, logistic_newton_weighted

__all__ = [
    "AUCResult",
    "BootstrapValidation",
    "CalibrationFit",
    "DeLongTest",
    "bootstrap_validation",
    "brier_score",
    "calibration_curve",
    "calibration_slope_intercept",
    "delong_auc",
    "delong_test",
    "roc_curve",
    "validate_logistic",
    "logistic_newton",
    "wilson_interval",
]

_EPS = 1e-12  # probabilities are clipped to [eps, 1 - eps] before taking logits


# inputs ------------------------------------------------------------------------------------
def _outcome(y: Any, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    try:
        f = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: outcome is not numeric 0/1") from exc
    if np.isnan(f).any():
        raise DataError(f"{name}: outcome has {int(np.isnan(f).sum())} missing value(s)")
    if not np.isin(f, (0.0, 1.0)).all():
        raise DataError(f"{name}: outcome must be coded 0/1")
    return f.astype(np.int8)


def _scores(score: Any, n: int, name: str) -> np.ndarray:
    s = np.asarray(score, dtype=float)
    if s.shape != (n,):
        raise DataError(f"{name}: expected {n} values, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise DataError(f"{name}: {int((~np.isfinite(s)).sum())} missing or infinite value(s)")
    return s


def _probabilities(p: Any, n: int, name: str = "p") -> np.ndarray:
    s = _scores(p, n, name)
    if (s < 0).any() or (s > 1).any():
        raise DataError(f"{name}: probabilities must lie in [0, 1]")
    return s


def _check_alpha(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    return float(alpha)


# DeLong ------------------------------------------------------------------------------------
def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and DeLong covariance (k, k) of ``scores`` (k, n) by the midrank method."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise DataError(f"DeLong AUC needs at least 2 events and 2 non-events, got {m} and {n}")
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v_pos = (tz[:, :m] - tx) / n  # per event: share of non-events scored lower (ties 1/2)
    v_neg = 1.0 - (tz[:, m:] - ty) / m  # per non-event: share of events scored higher
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return auc, cov


@dataclass(frozen=True)
class AUCResult:
    """Area under the ROC curve with DeLong's standard error and Wald interval.

    ``lower``/``upper``: ``auc -/+ z(1 - alpha/2) * se`` clipped to [0, 1].
    """

    auc: float
    se: float
    lower: float
    upper: float
    alpha: float
    n_events: int
    n_nonevents: int

    def to_frame(self) -> pd.DataFrame:
        """One-row table (auc, se, lower, upper, alpha, n_events, n_nonevents)."""
        return pd.DataFrame([self.__dict__])

    def summary(self) -> str:
        level = round(100 * (1 - self.alpha))
        return (
            f"AUC {self.auc:.3f} ({level}% CI {self.lower:.3f}-{self.upper:.3f}, DeLong; "
            f"{self.n_events} events, {self.n_nonevents} non-events)"
        )


def delong_auc(y: Any, score: Any, alpha: float = 0.05) -> AUCResult:
    """AUC of ``score`` for binary ``y`` with DeLong's variance (Sun & Xu's midrank method).

    Ties between an event and a non-event count 1/2. ``score`` is any real-valued marker
    (probability, linear predictor, points); larger values must mean higher risk.
    """
    yy = _outcome(y)
    s = _scores(score, len(yy), "score")
    alpha = _check_alpha(alpha)
    auc, cov = _delong(yy, s[None, :])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    z = stats.norm.ppf(1 - alpha / 2)
    a = float(auc[0])
    return AUCResult(
        auc=a,
        se=se,
        lower=max(0.0, a - z * se),
        upper=min(1.0, a + z * se),
        alpha=alpha,
        n_events=int(yy.sum()),
        n_nonevents=int(len(yy) - yy.sum()),
    )


@dataclass(frozen=True)
class DeLongTest:
    """Paired DeLong comparison of two AUCs on the same people (``difference = auc1 - auc2``)."""

    auc1: float
    auc2: float
    difference: float
    se: float
    z: float
    pvalue: float
    lower: float
    upper: float
    correlation: float
    alpha: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.__dict__])

    def summary(self) -> str:
        return (
            f"AUC {self.auc1:.3f} vs {self.auc2:.3f}: difference {self.difference:.3f} "
            f"(se {self.se:.3f}), z = {self.z:.2f}, p = {self.pvalue:.3g} (DeLong)"
        )


def delong_test(y: Any, score1: Any, score2: Any, alpha: float = 0.05) -> DeLongTest:
    """Two-sided DeLong test that two correlated AUCs (same people, same ``y``) are equal."""
    yy = _outcome(y)
    s = np.vstack([_scores(score1, len(yy), "score1"), _scores(score2, len(yy), "score2")])
    alpha = _check_alpha(alpha)
    auc, cov = _delong(yy, s)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(auc[0] - auc[1])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        z, p = (0.0, 1.0) if diff == 0 else (np.copysign(np.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    q = stats.norm.ppf(1 - alpha / 2)
    denom = np.sqrt(cov[0, 0] * cov[1, 1])
    corr = float(cov[0, 1] / denom) if denom > 0 else float("nan")
    return DeLongTest(
        auc1=float(auc[0]),
        auc2=float(auc[1]),
        difference=diff,
        se=se,
        z=float(z),
        pvalue=float(p),
        lower=diff - q * se,
        upper=diff + q * se,
        correlation=corr,
        alpha=alpha,
    )


def roc_curve(y: Any, score: Any) -> pd.DataFrame:
    """ROC curve: one row per distinct threshold (plus the origin), columns ``threshold``
    (predict an event when score >= threshold; ``inf`` for the origin), ``fpr``, ``tpr``."""
    yy = _outcome(y)
    s = _scores(score, len(yy), "score")
    n_pos, n_neg = int(yy.sum()), int(len(yy) - yy.sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("ROC curve needs both events and non-events")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], yy[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = last + 1 - tps
    return pd.DataFrame(
        {
            "threshold": np.r_[np.inf, s_sorted[last]],
            "fpr": np.r_[0.0, fps / n_neg],
            "tpr": np.r_[0.0, tps / n_pos],
        }
    )


# calibration -------------------------------------------------------------------------------
def brier_score(y: Any, p: Any) -> float:
    """Mean squared difference between predicted probability and the 0/1 outcome."""
    yy = _outcome(y)
    pp = _probabilities(p, len(yy))
    return float(np.mean((pp - yy) ** 2))


def wilson_interval(k: Any, n: Any, alpha: float = 0.05) -> tuple[Any, Any]:
    """Wilson score interval of the proportion ``k / n`` at level ``1 - alpha``: ``(lower,
    upper)``, elementwise for arrays of counts ``k`` of ``n`` trials (``n > 0``)."""
    z = stats.norm.ppf(1 - alpha / 2)
    k, n = np.asarray(k, float), np.asarray(n, float)
    p = k / n
    den = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return centre - half, centre + half


def calibration_curve(
    y: Any,
    p: Any,
    n_bins: int = 10,
    strategy: str = "quantile",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Observed event rate against mean predicted probability in bins of ``p``.

    ``strategy="quantile"``: bin edges at the quantiles of ``p`` (equal counts; duplicate edges
    merged); ``"uniform"``: ``n_bins`` equal-width bins on [0, 1]. A value on an inner edge goes
    to the upper bin; empty bins are left out. Columns: ``bin`` (1-based), ``mean_predicted``,
    ``observed``, ``n``, ``events``, ``lower``/``upper`` (Wilson interval of ``observed``).
    """
    yy = _outcome(y)
    pp = _probabilities(p, len(yy))
    alpha = _check_alpha(alpha)
    if int(n_bins) < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "quantile":
        edges = np.unique(np.quantile(pp, np.linspace(0.0, 1.0, int(n_bins) + 1)))
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    else:
        raise ConfigError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    idx = np.searchsorted(edges[1:-1], pp, side="right")
    rows = []
    for b in range(max(len(edges) - 1, 1)):
        mask = idx == b
        n = int(mask.sum())
        if n == 0:
            continue
        k = int(yy[mask].sum())
        lo, hi = wilson_interval(k, n, alpha)
        rows.append(
            {
                "bin": b + 1,
                "mean_predicted": float(pp[mask].mean()),
                "observed": k / n,
                "n": n,
                "events": k,
                "lower": float(lo),
                "upper": float(hi),
            }
        )
    return pd.DataFrame(
        rows, columns=["bin", "mean_predicted", "observed", "n", "events", "lower", "upper"]
    )


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of predictions: ``logit P(y=1) = a + b * logit(p)``.

    ``slope`` is ``b`` (1 = ideal, < 1 = predictions too extreme); ``intercept`` is the
    calibration-in-the-large, ``a`` with ``b`` fixed at 1 (offset), 0 = ideal.
    """

    intercept: float
    intercept_se: float
    slope: float
    slope_se: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"estimate": [self.intercept, self.slope], "se": [self.intercept_se, self.slope_se]},
            index=pd.Index(["calibration_intercept", "calibration_slope"], name="metric"),
        )


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


def _intercept_with_offset(y: np.ndarray, offset: np.ndarray) -> tuple[float, float]:
    """Maximum likelihood ``a`` of ``logit P(y=1) = a + offset`` and its standard error.

    The score ``sum(y - expit(a + offset))`` decreases in ``a``. Newton steps find its root in
    a few iterations; where they do not converge (offsets of +/-27 from near-0/1 predictions can
    make them diverge) the root is found by bracketing."""
    from scipy.optimize import brentq
    from scipy.special import expit

    def score(a: float) -> float:
        return float(np.sum(y - expit(a + offset)))

    a = 0.0
    for _ in range(30):
        q = expit(a + offset)
        step = float(np.sum(y - q) / max(np.sum(q * (1 - q)), 1e-300))
        a += step
        if not np.isfinite(a) or abs(a) > 1e4:
            break
        if abs(step) < 1e-12 * (1 + abs(a)):
            return a, float(1.0 / np.sqrt(np.sum(q * (1 - q))))
    lo, hi = -1.0, 1.0
    while score(lo) < 0 and lo > -1e4:
        lo *= 2
    while score(hi) > 0 and hi < 1e4:
        hi *= 2
    a = float(brentq(score, lo, hi, xtol=1e-12, rtol=1e-12))
    q = expit(a + offset)
    return a, float(1.0 / np.sqrt(np.sum(q * (1 - q))))


def calibration_slope_intercept(y: Any, p: Any) -> CalibrationFit:
    """Calibration slope and calibration-in-the-large of probabilities ``p`` by maximum
    likelihood (slope: logistic regression of ``y`` on ``[1, logit(p)]``; intercept: ``logit(p)``
    as offset). ``p`` is clipped to [1e-12, 1 - 1e-12] before the logit."""
    yy = _outcome(y)
    lp = _logit(_probabilities(p, len(yy)))
    if yy.min() == yy.max():
        raise DataError("calibration needs both events and non-events")
    try:
        beta, cov = logistic_newton(np.column_stack([np.ones(len(yy)), lp]), yy.astype(float), np.array([0.0, 1.0]))
    except np.linalg.LinAlgError as exc:
        raise DataError(f"calibration slope cannot be fitted: {exc}") from exc
    intercept, intercept_se = _intercept_with_offset(yy.astype(float), lp)
    return CalibrationFit(
        intercept=intercept,
        intercept_se=intercept_se,
        slope=float(beta[1]),
        slope_se=float(np.sqrt(cov[1, 1])),
    )


# bootstrap ---------------------------------------------------------------------------------
_METRICS = ("c_index", "calibration_slope", "calibration_intercept", "brier")


def _indexes(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    auc = _auc(y, p)
    cal = calibration_slope_intercept(y, p)
    return {
        "c_index": auc,
        "calibration_slope": cal.slope,
        "calibration_intercept": cal.intercept,
        "brier": float(np.mean((p - y) ** 2)),
    }


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC (ties 1/2) from midranks."""
    m = int(y.sum())
    n = len(y) - m
    return float((_midranks(p)[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def _midranks(p: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(p)`` (ties get their mean rank) with an unstable sort, which
    cannot change mean ranks and is twice as fast."""
    order = np.argsort(p)
    sp = p[order]
    first = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])  # start of each run of ties
    counts = np.diff(np.r_[first, len(p)])
    ranks = np.empty(len(p))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


@dataclass(frozen=True)
class BootstrapValidation:
    """Harrell's optimism bootstrap (as ``rms::validate``).

    ``table``: index = metric (``c_index``, ``calibration_slope``, ``calibration_intercept``,
    ``brier``); columns ``apparent`` (model fitted and evaluated on all data), ``training`` and
    ``test`` (means over replicates of the refit evaluated on its bootstrap sample and on the
    original data), ``optimism = training - test``, ``corrected = apparent - optimism``, ``n``
    (replicates used). ``replicates``: one row per successful replicate.
    """

    table: pd.DataFrame
    replicates: pd.DataFrame
    B: int
    seed: int
    n_failed: int

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def summary(self) -> str:
        lines = [
            f"Optimism bootstrap: {self.B} replicates requested, {self.B - self.n_failed} "
            f"used (seed {self.seed})",
            self.table.to_string(float_format="%.4f"),
        ]
        return "\n".join(lines)


FitEval = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _draws(n: int, B: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """Replicate number and the ``n`` row indices it draws with replacement."""
    rng = np.random.default_rng(seed)
    for b in range(B):
        yield b, rng.integers(0, n, n)


def _replicate(y: np.ndarray, idx: np.ndarray, fit_eval: FitEval) -> dict[str, float] | None:
    """Training and test indexes of one replicate; None if its sample has one outcome class or
    its fit fails."""
    from statsmodels.tools.sm_exceptions import PerfectSeparationError

    n, yb = len(y), y[idx]
    if yb.min() == yb.max():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # separation/convergence in resamples
            p_boot, p_orig = fit_eval(idx)
            train = _indexes(yb, _probabilities(p_boot, n, "predictions (bootstrap)"))
            test = _indexes(y, _probabilities(p_orig, n, "predictions (original)"))
    except (np.linalg.LinAlgError, PerfectSeparationError):
        return None
    return _row(train, test)


def _row(train: dict[str, float], test: dict[str, float]) -> dict[str, float]:
    row: dict[str, float] = {}
    for k in _METRICS:
        row[f"{k}_training"] = train[k]
        row[f"{k}_test"] = test[k]
    return row


#: replicates evaluated together by a batch evaluator
_CHUNK = 10

BatchEval = Callable[[list[tuple[int, np.ndarray]]], dict[int, dict[str, float]]]


def _run_bootstrap(
    y: np.ndarray,
    p_apparent: np.ndarray,
    fit_eval: FitEval,
    B: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
    batch: BatchEval | None = None,
) -> BootstrapValidation:
    """The optimism bootstrap. ``batch(draws)`` (optional) evaluates several replicates at once
    and returns ``{replicate: row}`` for those it could; the others go to ``fit_eval``."""
    if int(B) < 1:
        raise ConfigError(f"B must be >= 1, got {B}")
    apparent = _indexes(y, p_apparent)
    rows: list[dict[str, float]] = []
    failed = 0
    draws = _draws(len(y), int(B), seed)
    while chunk := list(itertools.islice(draws, _CHUNK if batch else 1)):
        done = batch(chunk) if batch is not None else {}
        for b, idx in chunk:
            row = done[b] if b in done else _replicate(y, idx, fit_eval)
            if row is None:
                failed += 1
            else:
                rows.append({"replicate": b, **row})
            if progress is not None:
                progress(b + 1, int(B))
    if not rows:
        raise DataError(f"all {B} bootstrap replicates failed to fit")
    return _summarise(apparent, rows, int(B), int(seed), failed)


def _summarise(apparent: dict[str, float], rows: list[dict[str, float]], B: int, seed: int,
               failed: int) -> BootstrapValidation:
    reps = pd.DataFrame(rows)
    reps["replicate"] = reps["replicate"].astype(int)
    table = pd.DataFrame(index=pd.Index(_METRICS, name="metric"))
    table["apparent"] = [apparent[k] for k in _METRICS]
    table["training"] = [reps[f"{k}_training"].mean() for k in _METRICS]
    table["test"] = [reps[f"{k}_test"].mean() for k in _METRICS]
    table["optimism"] = table["training"] - table["test"]
    table["corrected"] = table["apparent"] - table["optimism"]
    table["n"] = len(reps)
    return BootstrapValidation(table=table, replicates=reps, B=B, seed=seed, n_failed=failed)


def bootstrap_validation(
    data: pd.DataFrame,
    fit_fn: Callable[[pd.DataFrame], Any],
    predict_fn: Callable[[Any, pd.DataFrame], Any],
    outcome: str,
    B: int = 200,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BootstrapValidation:
    """Optimism-corrected C-index, calibration slope/intercept and Brier score.

    ``fit_fn(frame) -> model`` fits the whole modelling procedure on a frame;
    ``predict_fn(model, frame) -> probabilities`` (one per row). ``data`` must be complete
    cases (the outcome column coded 0/1). Replicate ``b`` draws ``len(data)`` rows with
    replacement from ``numpy.random.default_rng(seed)``; replicates whose sample has one
    outcome class or whose fit fails (singular matrix, perfect separation) are skipped and
    counted in ``n_failed``. ``progress(done, B)`` is called after each replicate.
    """
    if outcome not in data.columns:
        raise DataError("outcome column missing", source=outcome)
    y = _outcome(data[outcome].to_numpy(), outcome)
    frame = data.reset_index(drop=True)
    model = fit_fn(frame)
    p_app = _probabilities(predict_fn(model, frame), len(y), "predictions")

    def fit_eval(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boot = frame.iloc[idx].reset_index(drop=True)
        m = fit_fn(boot)
        return np.asarray(predict_fn(m, boot), float), np.asarray(predict_fn(m, frame), float)

    return _run_bootstrap(y, p_app, fit_eval, B, seed, progress)


def validate_logistic(
    formula: str,
    data: pd.DataFrame,
    B: int = 200,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BootstrapValidation:
    """:func:`bootstrap_validation` of a fixed-effects logistic model given by a patsy
    ``formula``, on the complete cases of its variables. The design matrix is built once and
    resampled, and each replicate is fitted by :func:`logistic_newton` (the same estimates as
    statsmodels ``Logit``), so B = 200 on 27,518 people takes seconds; resampling uses the same
    rows and random numbers as :func:`bootstrap_validation`."""
    try:
        yv, x, _ = design_matrices(formula, data)
    except DataError as exc:
        raise DataError(f"formula {formula!r}: {str(exc).splitlines()[0]}") from exc
    y = _outcome(yv, "outcome")
    yf = y.astype(float)

    def fit_predict(rows: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        xb = x[rows]
        constant = np.ptp(xb, axis=0) == 0  # a rare level not drawn: zeros, or all ones
        if constant.sum() > 1 or not xb[:, constant].any(axis=0).all():
            raise np.linalg.LinAlgError("design matrix of the resample is rank deficient")
        return logistic_newton(xb, yf[rows], start, covariance=False)[0]

    def prob(beta: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(xx @ beta)))

    try:
        beta0 = fit_predict(np.arange(len(y)))
    except np.linalg.LinAlgError as exc:
        raise DataError(f"formula {formula!r}: the logistic model cannot be fitted ({exc})") from exc

    def fit_eval(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        beta = fit_predict(idx, beta0)
        return prob(beta, x[idx]), prob(beta, x)

    batch = _LogisticBatch(x, y, beta0)
    return _run_bootstrap(y, prob(beta0, x), fit_eval, B, seed, progress, batch)


class _LogisticBatch:
    """Replicates of :func:`validate_logistic` evaluated together, with the bootstrap counts as
    case weights instead of resampled rows: one weighted Newton fit per replicate
    (:func:`logistic_newton_weighted`), one sort of its predictions for the training and the
    test C-index, and the calibration fits of all replicates at once. The same numbers as the
    replicate-by-replicate path up to rounding; replicates it cannot settle the same way
    (rank-deficient resample, a fit or recalibration that does not converge) are left out of
    its answer, for that path to handle."""

    def __init__(self, x: np.ndarray, y: np.ndarray, beta0: np.ndarray) -> None:
        self.x, self.y, self.yf, self.beta0 = x, y, y.astype(float), beta0
        self.products = column_products(x)
        self.test_start = (0.0, 1.0, 0.0)  # recalibration (a, b) and offset intercept

    def _eligible(self, idx: np.ndarray, counts: np.ndarray) -> bool:
        """Both outcome classes drawn and no column of the resample constant except one
        non-zero one (the intercept): the rule of the replicate-by-replicate fit."""
        events = counts @ self.yf
        if events == 0 or events == len(idx):
            return False
        first = self.x[idx[0]]
        unsure = ~(self.x[idx[:16]] != first).any(axis=0)  # columns the first draws leave open
        constant = np.zeros(len(first), bool)
        constant[unsure] = counts @ (self.x[:, unsure] != first[unsure]) == 0
        return bool(constant.sum() <= 1 and (first[constant] != 0).all())

    def __call__(self, draws: list[tuple[int, np.ndarray]]) -> dict[int, dict[str, float]]:
        n = len(self.y)
        counts = np.stack([np.bincount(idx, minlength=n) for _, idx in draws]).astype(float)
        keep = np.array([self._eligible(idx, c) for (_, idx), c in zip(draws, counts,
                                                                      strict=True)])
        if not keep.any():
            return {}
        numbers = np.array([b for b, _ in draws])[keep]
        weights = counts[keep]
        beta, ok = logistic_newton_weighted(self.x, self.yf, weights, self.beta0,
                                            products=self.products)
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-(beta @ self.x.T)))
        ok &= np.isfinite(prob).all(axis=1)
        prob, weights, numbers = prob[ok], weights[ok], numbers[ok]
        lp = _logit(prob)
        auc_train, auc_test = _weighted_aucs(self.y, prob, weights)
        train = _weighted_indexes(self.yf, prob, lp, weights, auc_train, (0.0, 1.0, 0.0))
        test = _weighted_indexes(self.yf, prob, lp, None, auc_test, self.test_start)
        good = train.pop("ok") & test.pop("ok")
        if good.any():  # the next batch starts its recalibrations near these
            self.test_start = tuple(float(np.mean(test[k][good])) for k in
                                    ("recalibration_intercept", "calibration_slope",
                                     "calibration_intercept"))
        out = {}
        for j, b in enumerate(numbers):
            if good[j]:
                out[int(b)] = _row({k: float(train[k][j]) for k in _METRICS},
                                   {k: float(test[k][j]) for k in _METRICS})
        return out


def _weighted_aucs(y: np.ndarray, prob: np.ndarray, weights: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_auc` of each row of ``prob`` (k, n) on the sample holding row i of the data
    ``weights[k, i]`` times, and on the data themselves (ties 1/2), from one sort of each
    row. With integer weights every sum is exact: the same numbers as the midranks give."""
    train, test = np.empty(len(prob)), np.empty(len(prob))
    yf = y.astype(float)
    for j, (p, w) in enumerate(zip(prob, weights, strict=True)):
        order = np.argsort(p)
        sp = p[order]
        first = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        yo, wo = yf[order], w[order]
        for out, pos, neg in ((train, yo * wo, (1.0 - yo) * wo), (test, yo, 1.0 - yo)):
            if len(first) < len(p):  # ties
                pos, neg = np.add.reduceat(pos, first), np.add.reduceat(neg, first)
            below = np.cumsum(neg) - neg
            out[j] = (pos @ (below + 0.5 * neg)) / (pos.sum() * neg.sum())
    return train, test


def _weighted_indexes(y: np.ndarray, prob: np.ndarray, lp: np.ndarray,
                      weights: np.ndarray | None, c_index: np.ndarray,
                      start: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """:func:`_indexes` of each row of ``prob`` (k, n) with logits ``lp`` and C-index
    ``c_index``, each row of the data counted ``weights`` (k, n) times (None: once), plus
    ``ok``: whether the recalibration fits converged as :func:`calibration_slope_intercept`'s
    do. ``start``: the recalibration's (a, b) and the offset intercept to start Newton from
    (they converge to the same numbers from any start near enough)."""
    w = np.ones_like(prob) if weights is None else weights
    slope_a, slope, ok_slope = _batched_slope(y, lp, w, start[:2])
    intercept, ok_int = _batched_offset_intercept(y, lp, w, start[2])
    return {
        "c_index": c_index,
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "recalibration_intercept": slope_a,
        "brier": np.sum(w * (prob - y) ** 2, axis=1) / np.sum(w, axis=1),
        "ok": ok_slope & ok_int,
    }


def _batched_slope(y: np.ndarray, lp: np.ndarray, w: np.ndarray,
                   start: tuple[float, float] = (0.0, 1.0), tol: float = 1e-9,
                   maxiter: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b)`` of ``logit P(y=1) = a + b lp`` per row of ``lp`` (k, n) with weights ``w``,
    by Newton from ``start`` with :func:`logistic_newton`'s stopping rule; and which
    converged."""
    from scipy.special import expit

    k = lp.shape[0]
    a, b = np.full(k, float(start[0])), np.full(k, float(start[1]))
    active, ok = np.ones(k, bool), np.zeros(k, bool)
    for _ in range(maxiter):
        i = np.flatnonzero(active)
        if i.size == 0:
            break
        q = expit(a[i, None] + b[i, None] * lp[i])
        v, r = w[i] * q * (1.0 - q), w[i] * (y - q)
        s0, s1, s2 = v.sum(axis=1), (v * lp[i]).sum(axis=1), (v * lp[i] ** 2).sum(axis=1)
        g0, g1 = r.sum(axis=1), (r * lp[i]).sum(axis=1)
        det = s0 * s2 - s1**2
        good = (s0 > 0) & (det > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            da, db = (s2 * g0 - s1 * g1) / det, (s0 * g1 - s1 * g0) / det
        a[i], b[i] = a[i] + da, b[i] + db
        good &= np.isfinite(a[i]) & np.isfinite(b[i])
        size = np.maximum(np.abs(a[i]), np.abs(b[i]))
        done = good & (np.maximum(np.abs(da), np.abs(db)) < tol * (1.0 + size))
        ok[i[done]] = True
        active[i[done | ~good]] = False
    return a, b, ok


def _batched_offset_intercept(y: np.ndarray, lp: np.ndarray, w: np.ndarray,
                              start: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_intercept_with_offset` per row of ``lp`` (k, n) with weights ``w``: Newton from
    ``start`` (its stopping rule); ``ok`` is False where the Newton steps did not converge (it
    would have fallen back to bracketing)."""
    from scipy.special import expit

    k = lp.shape[0]
    a = np.full(k, float(start))
    active, ok = np.ones(k, bool), np.zeros(k, bool)
    for _ in range(30):
        i = np.flatnonzero(active)
        if i.size == 0:
            break
        q = expit(a[i, None] + lp[i])
        step = (w[i] * (y - q)).sum(axis=1) / np.maximum((w[i] * q * (1 - q)).sum(axis=1),
                                                         1e-300)
        a[i] += step
        bad = ~np.isfinite(a[i]) | (np.abs(a[i]) > 1e4)
        done = ~bad & (np.abs(step) < 1e-12 * (1 + np.abs(a[i])))
        ok[i[done]] = True
        active[i[done | bad]] = False
    return a, ok
