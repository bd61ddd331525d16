from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from sklearn.calibration import calibration_curve as sk_calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from myocomp.errors import ConfigError, DataError
from myocomp.stats.validation import (
    bootstrap_validation,
    brier_score,
    calibration_curve,
    calibration_slope_intercept,
    delong_auc,
    delong_test,
    roc_curve,
    validate_logistic,
)


def _naive_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) structural components by explicit pairwise comparison, O(n^2)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos), len(neg)
    v10, v01, aucs = [], [], []
    for s in scores:
        psi = np.empty((m, n))
        for a, i in enumerate(pos):
            for b, j in enumerate(neg):
                psi[a, b] = 1.0 if s[i] > s[j] else (0.5 if s[i] == s[j] else 0.0)
        v10.append(psi.mean(axis=1))  # one per event
        v01.append(psi.mean(axis=0))  # one per non-event
        aucs.append(psi.mean())
    k = len(scores)
    s10 = np.array(
        [
            [np.sum((v10[r] - aucs[r]) * (v10[c] - aucs[c])) / (m - 1) for c in range(k)]
            for r in range(k)
        ]
    )
    s01 = np.array(
        [
            [np.sum((v01[r] - aucs[r]) * (v01[c] - aucs[c])) / (n - 1) for c in range(k)]
            for r in range(k)
        ]
    )
    return np.array(aucs), s10 / m + s01 / n


@pytest.fixture(scope="module")
def tied() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small data with many ties within and across classes."""
    rng = np.random.default_rng(3)
    n = 70
    y = rng.binomial(1, 0.4, n)
    s1 = np.round(rng.normal(0, 1, n) + 0.8 * y, 1)
    s2 = np.round(0.6 * s1 + rng.normal(0, 1, n), 0)  # coarse: heavy ties, correlated with s1
    return y, s1, s2


def test_delong_auc_matches_naive_structural_components(tied):
    y, s1, _ = tied
    res = delong_auc(y, s1)
    auc_naive, cov_naive = _naive_delong(y, [s1])
    assert res.auc == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert res.auc == pytest.approx(auc_naive[0], abs=1e-12)
    assert res.se**2 == pytest.approx(cov_naive[0, 0], rel=1e-10)
    z = stats.norm.ppf(0.975)
    assert res.lower == pytest.approx(res.auc - z * res.se, abs=1e-12)
    assert res.upper == pytest.approx(res.auc + z * res.se, abs=1e-12)
    assert (res.n_events, res.n_nonevents) == (int(y.sum()), int((1 - y).sum()))
    assert "DeLong" in res.summary()
    assert res.to_frame().loc[0, "auc"] == res.auc


def test_delong_alpha_and_clipping():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.8, 0.9, 0.95])
    r90 = delong_auc(y, s, alpha=0.10)
    r95 = delong_auc(y, s)
    assert r90.upper - r90.lower < r95.upper - r95.lower
    assert r95.upper == 1.0  # auc + z*se > 1 is clipped
    perfect = delong_auc(y, np.arange(8.0) * y)
    assert perfect.auc == 1.0 and perfect.upper == 1.0


def test_delong_test_matches_naive_covariance(tied):
    y, s1, s2 = tied
    res = delong_test(y, s1, s2)
    aucs, cov = _naive_delong(y, [s1, s2])
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / np.sqrt(var)
    assert res.auc1 == pytest.approx(aucs[0], abs=1e-12)
    assert res.auc2 == pytest.approx(roc_auc_score(y, s2), abs=1e-12)
    assert res.se**2 == pytest.approx(var, rel=1e-10)
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.pvalue == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    assert res.correlation == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    same = delong_test(y, s1, s1)
    assert same.difference == 0.0 and same.pvalue == 1.0


def test_delong_auc_large_sample_against_sklearn_and_mann_whitney():
    rng = np.random.default_rng(11)
    y = rng.binomial(1, 0.22, 5000)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, 5000) + y)))
    res = delong_auc(y, p)
    assert res.auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    u = stats.mannwhitneyu(p[y == 1], p[y == 0]).statistic
    assert res.auc == pytest.approx(u / (y.sum() * (1 - y).sum()), abs=1e-12)


def test_roc_curve_matches_sklearn(tied):
    y, s1, _ = tied
    ours = roc_curve(y, s1)
    fpr, tpr, thr = sk_roc_curve(y, s1, drop_intermediate=False)
    np.testing.assert_allclose(ours["fpr"], fpr)
    np.testing.assert_allclose(ours["tpr"], tpr)
    np.testing.assert_allclose(ours["threshold"].iloc[1:], thr[1:])
    assert np.isinf(ours["threshold"].iloc[0])
    assert np.trapezoid(ours["tpr"], ours["fpr"]) == pytest.approx(roc_auc_score(y, s1))


def test_brier_score_matches_sklearn():
    rng = np.random.default_rng(5)
    p = rng.random(300)
    y = rng.binomial(1, p)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_calibration_curve_matches_sklearn_and_wilson(strategy):
    rng = np.random.default_rng(8)
    p = rng.beta(2, 5, 2000)
    y = rng.binomial(1, p)
    curve = calibration_curve(y, p, n_bins=8, strategy=strategy)
    prob_true, prob_pred = sk_calibration_curve(y, p, n_bins=8, strategy=strategy)
    np.testing.assert_allclose(curve["observed"], prob_true, atol=1e-12)
    np.testing.assert_allclose(curve["mean_predicted"], prob_pred, atol=1e-12)
    assert curve["n"].sum() == len(y)
    assert curve["events"].sum() == y.sum()
    # Wilson score interval written out
    z = stats.norm.ppf(0.975)
    n, k = curve["n"].to_numpy(float), curve["events"].to_numpy(float)
    centre = (k + z**2 / 2) / (n + z**2)
    half = z / (n + z**2) * np.sqrt(k * (n - k) / n + z**2 / 4)
    np.testing.assert_allclose(curve["lower"], centre - half, rtol=1e-10)
    np.testing.assert_allclose(curve["upper"], centre + half, rtol=1e-10)
    if strategy == "quantile":
        assert curve["n"].min() >= len(y) // 8 - 1


def test_calibration_curve_merges_duplicate_edges():
    p = np.r_[np.full(60, 0.2), np.linspace(0.3, 0.9, 40)]
    y = (np.arange(100) % 3 == 0).astype(int)
    curve = calibration_curve(y, p, n_bins=10)
    assert curve["n"].sum() == 100
    assert curve["bin"].is_unique
    with pytest.raises(ConfigError):
        calibration_curve(y, p, strategy="kmeans")


def test_calibration_slope_intercept_known_truth():
    rng = np.random.default_rng(21)
    n = 20000
    lp = rng.normal(-1, 1, n)
    y = rng.binomial(1, 1 / (1 + np.exp(-lp)))
    good = calibration_slope_intercept(y, 1 / (1 + np.exp(-lp)))
    assert abs(good.slope - 1) < 4 * good.slope_se
    assert abs(good.intercept) < 4 * good.intercept_se
    # predictions twice too extreme, shifted by +0.5: slope 1/2
    bad = calibration_slope_intercept(y, 1 / (1 + np.exp(-(2 * lp + 0.5))))
    assert abs(bad.slope - 0.5) < 4 * bad.slope_se
    # both against statsmodels GLM fits written out here
    glm_slope = sm.GLM(y, sm.add_constant(2 * lp + 0.5), family=sm.families.Binomial()).fit()
    glm_large = sm.GLM(y, np.ones(n), family=sm.families.Binomial(), offset=2 * lp + 0.5).fit()
    assert bad.slope == pytest.approx(glm_slope.params[1], rel=1e-8)
    assert bad.slope_se == pytest.approx(glm_slope.bse[1], rel=1e-6)
    assert bad.intercept == pytest.approx(glm_large.params[0], abs=1e-9)
    assert bad.intercept_se == pytest.approx(glm_large.bse[0], rel=1e-6)
    assert list(bad.to_frame().index) == ["calibration_intercept", "calibration_slope"]


def test_calibration_intercept_with_extreme_predictions():
    # near-0/1 predictions (an overfit model) must not break the offset fit
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    p = np.array([0.0, 1e-15, 1.0, 0.9, 0.2, 1e-14, 0.3, 0.8, 1.0, 0.999999])
    fit = calibration_slope_intercept(y, p)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    offset = np.log(q / (1 - q))
    score = np.sum(y - 1 / (1 + np.exp(-(fit.intercept + offset))))
    assert abs(score) < 1e-8
    assert np.isfinite(fit.slope)


def _overfit_data(seed: int = 0, n: int = 150, k: int = 12) -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k))
    y = rng.binomial(1, 1 / (1 + np.exp(-(0.8 * x[:, 0]))))
    df = pd.DataFrame(x, columns=[f"x{i}" for i in range(k)])
    df["y"] = y
    return df, "y ~ " + " + ".join(df.columns[:-1])


def test_bootstrap_optimism_of_overfit_model():
    df, formula = _overfit_data()
    calls = []
    res = validate_logistic(formula, df, B=20, seed=1, progress=lambda d, t: calls.append((d, t)))
    tab = res.table
    assert calls == [(i, 20) for i in range(1, 21)]
    assert tab.loc["c_index", "optimism"] > 0
    assert tab.loc["c_index", "corrected"] < tab.loc["c_index", "apparent"]
    assert tab.loc["calibration_slope", "apparent"] == pytest.approx(1.0, abs=1e-6)
    assert tab.loc["calibration_slope", "corrected"] < 0.95
    assert tab.loc["brier", "optimism"] < 0  # smaller is better for Brier
    np.testing.assert_allclose(tab["optimism"], tab["training"] - tab["test"])
    np.testing.assert_allclose(tab["corrected"], tab["apparent"] - tab["optimism"])
    assert (tab["n"] + res.n_failed == 20).all()
    assert len(res.replicates) == tab["n"].iloc[0]
    # apparent C-index is the plain AUC of the full-data fit
    fit = smf.logit(formula, df).fit(disp=0)
    assert tab.loc["c_index", "apparent"] == pytest.approx(roc_auc_score(df.y, fit.predict(df)))
    assert "Optimism bootstrap" in res.summary()


def test_bootstrap_is_deterministic_and_paths_agree():
    df, formula = _overfit_data(seed=2, n=120, k=5)
    a = validate_logistic(formula, df, B=8, seed=4)
    b = validate_logistic(formula, df, B=8, seed=4)
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.replicates, b.replicates)
    c = validate_logistic(formula, df, B=8, seed=5)
    assert not np.allclose(a.table["optimism"], c.table["optimism"])
    generic = bootstrap_validation(
        df,
        lambda d: smf.logit(formula, d).fit(disp=0, maxiter=200),
        lambda m, d: m.predict(d).to_numpy(),
        outcome="y",
        B=8,
        seed=4,
    )
    pd.testing.assert_frame_equal(generic.table, a.table, rtol=1e-6)


def test_bootstrap_errors():
    df, formula = _overfit_data(n=40, k=2)
    with pytest.raises(ConfigError):
        validate_logistic(formula, df, B=0)
    with pytest.raises(DataError, match="outcome"):
        bootstrap_validation(df, lambda d: None, lambda m, d: None, outcome="nope", B=2)
    bad = df.assign(y=df.y * 2)
    with pytest.raises(DataError, match="0/1"):
        validate_logistic(formula, bad, B=2)


@pytest.mark.parametrize(
    ("y", "s", "match"),
    [
        ([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], "0/1"),
        ([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], "missing"),
        ([1, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], "at least 2"),
        ([0, 1, 0, 1], [0.1, 0.2, 0.3], "expected 4"),
    ],
)
def test_input_errors(y, s, match):
    with pytest.raises(DataError, match=match):
        delong_auc(y, s)


def test_batched_bootstrap_equals_replicate_by_replicate(monkeypatch):
    """The replicates evaluated together (bootstrap counts as weights) give the numbers of the
    replicate-by-replicate refits on resampled rows, and fail where those fail (a rare level
    not drawn makes a resample's design rank deficient)."""
    from myocomp.stats import validation

    rng = np.random.default_rng(3)
    n = 80
    df = pd.DataFrame({"x0": rng.normal(size=n), "x1": rng.normal(size=n).round(1),
                       "rare": (np.arange(n) < 4).astype(float)})
    df["y"] = rng.binomial(1, 1 / (1 + np.exp(-(0.9 * df.x0 - 0.5 * df.x1))))
    df.loc[:3, "y"] = [1, 0, 1, 0]
    formula = "y ~ x0 + x1 + rare"
    fast = validate_logistic(formula, df, B=60, seed=2)
    monkeypatch.setattr(validation, "_LogisticBatch", lambda *args: (lambda draws: {}))
    slow = validate_logistic(formula, df, B=60, seed=2)
    assert fast.n_failed == slow.n_failed > 0
    pd.testing.assert_frame_equal(fast.replicates, slow.replicates, rtol=1e-11, atol=1e-13)
    pd.testing.assert_frame_equal(fast.table, slow.table, rtol=1e-11, atol=1e-13)
