"""Score one person with a saved study model (``model.json`` written by :func:`run_study`):
Z-scores from the saved reference, nomogram points per predictor, total points, CBP
probability."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from myocomp.errors import ConfigError, DataError
from myocomp.io import read_document
from myocomp.study.analyses import LABELS, PA_TERM, pa_category
from myocomp.study.phenotypes import RANGES, SEX_CODES
from myocomp.study.result import MODEL_FORMAT, MODEL_VERSION

__all__ = ["INPUT_RANGES", "PredictionResult", "linear_predictor_ci", "load_model",
           "predict_person"]

#: plausible ranges of predict's numeric inputs: name -> (low, high, unit), both ends allowed.
#: One table for ``myocomp predict`` and the calculator page (which shows and checks the same).
INPUT_RANGES: dict[str, tuple[float, float, str]] = {
    "age": (18.0, 100.0, "years"),  # adults of a population cohort
    "bmi": (*RANGES["bmi"], "kg/m²"),
    "height_cm": (*RANGES["height_cm"], "cm"),
    "lean_volume_ml": (10.0, 20_000.0, "mL"),
    "intermat_ml": (0.0, 10_000.0, "mL"),
    "intermat_fraction": (0.0, 1.0, "0–1"),
    "met_min_week": (*RANGES["met_min_week"], "MET-min/week"),
}
#: two-sided 95 % normal quantile of the delta-method interval
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class PredictionResult:
    """Score of one person.

    ``zscores``: {"z_intermat", "z_lmm"}; ``points``: predictor -> nomogram points;
    ``total_points``; ``linear_predictor`` (log-odds, from the total points);
    ``linear_predictor_model`` (the same, computed directly from the model coefficients);
    ``probability`` (of CBP); ``probability_lower`` / ``probability_upper``: its 95 % CI by
    the delta method on the nomogram model's fixed-effects covariance (None for a model.json
    without ``cov_params``); ``inputs``: the values used (with derived lmm, pa_category).
    """

    inputs: dict[str, Any]
    zscores: dict[str, float]
    points: dict[str, float]
    total_points: float
    linear_predictor: float
    linear_predictor_model: float
    probability: float
    notes: tuple[str, ...] = ()
    probability_lower: float | None = None
    probability_upper: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "zscores": self.zscores, "points": self.points,
                "total_points": self.total_points, "linear_predictor": self.linear_predictor,
                "linear_predictor_model": self.linear_predictor_model,
                "probability": self.probability,
                "probability_lower": self.probability_lower,
                "probability_upper": self.probability_upper, "notes": list(self.notes)}


def load_model(path: str | Path) -> dict[str, Any]:
    """Read and check a ``model.json`` written by :func:`myocomp.study.run.run_study`."""
    path = Path(path)
    model = read_document(path, "model file")
    if not isinstance(model, dict) or model.get("format") != MODEL_FORMAT:
        raise ConfigError(f"not a {MODEL_FORMAT} file", source=path)
    if model.get("version") != MODEL_VERSION:
        raise ConfigError(f"unsupported model version {model.get('version')}", source=path)
    for key in ("zscores", "nomogram", "nomogram_model"):
        if key not in model:
            raise ConfigError(f"model file lacks '{key}'", source=path)
    _check_terms(model, path)
    return model


def _check_terms(model: dict[str, Any], path: Path) -> None:
    """Every coefficient of the nomogram model must be a finite number on a predictor that
    predict can score (otherwise a term would be silently scored as 0 or fail later)."""
    known = {"Intercept", "z_intermat", "z_lmm", "age", "female", "diabetes", "dyslipidemia",
             "osteoporosis", "osteoarthritis"}
    nomogram_model = model["nomogram_model"]
    params = nomogram_model.get("params") if isinstance(nomogram_model, dict) else None
    if not isinstance(params, dict):
        raise ConfigError("model file's nomogram_model has no 'params' object", source=path)
    for term, beta in params.items():
        pa_level = term.startswith(PA_TERM) and term[len(PA_TERM):] in ("[T.low]", "[T.high]")
        if term not in known and not pa_level:
            raise ConfigError(f"model term '{term}' is unknown to predict (known: "
                              f"{', '.join(sorted(known))}, physical activity)", source=path)
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
            raise ConfigError(f"model term '{term}' has a non-finite coefficient", source=path)


def _check_range(name: str, value: float | None) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise DataError(f"{name} must be a finite number, got {value}")
    if name in INPUT_RANGES:
        lo, hi, _ = INPUT_RANGES[name]
        if not lo <= value <= hi:
            raise DataError(f"{name} = {value:g} is outside the plausible range [{lo:g}, {hi:g}]")


def _design_row(terms: list[str], person: dict[str, Any], pa: str) -> list[float]:
    """The nomogram model's design vector of one person, in the order of ``terms``."""
    row = []
    for term in terms:
        if term == "Intercept":
            row.append(1.0)
        elif term.startswith(PA_TERM):
            row.append(float(pa == term[len(PA_TERM) + len("[T."):-1]))
        else:
            row.append(float(person[term]))
    return row


def linear_predictor_ci(cov: dict[str, Any], x: dict[str, float], lp: float
                        ) -> tuple[float, float]:
    """95 % CI of a probability ``expit(lp)`` by the delta method: ``lp ± 1.96 sqrt(x' V x)``
    with ``V`` the fixed-effects covariance ``cov`` (``{"terms": [...], "matrix": [[...]]}``)
    and ``x`` the design vector (term -> value). Returns (lower, upper) probabilities."""
    terms = cov["terms"]
    v = [x[t] for t in terms]
    var = sum(v[i] * cov["matrix"][i][j] * v[j] for i in range(len(v)) for j in range(len(v)))
    se = math.sqrt(max(var, 0.0))
    return (1.0 / (1.0 + math.exp(-(lp - Z_95 * se))), 1.0 / (1.0 + math.exp(-(lp + Z_95 * se))))


def _pa_level(met_min_week: float | None, breaks: tuple[float, float], notes: list[str]) -> str:
    """PA category of MET-min/week; None is the reference "moderate" (with a note)."""
    if met_min_week is None:
        notes.append("met_min_week not given: physical activity taken as 'moderate' "
                     "(the reference category)")
        return "moderate"
    return str(pa_category(pd.Series([float(met_min_week)]), breaks).iloc[0])


def _model_lp(nomogram_model: dict[str, Any], person: dict[str, Any], pa: str, lp: float
              ) -> tuple[float, float | None, float | None]:
    """The linear predictor straight from the coefficients, and the 95 % CI of ``expit(lp)``
    (None, None without a saved covariance)."""
    params = nomogram_model["params"]
    x = dict(zip(params, _design_row(list(params), person, pa), strict=True))
    lp_model = float(params.get("Intercept", 0.0))
    for term, beta in params.items():
        if term != "Intercept":
            lp_model += beta * x[term]
    cov = nomogram_model.get("cov_params")
    lower, upper = linear_predictor_ci(cov, x, lp) if cov else (None, None)
    return lp_model, lower, upper


def predict_person(
    model: dict[str, Any] | str | Path,
    *,
    age: float,
    sex: str,
    bmi: float,
    lean_volume_ml: float,
    intermat_ml: float | None = None,
    intermat_fraction: float | None = None,
    height_cm: float | None = None,
    diabetes: bool = False,
    dyslipidemia: bool = False,
    osteoporosis: bool = False,
    osteoarthritis: bool = False,
    met_min_week: float | None = None,
) -> PredictionResult:
    """CBP probability of one person from the nomogram of a saved study model.

    Units: age in years, bmi in kg/m², lean_volume_ml and intermat_ml in mL (back-muscle
    group, as in the metrics table), intermat_fraction 0-1 (only for models whose InterMAT
    biomarker is ``intermat_fraction``), height_cm in cm, met_min_week in MET-min/week (None:
    the reference category "moderate" is used and a note says so).
    """
    from myocomp.stats.nomogram import Nomogram
    from myocomp.stats.zscores import ZScoreModel

    if not isinstance(model, dict):
        model = load_model(model)
    sex_norm = SEX_CODES.get(str(sex).strip().lower())
    if sex_norm is None:
        raise DataError(f"sex '{sex}' not understood; use female/male (f/m, w)")
    metric = model.get("intermat_metric", "intermat_volume_ml")
    value = intermat_ml if metric == "intermat_volume_ml" else intermat_fraction
    if value is None:
        flag = "--intermat-ml" if metric == "intermat_volume_ml" else "--intermat-fraction"
        raise DataError(f"this model's InterMAT biomarker is {metric}: give {flag}")
    for name, v in (("age", age), ("bmi", bmi), ("height_cm", height_cm),
                    ("met_min_week", met_min_week), ("lean_volume_ml", lean_volume_ml),
                    ("intermat_ml" if metric == "intermat_volume_ml" else "intermat_fraction",
                     value)):
        _check_range(name, None if v is None else float(v))
    notes = []
    zmodel = ZScoreModel.from_dict(model["zscores"])
    lmm = float(lean_volume_ml) / float(bmi)
    frame = pd.DataFrame({"age": [float(age)], "sex": [sex_norm], metric: [float(value)],
                          "lmm": [lmm], "height_cm": [height_cm]})
    z = zmodel.zscores(frame).iloc[0]
    if not (math.isfinite(z["z_intermat"]) and math.isfinite(z["z_lmm"])):
        need = "height_cm (--height-cm)" if zmodel.height and height_cm is None else "inputs"
        raise DataError(f"the model's Z reference ({zmodel.method}) cannot score these {need}")
    pa = _pa_level(met_min_week, tuple(model.get("pa_breaks_met_min_week", (500.0, 5000.0))),
                   notes)
    person = {
        "z_intermat": float(z["z_intermat"]), "z_lmm": float(z["z_lmm"]), "age": float(age),
        "female": 1.0 if sex_norm == "female" else 0.0, "diabetes": float(bool(diabetes)),
        "dyslipidemia": float(bool(dyslipidemia)), "osteoporosis": float(bool(osteoporosis)),
        "osteoarthritis": float(bool(osteoarthritis)), "pa_category": pa,
    }
    nomo = Nomogram.from_dict(model["nomogram"])
    pts = nomo.points(person).iloc[0]
    total = float(pts["total_points"])
    lp = float(nomo.linear_predictor(total))
    lp_model, lower, upper = _model_lp(model["nomogram_model"], person, pa, lp)
    inputs = {"age": float(age), "sex": sex_norm, "bmi": float(bmi),
              "lean_volume_ml": float(lean_volume_ml), metric: float(value), "lmm": lmm,
              "height_cm": height_cm, "diabetes": bool(diabetes),
              "dyslipidemia": bool(dyslipidemia), "osteoporosis": bool(osteoporosis),
              "osteoarthritis": bool(osteoarthritis), "met_min_week": met_min_week,
              "pa_category": pa}
    points = {LABELS.get(k, k) if k != "pa_category" else LABELS["pa_category"]: float(v)
              for k, v in pts.drop("total_points").items()}
    return PredictionResult(
        inputs=inputs, zscores={"z_intermat": person["z_intermat"], "z_lmm": person["z_lmm"]},
        points=points, total_points=total, linear_predictor=lp,
        linear_predictor_model=lp_model, probability=1.0 / (1.0 + math.exp(-lp)),
        notes=tuple(notes), probability_lower=lower, probability_upper=upper,
    )
