"""Nomograms of fixed-effects logistic models, built the way R's ``rms::nomogram`` builds them.

Every predictor enters the linear predictor (LP, log-odds) additively: a continuous predictor as
``beta * x``, a categorical one through its coded dummy columns. Its *contribution* over its
range (the observed data range, or chosen quantiles) is an interval ``[c_min, c_max]``. The
predictor with the widest interval spans 0-100 points; all others use the same number of points
per LP unit (``scale = 100 / max width``) and each predictor's smallest contribution is 0 points:

    points_j(x)   = (c_j(x) - c_min_j) * scale
    LP(total)     = intercept + sum_j c_min_j + total / scale
    probability   = 1 / (1 + exp(-LP))

so the total points reproduce the model's linear predictor exactly (up to rounding).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from myocomp.errors import ConfigError, DataError
from myocomp.stats.logistic import LogisticResults, fit_logit

__all__ = [
    "Nomogram",
    "PredictorSpec",
    "build_nomogram",
    "fit_logistic",
    "nomogram_from_formula",
]

_FORMAT = "myocomp.nomogram"
_VERSION = 1


def _py(value: Any) -> Any:
    """A JSON-safe Python scalar from a numpy/pandas scalar."""
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class PredictorSpec:
    """How one predictor (one data column) enters the linear predictor.

    ``kind="continuous"``: contribution ``params[terms[0]] * x`` over ``[low, high]`` (data units).
    ``kind="categorical"``: contribution of ``levels[i]`` is ``sum_k contrast[i][k] *
    params[terms[k]]`` (treatment coding: one dummy per non-reference level, reference row of
    zeros). ``ticks`` are the values drawn on the axis and exported (default: pretty values in
    the range, or every level). ``label`` is the display name (default ``name``).
    """

    name: str
    kind: Literal["continuous", "categorical"]
    terms: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    levels: tuple[Any, ...] = ()
    contrast: tuple[tuple[float, ...], ...] = ()
    ticks: tuple[float, ...] | None = None
    label: str | None = None

    @classmethod
    def continuous(
        cls,
        name: str,
        term: str | None = None,
        low: float | None = None,
        high: float | None = None,
        *,
        ticks: Sequence[float] | None = None,
        label: str | None = None,
    ) -> PredictorSpec:
        """A continuous predictor whose coefficient is ``params[term]`` (default ``name``)."""
        return cls(
            name=name,
            kind="continuous",
            terms=(term or name,),
            low=None if low is None else float(low),
            high=None if high is None else float(high),
            ticks=None if ticks is None else tuple(float(t) for t in ticks),
            label=label,
        )

    @classmethod
    def categorical(
        cls,
        name: str,
        levels: Sequence[Any],
        level_terms: Sequence[str | None],
        *,
        label: str | None = None,
    ) -> PredictorSpec:
        """A treatment-coded categorical predictor: ``level_terms[i]`` is the dummy's parameter
        name of ``levels[i]``, ``None`` for the reference level."""
        if len(levels) != len(level_terms):
            raise ConfigError(
                f"predictor {name!r}: {len(levels)} levels but {len(level_terms)} level terms"
            )
        terms = tuple(t for t in level_terms if t is not None)
        contrast = tuple(tuple(1.0 if t == term else 0.0 for term in terms) for t in level_terms)
        return cls(
            name=name,
            kind="categorical",
            terms=terms,
            levels=tuple(_py(v) for v in levels),
            contrast=contrast,
            label=label,
        )

    @property
    def display(self) -> str:
        return self.label or self.name

    def with_range(self, low: float, high: float) -> PredictorSpec:
        """A copy with the continuous range set (data units)."""
        return PredictorSpec(
            self.name,
            self.kind,
            self.terms,
            float(low),
            float(high),
            self.levels,
            self.contrast,
            self.ticks,
            self.label,
        )

    def validate(self) -> None:
        """Raise :class:`ConfigError` when the spec is inconsistent."""
        where = f"nomogram predictor {self.name!r}"
        if self.kind == "continuous":
            if len(self.terms) != 1:
                raise ConfigError(f"{where}: a continuous predictor has exactly one term")
            if self.low is None or self.high is None:
                raise ConfigError(f"{where}: range (low, high) is not set")
            if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
                raise ConfigError(f"{where}: invalid range [{self.low}, {self.high}]")
        elif self.kind == "categorical":
            if not self.levels:
                raise ConfigError(f"{where}: no levels")
            if len(self.contrast) != len(self.levels) or any(
                len(row) != len(self.terms) for row in self.contrast
            ):
                raise ConfigError(f"{where}: contrast must be levels x terms")
            if len({str(v) for v in self.levels}) != len(self.levels):
                raise ConfigError(f"{where}: duplicate levels {self.levels}")
        else:
            raise ConfigError(f"{where}: unknown kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "terms": list(self.terms)}
        if self.kind == "continuous":
            out.update(low=self.low, high=self.high)
        else:
            out.update(
                levels=[_py(v) for v in self.levels],
                contrast=[list(map(float, row)) for row in self.contrast],
            )
        if self.ticks is not None:
            out["ticks"] = list(self.ticks)
        if self.label is not None:
            out["label"] = self.label
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PredictorSpec:
        """Inverse of :meth:`to_dict`."""
        allowed = {"name", "kind", "terms", "low", "high", "levels", "contrast", "ticks", "label"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"nomogram predictor: unknown keys {sorted(unknown)}")
        try:
            spec = cls(
                name=str(d["name"]),
                kind=d["kind"],
                terms=tuple(str(t) for t in d["terms"]),
                low=None if d.get("low") is None else float(d["low"]),
                high=None if d.get("high") is None else float(d["high"]),
                levels=tuple(d.get("levels", ())),
                contrast=tuple(tuple(float(v) for v in row) for row in d.get("contrast", ())),
                ticks=None if d.get("ticks") is None else tuple(float(t) for t in d["ticks"]),
                label=d.get("label"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"nomogram predictor: malformed entry ({exc!r})") from exc
        spec.validate()
        return spec


def _nice_step(span: float, n: int) -> float:
    raw = span / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def nice_ticks(low: float, high: float, n: int = 6) -> np.ndarray:
    """Round values (1, 2, 2.5, 5 x 10^k steps) inside ``[low, high]``, about ``n`` intervals."""
    if not high > low:
        return np.array([low], dtype=float)
    step = _nice_step(high - low, n)
    first = math.ceil(low / step - 1e-9) * step
    ticks = np.arange(first, high + step * 1e-9, step)
    decimals = max(0, -math.floor(math.log10(step)) + 2)
    return np.round(ticks, decimals)


@dataclass(frozen=True)
class _Axis:
    spec: PredictorSpec
    coefs: np.ndarray  # one per term
    c_min: float
    c_max: float

    def contributions(self, values: np.ndarray) -> np.ndarray:
        """LP contribution of each value; categorical ``values`` are level indices."""
        if self.spec.kind == "continuous":
            return self.coefs[0] * values
        per_level = np.asarray(self.spec.contrast, dtype=float) @ self.coefs
        return per_level[values]


class Nomogram:
    """Points nomogram of a fixed-effects logistic model (see module docstring).

    Attributes: ``params`` (the coefficients used, a Series), ``predictors`` (the specs),
    ``intercept``, ``scale`` (points per LP unit), ``max_points`` (per predictor, a Series) and
    ``max_total_points``.
    """

    def __init__(
        self,
        params: pd.Series,
        predictors: Sequence[PredictorSpec],
        *,
        intercept_term: str = "Intercept",
    ) -> None:
        if not predictors:
            raise ConfigError("a nomogram needs at least one predictor")
        params = pd.Series(params, dtype=float)
        if not np.all(np.isfinite(params.to_numpy())):
            raise DataError("nomogram: model coefficients are not all finite")
        names = [p.name for p in predictors]
        if len(set(names)) != len(names):
            raise ConfigError(f"nomogram: duplicate predictor names in {names}")
        used: list[str] = []
        axes: list[_Axis] = []
        for spec in predictors:
            spec.validate()
            missing = [t for t in spec.terms if t not in params.index]
            if missing:
                raise ConfigError(
                    f"nomogram predictor {spec.name!r}: terms {missing} are not model parameters"
                )
            coefs = params[list(spec.terms)].to_numpy(dtype=float)
            if spec.kind == "continuous":
                ends = coefs[0] * np.array([spec.low, spec.high])
            else:
                ends = np.asarray(spec.contrast, dtype=float) @ coefs
            axes.append(_Axis(spec, coefs, float(ends.min()), float(ends.max())))
            used.extend(spec.terms)
        if len(set(used)) != len(used):
            raise ConfigError("nomogram: a model parameter is used by two predictors")
        others = [t for t in params.index if t != intercept_term and t not in used]
        if others:
            raise ConfigError(
                f"nomogram: parameters {others} are not described by any predictor;"
                " the total points would not reproduce the linear predictor"
            )
        widths = np.array([a.c_max - a.c_min for a in axes])
        if not widths.max() > 0:
            raise DataError("nomogram: every predictor has zero effect over its range")
        self.intercept_term = intercept_term
        self.intercept = float(params[intercept_term]) if intercept_term in params.index else 0.0
        keep = [t for t in params.index if t == intercept_term or t in used]
        self.params = params[keep].copy()
        self.predictors: tuple[PredictorSpec, ...] = tuple(predictors)
        self._axes = tuple(axes)
        self.scale = float(100.0 / widths.max())
        self.lp_at_zero = float(self.intercept + sum(a.c_min for a in axes))
        self.max_points = pd.Series(widths * self.scale, index=names, name="max_points")
        self.max_total_points = float(self.max_points.sum())

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_params(
        cls,
        params: pd.Series,
        predictors: Sequence[PredictorSpec],
        *,
        intercept_term: str = "Intercept",
    ) -> Nomogram:
        """Nomogram from a coefficient vector (log-odds scale) and predictor descriptions."""
        return cls(params, predictors, intercept_term=intercept_term)

    def __repr__(self) -> str:
        return (
            f"Nomogram({len(self.predictors)} predictors, {self.scale:.4g} points per LP "
            f"unit, total 0-{self.max_total_points:.1f})"
        )

    # scoring ------------------------------------------------------------------------------
    def _level_index(self, spec: PredictorSpec, values: pd.Series) -> np.ndarray:
        exact = {}
        for i, level in enumerate(spec.levels):
            exact.setdefault(level, i)
        as_text = {str(level): i for i, level in enumerate(spec.levels)}
        out = np.empty(len(values), dtype=int)
        for k, v in enumerate(values.tolist()):
            v = _py(v)
            idx = exact.get(v) if _hashable(v) else None
            if idx is None:
                idx = as_text.get(str(v))
            if idx is None:
                raise DataError(f"value {v!r} is not a level of {spec.levels}", source=spec.name)
            out[k] = idx
        return out

    def _column(self, frame: pd.DataFrame, spec: PredictorSpec) -> np.ndarray | None:
        if spec.name not in frame.columns:
            raise DataError("column missing for the nomogram", source=spec.name)
        col = frame[spec.name]
        if col.isna().any():
            raise DataError(
                f"{int(col.isna().sum())} missing value(s); the nomogram needs every predictor",
                source=spec.name,
            )
        if spec.kind == "categorical":
            return self._level_index(spec, col)
        try:
            return col.to_numpy(dtype=float)
        except (TypeError, ValueError) as exc:
            raise DataError("values are not numeric", source=spec.name) from exc

    def points(self, data: pd.DataFrame | pd.Series | Mapping[str, Any]) -> pd.DataFrame:
        """Points of each predictor and their sum (column ``total_points``), one row per person.

        ``data``: a DataFrame (rows = people), or one person as a Series/dict keyed by
        predictor name. Continuous values outside the axis range get points outside the axis
        (extrapolated linearly), so the total still reproduces the linear predictor.
        """
        if isinstance(data, pd.DataFrame):
            frame = data
        elif isinstance(data, pd.Series):
            frame = data.to_frame().T
        elif isinstance(data, Mapping):
            frame = pd.DataFrame({k: [v] for k, v in data.items()})
        else:
            raise DataError(
                f"nomogram.points: expected a DataFrame, Series or dict, got {type(data).__name__}"
            )
        out = {}
        for axis in self._axes:
            values = self._column(frame, axis.spec)
            out[axis.spec.name] = (axis.contributions(values) - axis.c_min) * self.scale
        result = pd.DataFrame(out, index=frame.index)
        result["total_points"] = result.sum(axis=1)
        return result

    def linear_predictor(self, total_points: float | np.ndarray | pd.Series) -> Any:
        """Linear predictor (log-odds) of a total number of points (scalar, array or Series)."""
        if isinstance(total_points, pd.Series):
            return self.lp_at_zero + total_points.astype(float) / self.scale
        return self.lp_at_zero + np.asarray(total_points, dtype=float) / self.scale

    def probability(self, total_points: float | np.ndarray | pd.Series) -> Any:
        """Predicted probability ``1 / (1 + exp(-LP))`` of a total number of points."""
        lp = self.linear_predictor(total_points)
        return 1.0 / (1.0 + np.exp(-lp))

    def total_points_for_probability(self, p: float | np.ndarray) -> Any:
        """Inverse of :meth:`probability`."""
        p = np.asarray(p, dtype=float)
        return (np.log(p / (1 - p)) - self.lp_at_zero) * self.scale

    def predict(self, data: pd.DataFrame) -> pd.Series:
        """Probability for each row of ``data`` computed through the points."""
        total = self.points(data)["total_points"]
        return pd.Series(self.probability(total.to_numpy()), index=total.index, name="probability")

    # tables -------------------------------------------------------------------------------
    def axis_values(self, spec: PredictorSpec) -> list[Any]:
        """The values shown on a predictor's axis (ticks or levels).

        Continuous axes without explicit ticks get round values over their whole range: about 5
        intervals on short axes (every 1 unit on a Z-score axis over the 1st-99th percentile),
        up to 12 on the longest (one interval per ~8 points).
        """
        if spec.kind == "categorical":
            return list(spec.levels)
        if spec.ticks is not None:
            return list(spec.ticks)
        n = int(np.clip(round(float(self.max_points[spec.name]) / 8.0), 5, 12))
        return [float(t) for t in nice_ticks(spec.low, spec.high, n)]  # type: ignore[arg-type]

    def points_table(self) -> pd.DataFrame:
        """Tidy table (predictor, label, value, points) of every axis tick, for export."""
        rows = []
        for axis in self._axes:
            spec = axis.spec
            values = self.axis_values(spec)
            if spec.kind == "categorical":
                contrib = axis.contributions(np.arange(len(spec.levels)))
            else:
                contrib = axis.contributions(np.asarray(values, dtype=float))
            for v, c in zip(values, contrib, strict=True):
                rows.append(
                    {
                        "predictor": spec.name,
                        "label": spec.display,
                        "value": v,
                        "points": float((c - axis.c_min) * self.scale),
                    }
                )
        return pd.DataFrame(rows, columns=["predictor", "label", "value", "points"])

    def total_points_table(self, step: float | None = None) -> pd.DataFrame:
        """Total points -> linear predictor and probability, at ``step`` intervals (default: 10
        or 20 points) from 0 to the maximum total."""
        if step is None:
            step = _nice_step(self.max_total_points, 10)
        total = np.arange(0.0, self.max_total_points + 1e-9, step)
        return pd.DataFrame(
            {
                "total_points": total,
                "linear_predictor": self.linear_predictor(total),
                "probability": self.probability(total),
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """Same as :meth:`points_table`."""
        return self.points_table()

    def summary(self) -> str:
        """Plain-text points table."""
        lines = [repr(self)]
        for name, group in self.points_table().groupby("predictor", sort=False):
            pairs = ", ".join(
                f"{v}: {p:.1f}" for v, p in zip(group["value"], group["points"], strict=True)
            )
            lines.append(f"  {name}: {pairs}")
        return "\n".join(lines)

    # persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (goes into ``model.json``); derived numbers are included for
        readers in other languages and checked again by :meth:`from_dict`."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "intercept_term": self.intercept_term,
            "params": {str(k): float(v) for k, v in self.params.items()},
            "predictors": [p.to_dict() for p in self.predictors],
            "points_per_lp_unit": self.scale,
            "lp_at_zero_points": self.lp_at_zero,
            "max_total_points": self.max_total_points,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Nomogram:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on malformed input."""
        if d.get("format") != _FORMAT or d.get("version") != _VERSION:
            raise ConfigError(f"not a {_FORMAT} version {_VERSION} description")
        try:
            params = pd.Series({str(k): float(v) for k, v in d["params"].items()}, dtype=float)
            preds = [PredictorSpec.from_dict(p) for p in d["predictors"]]
            nomo = cls(params, preds, intercept_term=str(d["intercept_term"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"malformed nomogram description ({exc!r})") from exc
        for key, value in (
            ("points_per_lp_unit", nomo.scale),
            ("lp_at_zero_points", nomo.lp_at_zero),
        ):
            if key in d and not math.isclose(float(d[key]), value, rel_tol=1e-9, abs_tol=1e-12):
                raise ConfigError(
                    f"nomogram description: {key}={d[key]} disagrees with the parameters ({value})"
                )
        return nomo


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


# model fitting -----------------------------------------------------------------------------
def build_nomogram(
    params: pd.Series,
    data: pd.DataFrame,
    predictors: Sequence[PredictorSpec],
    *,
    quantiles: tuple[float, float] = (0.0, 1.0),
    intercept_term: str = "Intercept",
) -> Nomogram:
    """Nomogram whose continuous ranges not given in ``predictors`` come from ``data``: the
    ``quantiles`` of the column (default min and max, as rms does with the data range)."""
    q_lo, q_hi = quantiles
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise ConfigError(f"nomogram quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    specs = []
    for spec in predictors:
        if spec.kind == "continuous" and (spec.low is None or spec.high is None):
            if spec.name not in data.columns:
                raise DataError("column missing for the nomogram range", source=spec.name)
            col = pd.to_numeric(data[spec.name], errors="coerce").dropna()
            if col.empty:
                raise DataError("no numeric values for the nomogram range", source=spec.name)
            spec = spec.with_range(float(col.quantile(q_lo)), float(col.quantile(q_hi)))
        specs.append(spec)
    return Nomogram(params, specs, intercept_term=intercept_term)


def _column_of(code: str) -> tuple[str, bool]:
    """Data column of a patsy factor code and whether it is wrapped in ``C(...)``.

    Accepts ``x``, ``Q("x")``, ``C(x, ...)``, ``C(Q("x"), ...)``; anything else (transforms,
    arithmetic) raises :class:`DataError`.
    """
    try:
        node = ast.parse(code, mode="eval").body
    except SyntaxError as exc:
        raise DataError(f"cannot read formula term {code!r}") from exc

    def plain(n: ast.AST) -> str | None:
        if isinstance(n, ast.Name):
            return n.id
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name)
            and n.func.id == "Q"
            and len(n.args) == 1
            and isinstance(n.args[0], ast.Constant)
            and isinstance(n.args[0].value, str)
        ):
            return n.args[0].value
        return None

    col = plain(node)
    if col is not None:
        return col, False
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "C"
        and node.args
    ):
        col = plain(node.args[0])
        if col is not None:
            return col, True
    raise DataError(
        f"formula term {code!r}: a nomogram needs main effects of plain columns "
        "(x, C(x), Q('x')); no transforms"
    )


def _specs_from_design(
    design_info: Any,
    frame: pd.DataFrame,
    quantiles: tuple[float, float],
    labels: Mapping[str, str] | None,
) -> list[PredictorSpec]:
    labels = labels or {}
    specs: list[PredictorSpec] = []
    for term, subterms in design_info.term_codings.items():
        if not term.factors:
            continue  # intercept
        if len(term.factors) != 1 or len(subterms) != 1:
            raise DataError(
                f"formula term {term.name()!r}: interactions are not supported by the nomogram"
            )
        factor = term.factors[0]
        info = design_info.factor_infos[factor]
        column, _ = _column_of(factor.code)
        cols = tuple(design_info.column_names[design_info.term_slices[term]])
        label = labels.get(column)
        if info.type == "categorical":
            matrix = subterms[0].contrast_matrices[factor].matrix
            specs.append(
                PredictorSpec(
                    name=column,
                    kind="categorical",
                    terms=cols,
                    levels=tuple(_py(c) for c in info.categories),
                    contrast=tuple(tuple(float(v) for v in row) for row in np.asarray(matrix)),
                    label=label,
                )
            )
        else:
            if info.num_columns != 1:
                raise DataError(f"formula term {term.name()!r} has {info.num_columns} columns")
            x = pd.to_numeric(frame[column], errors="raise").astype(float)
            ticks = (0.0, 1.0) if set(np.unique(x)) <= {0.0, 1.0} else None
            lo, hi = (float(x.quantile(q)) for q in quantiles)
            specs.append(
                PredictorSpec.continuous(column, cols[0], lo, hi, ticks=ticks, label=label)
            )
    return specs


def fit_logistic(
    formula: str,
    data: pd.DataFrame,
    *,
    quantiles: tuple[float, float] = (0.0, 1.0),
    labels: Mapping[str, str] | None = None,
) -> tuple[LogisticResults, list[PredictorSpec]]:
    """Fit a fixed-effects logistic model by maximum likelihood (:func:`~myocomp.stats.logistic.fit_logit`)
    on the complete cases of the formula's variables.

    Returns ``(result, specs)``: the :class:`~myocomp.stats.logistic.LogisticResults`
    (``result.predict(newdata)`` applies the formula) and one :class:`PredictorSpec` per
    formula term, with continuous ranges at the ``quantiles`` of the complete cases (default
    min/max). The outcome must be coded 0/1. ``labels`` maps column names to display names.
    """
    if not 0.0 <= quantiles[0] < quantiles[1] <= 1.0:
        raise ConfigError(f"nomogram quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    result = fit_logit(formula, data)
    complete = data.loc[result.row_labels]
    return result, _specs_from_design(result.design_info, complete, quantiles, labels)


def nomogram_from_formula(
    formula: str,
    data: pd.DataFrame,
    *,
    quantiles: tuple[float, float] = (0.0, 1.0),
    labels: Mapping[str, str] | None = None,
) -> tuple[Nomogram, LogisticResults]:
    """Fit ``formula`` (see :func:`fit_logistic`) and build its nomogram in one call.

    Returns ``(nomogram, result)``.
    """
    result, specs = fit_logistic(formula, data, quantiles=quantiles, labels=labels)
    return Nomogram(result.params, specs), result
