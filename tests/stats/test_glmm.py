"""Tests of the mixed logistic regression against lme4 and against independent computations."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import patsy
import pytest
import statsmodels.api as sm
from scipy import integrate, optimize, special, stats

from myocomp.errors import DataError, MyocompError
from myocomp.stats import BoundaryFitWarning, MixedLogitResults, fit_mixed_logit
from myocomp.stats.glmm import _build, _Deviance

MODELS = {
    "cbpp": ("cbpp.csv", "incidence ~ C(period)", "herd", "size"),
    "small_clusters": ("small_clusters.csv", "y ~ x + t + s", "cluster", None),
}


def lme4_name(name: str) -> str:
    """Our (patsy) coefficient names -> lme4's."""
    if name == "Intercept":
        return "(Intercept)"
    return name.replace("C(period)[T.", "period").replace("]", "")


@pytest.fixture(scope="module")
def glmm_dir(shared_data):
    return shared_data / "glmm"


@pytest.fixture(scope="module")
def reference(glmm_dir) -> dict:
    return json.loads((glmm_dir / "lme4_reference.json").read_text())


@pytest.fixture(scope="module")
def cbpp(glmm_dir) -> pd.DataFrame:
    return pd.read_csv(glmm_dir / "cbpp.csv")


@pytest.fixture(scope="module")
def cbpp_fit(cbpp) -> MixedLogitResults:
    return fit_mixed_logit("incidence ~ C(period)", cbpp, "herd", trials="size")


def _reference_keys() -> list[str]:
    return ["cbpp_laplace", "cbpp_agq25", "small_clusters_laplace", "small_clusters_agq15"]


@pytest.mark.parametrize("key", _reference_keys())
def test_matches_lme4(key, reference, glmm_dir):
    dataset, approx = key.rsplit("_", 1)
    nagq = 1 if approx == "laplace" else int(approx.removeprefix("agq"))
    file, formula, groups, trials = MODELS[dataset]
    data = pd.read_csv(glmm_dir / file)
    res = fit_mixed_logit(formula, data, groups, nagq=nagq, trials=trials)
    ref = reference[key]
    assert res.converged
    assert sorted(map(lme4_name, res.params.index)) == sorted(ref["fixef"])
    for name in res.params.index:
        assert abs(res.params[name] - ref["fixef"][lme4_name(name)]) < 1e-3, name
        assert abs(res.bse[name] / ref["se"][lme4_name(name)] - 1.0) < 0.01, name
    assert abs(res.group_sd - ref["group_sd"]) < 2e-3
    # lme4's logLik: with the binomial constant at nAGQ = 1, from the deviance at nAGQ > 1
    reported = res.loglik if nagq == 1 else -res.deviance / 2.0
    assert reported == pytest.approx(ref["loglik"], abs=1e-3)
    assert res.nobs == len(data) and res.ngroups == data[groups].nunique()


def _laplace_by_brute_force(data: pd.DataFrame, theta: float, beta: np.ndarray) -> float:
    """Exact Laplace deviance of cbpp, group by group with scipy (independent of the package)."""
    X = pd.get_dummies(data["period"].astype(str), drop_first=True).to_numpy(float)
    X = np.column_stack([np.ones(len(data)), X])
    total = 0.0
    for _, idx in data.groupby("herd").indices.items():
        y, m, eta0 = data["incidence"].to_numpy()[idx], data["size"].to_numpy()[idx], X[idx] @ beta

        def h(u, y=y, m=m, eta0=eta0):
            eta = eta0 + theta * u
            return -2 * np.sum(stats.binom.logpmf(y, m, special.expit(eta))) + u * u

        u = optimize.minimize_scalar(h, bracket=(-3, 3), tol=1e-12).x
        mu = special.expit(eta0 + theta * u)
        total += h(u) + math.log(1 + theta**2 * np.sum(m * mu * (1 - mu)))
    return total


def test_exact_laplace_is_the_minimum_of_an_independent_laplace(cbpp):
    res = fit_mixed_logit("incidence ~ C(period)", cbpp, "herd", trials="size", laplace="exact")
    x0 = np.r_[res.group_sd, res.params.to_numpy()]
    d0 = _laplace_by_brute_force(cbpp, x0[0], x0[1:])
    # our deviance has the same value (up to the binomial constant, which -2 loglik includes)
    assert -2 * res.loglik == pytest.approx(d0, abs=1e-6)
    # and no nearby point is better
    rng = np.random.default_rng(0)
    for _ in range(10):
        x = x0 + rng.normal(scale=0.02, size=x0.size)
        assert _laplace_by_brute_force(cbpp, abs(x[0]), x[1:]) > d0 - 1e-9


def test_adaptive_quadrature_matches_numerical_integration(cbpp, cbpp_fit):
    """The nagq = 25 deviance equals -2 log of the marginal likelihood integrated by scipy."""
    design, _ = _build("incidence ~ C(period)", cbpp, "herd", "size")
    dev = _Deviance(design, 25)
    theta, beta = 0.8, cbpp_fit.params.to_numpy()
    D, _ = dev(theta, beta)
    loglik = dev.log_binom - 0.5 * D
    X = design.X
    expected = 0.0
    for j in range(len(design.levels)):
        rows = design.codes == j
        y, m, eta0 = design.y[rows], design.m[rows], X[rows] @ beta

        def integrand(b, y=y, m=m, eta0=eta0):
            return math.exp(
                np.sum(stats.binom.logpmf(y, m, special.expit(eta0 + b)))
            ) * stats.norm.pdf(b, scale=theta)

        expected += math.log(integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-11)[0])
    assert loglik == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("nagq", [1, 5])
def test_analytic_gradient_matches_finite_differences(cbpp, nagq):
    design, _ = _build("incidence ~ C(period)", cbpp, "herd", "size")
    dev = _Deviance(design, nagq)
    x = np.array([0.7, -1.3, -1.0, -1.1, -1.5])
    _, grad = dev(x[0], x[1:])
    num = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = 1e-6
        num[i] = (dev(*_split(x + e))[0] - dev(*_split(x - e))[0]) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-5)


def _split(x):
    return x[0], x[1:]


def _no_group_effect(seed: int = 3, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = (rng.random(n) < special.expit(-0.5 + 0.8 * x)).astype(int)
    return pd.DataFrame({"y": y, "x": x, "g": rng.integers(0, 8, n)})


@pytest.mark.parametrize("nagq", [1, 7])
def test_boundary_fit_warns_and_equals_plain_logistic(nagq):
    data = _no_group_effect()
    with pytest.warns(BoundaryFitWarning):
        res = fit_mixed_logit("y ~ x", data, "g", nagq=nagq)
    assert res.group_sd < 1e-3
    assert res.singular
    glm = sm.Logit(data["y"], sm.add_constant(data["x"])).fit(disp=0)
    np.testing.assert_allclose(res.params.to_numpy(), glm.params.to_numpy(), atol=1e-5)
    np.testing.assert_allclose(res.bse.to_numpy(), glm.bse.to_numpy(), rtol=1e-3)
    assert "singular" in res.summary()


def test_predict(cbpp, cbpp_fit):
    new = pd.DataFrame({"period": [1, 3, 4, 2], "herd": [1, 5, 99, np.nan]})
    b = cbpp_fit.params
    eta = np.array(
        [
            b["Intercept"],
            b["Intercept"] + b["C(period)[T.3]"],
            b["Intercept"] + b["C(period)[T.4]"],
            b["Intercept"] + b["C(period)[T.2]"],
        ]
    )
    np.testing.assert_allclose(cbpp_fit.predict(new).to_numpy(), special.expit(eta), rtol=1e-12)
    re = cbpp_fit.random_effects
    with_group = cbpp_fit.predict(new, include_group=True).to_numpy()
    # herds 1 and 5 get their conditional modes; unknown (99) and missing herds get 0
    expected = special.expit(eta + np.array([re.loc[1], re.loc[5], 0.0, 0.0]))
    np.testing.assert_allclose(with_group, expected, rtol=1e-12)
    # a missing covariate gives a missing prediction, not an error
    assert np.isnan(cbpp_fit.predict(pd.DataFrame({"period": [np.nan, 1]})).iloc[0])


def test_predict_rejects_unseen_category(cbpp_fit):
    with pytest.raises(DataError):
        cbpp_fit.predict(pd.DataFrame({"period": [7]}))
    with pytest.raises(DataError, match="period"):
        cbpp_fit.predict(pd.DataFrame({"other": [1]}))


def test_random_effects_are_conditional_modes(cbpp, cbpp_fit):
    """At the optimum each herd's effect solves b = sd^2 * sum(y - m mu)."""
    b = cbpp_fit.params
    x = cbpp["period"].map(
        {1: 0.0, 2: b["C(period)[T.2]"], 3: b["C(period)[T.3]"], 4: b["C(period)[T.4]"]}
    )
    eta = b["Intercept"] + x + cbpp["herd"].map(cbpp_fit.random_effects)
    resid = (cbpp["incidence"] - cbpp["size"] * special.expit(eta)).groupby(cbpp["herd"]).sum()
    np.testing.assert_allclose(
        cbpp_fit.random_effects.to_numpy(), cbpp_fit.group_sd**2 * resid.to_numpy(), atol=1e-8
    )


def test_odds_ratios_arithmetic(cbpp_fit):
    beta, se = cbpp_fit.params, cbpp_fit.bse
    q = stats.norm.ppf(0.975)
    tab = cbpp_fit.odds_ratios(scale=2.0)
    assert list(tab.columns) == ["OR", "lower", "upper", "p"]
    assert "Intercept" not in tab.index
    name = "C(period)[T.4]"
    assert tab.loc[name, "OR"] == pytest.approx(math.exp(2 * beta[name]), rel=1e-12)
    assert tab.loc[name, "lower"] == pytest.approx(math.exp(2 * (beta[name] - q * se[name])))
    assert tab.loc[name, "upper"] == pytest.approx(math.exp(2 * (beta[name] + q * se[name])))
    z = beta[name] / se[name]
    assert tab.loc[name, "p"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-10)
    # a negative scale flips the OR; the interval stays ordered
    neg = cbpp_fit.odds_ratios(scale=-1.0, terms=[name])
    assert neg.loc[name, "OR"] == pytest.approx(math.exp(-beta[name]))
    assert neg.loc[name, "lower"] < neg.loc[name, "OR"] < neg.loc[name, "upper"]
    ci = cbpp_fit.conf_int(alpha=0.1)
    assert ci.loc[name, "upper"] - beta[name] == pytest.approx(
        stats.norm.ppf(0.95) * se[name], rel=1e-12
    )
    with pytest.raises(DataError, match="nosuch"):
        cbpp_fit.odds_ratios(terms=["nosuch"])


def test_results_tables(cbpp_fit):
    frame = cbpp_fit.to_frame()
    assert list(frame.columns) == ["estimate", "se", "z", "p", "lower", "upper"]
    np.testing.assert_allclose(frame["z"], cbpp_fit.params / cbpp_fit.bse)
    text = cbpp_fit.summary()
    assert "Laplace" in text and "herd" in text and "C(period)[T.2]" in text
    assert f"{cbpp_fit.group_sd:.4f}" in text
    assert cbpp_fit.aic == pytest.approx(-2 * cbpp_fit.loglik + 2 * 5)
    cov = cbpp_fit.cov_params()
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), cbpp_fit.bse)
    np.testing.assert_allclose(cov, cov.T)


def test_dict_round_trip_predicts_identically(cbpp, cbpp_fit):
    d = json.loads(json.dumps(cbpp_fit.to_dict()))
    back = MixedLogitResults.from_dict(d)
    pd.testing.assert_series_equal(back.params, cbpp_fit.params)
    pd.testing.assert_series_equal(back.bse, cbpp_fit.bse)
    assert back.group_sd == cbpp_fit.group_sd
    new = cbpp.iloc[::7]
    pd.testing.assert_series_equal(back.predict(new), cbpp_fit.predict(new))
    pd.testing.assert_series_equal(
        back.predict(new, include_group=True), cbpp_fit.predict(new, include_group=True)
    )
    with pytest.raises(DataError):
        MixedLogitResults.from_dict({"params": {}})


def test_treatment_reference_and_strings_round_trip():
    rng = np.random.default_rng(5)
    n = 600
    data = pd.DataFrame(
        {
            "pa": rng.choice(["<500", "500-5000", ">5000"], n),
            "sex": rng.choice(["female", "male"], n),
            "site": rng.choice(["a", "b", "c", "d"], n),
            "x": rng.normal(size=n),
        }
    )
    data["y"] = (rng.random(n) < special.expit(-1 + 0.5 * data["x"])).astype(int)
    formula = "y ~ x + C(sex) + C(pa, Treatment('500-5000'))"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        res = fit_mixed_logit(formula, data, "site")
    assert "C(pa, Treatment('500-5000'))[T.<500]" in res.params.index
    back = MixedLogitResults.from_dict(json.loads(json.dumps(res.to_dict())))
    new = data.head(20).astype({"sex": "string"})
    new.loc[new.index[0], "sex"] = pd.NA
    pred = res.predict(new)
    np.testing.assert_array_equal(back.predict(new).to_numpy(), pred.to_numpy())
    assert np.isnan(pred.iloc[0]) and pred.iloc[1:].between(0, 1).all()


def test_missing_values_are_dropped_and_counted(cbpp):
    holes = cbpp.copy()
    holes["size"] = holes["size"].astype(float)
    holes.loc[[0, 5], "incidence"] = np.nan
    holes.loc[9, "size"] = np.nan
    holes.loc[11, "herd"] = np.nan
    holes["unused"] = np.nan  # columns not in the model do not matter
    res = fit_mixed_logit("incidence ~ C(period)", holes, "herd", trials="size")
    assert res.n_dropped == 4 and res.nobs == len(cbpp) - 4
    complete = cbpp.drop(index=[0, 5, 9, 11])
    ref = fit_mixed_logit("incidence ~ C(period)", complete, "herd", trials="size")
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-10)


def test_deterministic(cbpp):
    a = fit_mixed_logit("incidence ~ C(period)", cbpp, "herd", nagq=3, trials="size")
    b = fit_mixed_logit("incidence ~ C(period)", cbpp, "herd", nagq=3, trials="size")
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"formula": "incidence ~ C(period) + nosuchcol"}, "nosuchcol"),
        ({"formula": "incidence ~ np.log(wrongname)"}, "wrongname"),
        ({"groups": "farm"}, "farm"),
        ({"trials": "n_animals"}, "n_animals"),
        ({"formula": "incidence ~ C(period)", "trials": None}, "0/1"),
        ({"nagq": 0}, "nagq"),
        ({"laplace": "pql"}, "laplace"),
        ({"formula": "no tilde"}, "~"),
    ],
)
def test_bad_inputs_raise_data_error(cbpp, kwargs, match):
    args = {
        "formula": "incidence ~ C(period)",
        "data": cbpp,
        "groups": "herd",
        "trials": "size",
        **kwargs,
    }
    with pytest.raises(DataError, match=match):
        fit_mixed_logit(**args)


def test_successes_above_trials_and_empty_groups(cbpp):
    bad = cbpp.copy()
    bad.loc[3, "incidence"] = bad.loc[3, "size"] + 1
    with pytest.raises(DataError, match="incidence"):
        fit_mixed_logit("incidence ~ C(period)", bad, "herd", trials="size")
    nogroups = cbpp.assign(herd=np.nan)
    with pytest.raises(DataError, match="herd"):
        fit_mixed_logit("incidence ~ C(period)", nogroups, "herd", trials="size")
    norows = cbpp.assign(period=np.nan)
    with pytest.raises(DataError, match="no rows left"):
        fit_mixed_logit("incidence ~ C(period)", norows, "herd", trials="size")
    assert issubclass(DataError, MyocompError)


def test_boolean_outcome_and_text_outcome():
    data = _no_group_effect(seed=8, n=300)
    data["g"] = data["g"] % 4
    data["yb"] = data["y"].astype(bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BoundaryFitWarning)
        a = fit_mixed_logit("y ~ x", data, "g")
        b = fit_mixed_logit("yb ~ x", data, "g")
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy())
    data["yt"] = np.where(data["y"] == 1, "yes", "no")
    with pytest.raises(DataError, match="yt"):
        fit_mixed_logit("yt ~ x", data, "g")


def _simulate(rng: np.random.Generator, n: int = 2000, n_sites: int = 8) -> pd.DataFrame:
    site = rng.integers(0, n_sites, n)
    u = rng.normal(0.0, 0.4, n_sites)
    z_i = rng.normal(size=n)
    z_l = -0.4 * z_i + rng.normal(scale=0.9, size=n)
    age = rng.uniform(20, 72, n)
    male = rng.random(n) < 0.55
    eta = -2.6 + u[site] + TRUE["z_intermat"] * z_i + TRUE["z_lmm"] * z_l
    eta += TRUE["age"] * age + TRUE["C(sex)[T.male]"] * male
    y = (rng.random(n) < special.expit(eta)).astype(int)
    return pd.DataFrame(
        {
            "cbp": y,
            "z_intermat": z_i,
            "z_lmm": z_l,
            "age": age,
            "sex": np.where(male, "male", "female"),
            "site": [f"s{k}" for k in site],
        }
    )


TRUE = {"z_intermat": 0.3, "z_lmm": -0.2, "age": 0.02, "C(sex)[T.male]": -0.3}


def test_simulation_coverage_of_wald_intervals():
    """95 % intervals cover the true coefficients in at least 17 of 20 seeded replicates."""
    rng = np.random.default_rng(20250123)
    covered = dict.fromkeys(TRUE, 0)
    for _ in range(20):
        data = _simulate(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BoundaryFitWarning)  # a few replicates estimate SD 0
            res = fit_mixed_logit("cbp ~ z_intermat + z_lmm + age + C(sex)", data, "site")
        assert res.converged
        ci = res.conf_int()
        for name, value in TRUE.items():
            covered[name] += int(ci.loc[name, "lower"] <= value <= ci.loc[name, "upper"])
    assert all(c >= 17 for c in covered.values()), covered


@pytest.mark.parametrize(
    "formula",
    [
        "incidence ~ C(period)",
        "incidence ~ C(period, Sum):size + np.log(size) - 1",
        "incidence ~ C(period, Treatment(3)) * size + I(size**2)",
        "incidence ~ C(herd):C(period)",
    ],
)
def test_design_equals_patsy(cbpp, formula):
    """The vectorised design matrix is patsy's, column for column and bit for bit."""
    from myocomp.stats.glmm import design_matrices

    y, X, names = design_matrices(formula, cbpp)
    ref_y, ref_X = patsy.dmatrices(formula, cbpp, return_type="dataframe")
    assert names == list(ref_X.columns)
    assert np.array_equal(X, ref_X.to_numpy()) and np.array_equal(y, ref_y.iloc[:, 0])


def test_model_object_stages(cbpp):
    """MixedLogit: the design is built once and reused; fit() is fit_mixed_logit; the stages
    compose (start values, preconditioner, optimisation, Hessian) to the same optimum."""
    from myocomp.stats import MixedLogit
    from myocomp.stats.glmm import _Deviance

    model = MixedLogit("incidence ~ C(period)", cbpp, "herd", trials="size")
    a = model.fit(nagq=1)
    b = fit_mixed_logit("incidence ~ C(period)", cbpp, "herd", trials="size")
    assert a.params.equals(b.params) and a.bse.equals(b.bse) and a.loglik == b.loglik
    agq = model.fit(nagq=5)  # the same design, another approximation
    assert agq.nagq == 5 and agq.loglik != a.loglik
    dev = _Deviance(model.design, 1)
    beta0, theta0 = model.start_values(dev, None)
    T = model.preconditioner(dev, beta0)
    mu = special.expit(dev.X @ beta0)  # T' I T = 1 for the GLM information at beta0
    info = dev.X.T @ ((dev.m * mu * (1 - mu))[:, None] * dev.X)
    np.testing.assert_allclose(T.T @ info @ T, np.eye(len(beta0)), atol=1e-6)
    opt = model.optimise(dev, beta0, T, theta0, 1000, lme4=True)
    np.testing.assert_allclose(beta0 + T @ opt.x[1:], a.params, atol=1e-6)
    opt, H = model.polish(opt, np.arange(len(beta0) + 1))
    vcov = model.covariance(H, T, np.arange(len(beta0) + 1))
    np.testing.assert_allclose(np.sqrt(np.diag(vcov)), a.bse, rtol=1e-8)
