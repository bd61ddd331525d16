"""Simulation: the 95 % CIs of the adjusted main model cover the true odds ratios."""

from __future__ import annotations

import math

import numpy as np

from myocomp.study.analyses import COVARIATES, MARKERS, fit_model, prepare_analysis_data
from myocomp.study.phenotypes import join_metrics, validate_phenotypes
from myocomp.synth.cohort import simulate_cohort


def test_main_model_ci_coverage_20_replicates():
    covered = {"z_intermat": 0, "z_lmm": 0}
    estimates = {"z_intermat": [], "z_lmm": []}
    n_rep = 20
    for rep in range(n_rep):
        cohort = simulate_cohort(3000, seed=1000 + rep)
        truth = cohort.true_parameters["odds_ratios_per_2z"]
        joined, _ = join_metrics(validate_phenotypes(cohort.data), None)
        d, _ = prepare_analysis_data(joined)
        fit = fit_model("adjusted", "", d, "cbp", [*MARKERS, *COVARIATES])
        assert fit.results is not None and fit.results.converged
        ci = fit.results.conf_int()
        for term in MARKERS:
            true_log_or = math.log(truth[term]) / 2.0
            covered[term] += int(ci.loc[term, "lower"] <= true_log_or <= ci.loc[term, "upper"])
            estimates[term].append(fit.results.params[term])
    assert covered["z_intermat"] >= 17, covered
    assert covered["z_lmm"] >= 17, covered
    # and the estimates centre on the truth (mean of 20 within ~2.5 standard errors of it)
    assert abs(np.exp(2 * np.mean(estimates["z_intermat"])) - 1.22) < 0.06
    assert abs(np.exp(2 * np.mean(estimates["z_lmm"])) - 0.87) < 0.08
