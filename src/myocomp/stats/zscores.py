"""Z-score reference models for muscle-composition metrics.

A reference model is fitted once on a reference cohort, saved as JSON and applied unchanged to
new people. Three methods:

* ``cohort``: ``z = (x - mean) / sd`` over the whole reference cohort;
* ``sex``: the same, with the mean and SD of the person's sex;
* ``age_sex``: ordinary least squares ``x ~ 1 + age + male (+ height_cm)`` on the reference
  cohort; ``z = (x - prediction) / sd(residuals)``.

SDs are sample SDs (``ddof = 1``), so the Z-scores of the reference cohort have mean 0 and SD 1
(within each sex for ``sex``). Sex is coded ``"female"`` / ``"male"``; age is in years and height
in cm (columns ``age``, ``sex``, ``height_cm``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp.errors import ConfigError, DataError, InputFileError

__all__ = ["METHODS", "SEXES", "ZScoreModel", "fit_zscores"]

METHODS = ("cohort", "sex", "age_sex")
SEXES = ("female", "male")
_FORMAT = "myocomp.zscores/1"


def _numeric(data: pd.DataFrame, column: str) -> np.ndarray:
    if column not in data.columns:
        raise DataError(f"column {column!r} is not in the data")
    values = pd.to_numeric(data[column], errors="coerce")
    bad = values.isna() & data[column].notna()
    if bad.any():
        example = data.loc[bad, column].iloc[0]
        raise DataError(f"column {column!r} is not numeric (e.g. {example!r})")
    return values.to_numpy(dtype=float)


def _sex(data: pd.DataFrame) -> np.ndarray:
    """Sex as an object array of "female"/"male" (None where missing)."""
    if "sex" not in data.columns:
        raise DataError("column 'sex' is not in the data")
    col = data["sex"]
    missing = col.isna().to_numpy()
    norm = col.astype("string").str.strip().str.lower()
    unknown = ~norm.isin(SEXES).to_numpy() & ~missing
    if unknown.any():
        codes = list(dict.fromkeys(col[unknown].astype(str)))[:5]
        raise DataError(
            f"column 'sex' has unknown codes {', '.join(map(repr, codes))}; "
            "expected 'female' or 'male'"
        )
    out = np.array(norm.astype(object).to_numpy(), dtype=object)
    out[missing] = None
    return out


@dataclass(frozen=True)
class ZScoreModel:
    """A fitted Z-score reference model (see the module docstring).

    ``params`` maps each metric to its reference values: ``{"mean", "sd"}`` (cohort),
    ``{"female": {"mean", "sd"}, "male": {...}}`` (sex), or
    ``{"coef": {"Intercept", "age", "male"[, "height_cm"]}, "sd"}`` (age_sex), plus ``"n"``.
    """

    method: str
    metrics: tuple[str, ...]
    names: tuple[str, ...]
    height: bool
    params: Mapping[str, Any]

    # ---- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        data: pd.DataFrame,
        metrics: Sequence[str] | Mapping[str, str],
        method: str = "cohort",
        height: bool = False,
    ) -> ZScoreModel:
        """Fit the reference model on ``data`` (one row per person).

        ``metrics`` lists metric columns (output ``z_<metric>``) or maps metric column -> output
        column name (e.g. ``{"intermat_volume_ml": "z_intermat"}``). Rows missing a metric or a
        covariate are left out of that metric's fit.
        """
        if method not in METHODS:
            raise ConfigError(f"unknown Z-score method {method!r}; choose one of {METHODS}")
        if height and method != "age_sex":
            raise ConfigError("height adjustment needs method='age_sex'")
        if not isinstance(data, pd.DataFrame):
            raise DataError("data must be a pandas DataFrame")
        if isinstance(metrics, str):
            metrics = [metrics]
        mapping = dict(metrics) if isinstance(metrics, Mapping) else {m: f"z_{m}" for m in metrics}
        if not mapping:
            raise ConfigError("no metrics given for the Z-score model")
        missing = [m for m in mapping if m not in data.columns]
        if missing:
            raise DataError(f"metric column(s) {', '.join(map(repr, missing))} not in the data")
        params = {m: _fit_one(data, m, method, height) for m in mapping}
        return cls(
            method=method,
            metrics=tuple(mapping),
            names=tuple(mapping.values()),
            height=bool(height),
            params=params,
        )

    # ---- applying --------------------------------------------------------------------------
    def zscores(self, data: pd.DataFrame) -> pd.DataFrame:
        """Z-scores only: one column per metric (named as in :attr:`names`), ``data``'s index."""
        if not isinstance(data, pd.DataFrame):
            raise DataError("data must be a pandas DataFrame")
        out = {}
        for metric, name in zip(self.metrics, self.names, strict=True):
            x = _numeric(data, metric)
            out[name] = (x - self._expected(data, metric)) / self._sd(data, metric)
        return pd.DataFrame(out, index=data.index)

    def transform(self, data: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``data`` with the Z-score columns added (replacing existing ones)."""
        z = self.zscores(data)
        out = data.copy()
        for name in z.columns:
            out[name] = z[name]
        return out

    def _expected(self, data: pd.DataFrame, metric: str) -> np.ndarray:
        p = self.params[metric]
        n = len(data)
        if self.method == "cohort":
            return np.full(n, p["mean"])
        sex = _sex(data)
        if self.method == "sex":
            return np.array([p[s]["mean"] if s is not None else np.nan for s in sex], dtype=float)
        coef = p["coef"]
        male = np.array([np.nan if s is None else float(s == "male") for s in sex])
        pred = coef["Intercept"] + coef["age"] * _numeric(data, "age") + coef["male"] * male
        if self.height:
            pred = pred + coef["height_cm"] * _numeric(data, "height_cm")
        return pred

    def _sd(self, data: pd.DataFrame, metric: str) -> np.ndarray | float:
        p = self.params[metric]
        if self.method == "sex":
            return np.array(
                [p[s]["sd"] if s is not None else np.nan for s in _sex(data)], dtype=float
            )
        return p["sd"]

    # ---- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe description (what :meth:`save` writes)."""
        return {
            "format": _FORMAT,
            "method": self.method,
            "height": self.height,
            "metrics": {m: n for m, n in zip(self.metrics, self.names, strict=True)},
            "params": json.loads(json.dumps(self.params)),
            "definition": {
                "cohort": "z = (x - mean) / sd",
                "sex": "z = (x - mean[sex]) / sd[sex]",
                "age_sex": "z = (x - (b0 + b_age*age + b_male*[sex == male]"
                + (" + b_height*height_cm" if self.height else "")
                + ")) / sd(residuals)",
            }[self.method],
            "sd_ddof": 1,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZScoreModel:
        """Rebuild a model from :meth:`to_dict` output."""
        try:
            if d.get("format") != _FORMAT:
                raise DataError(f"not a Z-score model (format {d.get('format')!r})")
            method = d["method"]
            if method not in METHODS:
                raise DataError(f"unknown Z-score method {method!r} in saved model")
            metrics = dict(d["metrics"])
            params = {m: d["params"][m] for m in metrics}
            return cls(
                method=method,
                metrics=tuple(metrics),
                names=tuple(metrics.values()),
                height=bool(d["height"]),
                params=params,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"malformed Z-score model: missing or invalid {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (atomically) and return the path."""
        from myocomp.io import write_text

        return write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False), path)

    @classmethod
    def load(cls, path: str | Path) -> ZScoreModel:
        """Read a model written by :meth:`save`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputFileError("no such Z-score model file", source=path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputFileError(f"not valid JSON: {exc}", source=path) from None
        if not isinstance(d, dict):
            raise InputFileError("not a Z-score model", source=path)
        try:
            return cls.from_dict(d)
        except DataError as exc:
            raise InputFileError(str(exc), source=path) from None


def _mean_sd(x: np.ndarray, what: str) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) < 2:
        raise DataError(f"{what}: need at least 2 non-missing values, got {len(x)}")
    sd = float(np.std(x, ddof=1))
    if not sd > 0:
        raise DataError(f"{what}: all values are equal, the SD is 0")
    return {"mean": float(np.mean(x)), "sd": sd, "n": int(len(x))}


def _fit_one(data: pd.DataFrame, metric: str, method: str, height: bool) -> dict:
    x = _numeric(data, metric)
    if method == "cohort":
        return _mean_sd(x, f"metric {metric!r}")
    sex = _sex(data)
    if method == "sex":
        return {s: _mean_sd(x[sex == s], f"metric {metric!r} among sex == {s!r}") for s in SEXES}
    from statsmodels.regression.linear_model import OLS

    cols = {
        "Intercept": np.ones(len(x)),
        "age": _numeric(data, "age"),
        "male": np.array([np.nan if s is None else float(s == "male") for s in sex]),
    }
    if height:
        cols["height_cm"] = _numeric(data, "height_cm")
    X = pd.DataFrame(cols)
    ok = np.isfinite(x) & np.isfinite(X.to_numpy()).all(axis=1)
    if ok.sum() < X.shape[1] + 2:
        raise DataError(
            f"metric {metric!r}: too few complete rows ({int(ok.sum())}) for the age_sex model"
        )
    if np.linalg.matrix_rank(X.to_numpy()[ok]) < X.shape[1]:
        raise DataError(
            f"metric {metric!r}: age_sex model is not identifiable "
            "(both sexes and varying age are needed)"
        )
    fit = OLS(x[ok], X.to_numpy()[ok]).fit()
    resid_sd = float(np.std(fit.resid, ddof=1))
    if not resid_sd > 0 or not math.isfinite(resid_sd):
        raise DataError(f"metric {metric!r}: residual SD is 0")
    return {
        "coef": {k: float(v) for k, v in zip(X.columns, fit.params, strict=True)},
        "sd": resid_sd,
        "n": int(ok.sum()),
    }


def fit_zscores(
    data: pd.DataFrame,
    metrics: Sequence[str] | Mapping[str, str],
    method: str = "cohort",
    height: bool = False,
) -> ZScoreModel:
    """Fit a :class:`ZScoreModel` (same as ``ZScoreModel.fit``)."""
    return ZScoreModel.fit(data, metrics, method=method, height=height)
