"""Statistics of the study: mixed logistic regression (Laplace / adaptive quadrature), Z-score
reference models, the rms-style nomogram and model validation (DeLong AUC, calibration,
bootstrap optimism)."""

from myocomp.stats.glmm import (
    BoundaryFitWarning,
    ConvergenceWarning,
    MixedLogit,
    MixedLogitResults,
    fit_mixed_logit,
)
from myocomp.stats.logistic import LogisticResults, fit_logit
from myocomp.stats.nomogram import Nomogram, PredictorSpec, build_nomogram, nomogram_from_formula
from myocomp.stats.validation import (
    bootstrap_validation,
    brier_score,
    calibration_curve,
    calibration_slope_intercept,
    delong_auc,
    delong_test,
)
from myocomp.stats.zscores import ZScoreModel, fit_zscores

__all__ = [
    "BoundaryFitWarning",
    "ConvergenceWarning",
    "LogisticResults",
    "MixedLogit",
    "MixedLogitResults",
    "Nomogram",
    "PredictorSpec",
    "ZScoreModel",
    "bootstrap_validation",
    "brier_score",
    "build_nomogram",
    "calibration_curve",
    "calibration_slope_intercept",
    "delong_auc",
    "delong_test",
    "fit_logit",
    "fit_mixed_logit",
    "fit_zscores",
    "nomogram_from_formula",
]
