"""The CBP risk calculator: one self-contained HTML page made from a study's ``model.json``.

The page (no network, no external file, works from ``file://``) has a form with the inputs of
``myocomp predict``, and its JavaScript computes what :func:`myocomp.study.predict.predict_person`
computes: Z-scores from the saved reference, nomogram points, total points, probability, and
its 95 % CI by the delta method. Query parameters named like predict's options (``age``,
``sex``, ``bmi``, ``height_cm``, ``lean_volume_ml``, ``intermat_ml``, ``diabetes``, ...;
booleans 1/0) fill the form and compute at once. Everything the script needs is embedded as
JSON; the nomogram is drawn from the same axis layout as ``figures/nomogram.svg``.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp.errors import ConfigError
from myocomp.io import write_text
from myocomp.stats.nomogram import Nomogram
from myocomp.study.nomogram_figure import (
    NomogramAxis,
    layout_rows,
    nomogram_axes,
    text_width_pt,
)
from myocomp.study.phenotypes import SEX_CODES
from myocomp.study.predict import INPUT_RANGES, Z_95, load_model

__all__ = [
    "PREDICTOR_INPUTS",
    "MAX_BYTES",
    "covariance_dict",
    "heatmap_dict",
    "calculator_data",
    "nomogram_svg",
    "render_calculator",
    "write_calculator",
]

#: the page must stay small enough to attach to an e-mail or a paper
MAX_BYTES = 300_000
#: nomogram predictors the page can compute from its form (as predict_person does)
PREDICTOR_INPUTS = ("z_intermat", "z_lmm", "age", "female", "diabetes", "dyslipidemia",
                    "osteoporosis", "osteoarthritis", "pa_category")
_BOOLEANS = (("diabetes", "Diabetes"), ("dyslipidemia", "Dyslipidaemia"),
             ("osteoporosis", "Osteoporosis"), ("osteoarthritis", "Osteoarthritis"))
_HEATMAP_COLORS = ("#ffffcc", "#ffeda0", "#fed976", "#feb24c", "#fd8c3c", "#fc4d2a",
                   "#e2191c", "#bb0026", "#800026")  # matplotlib's YlOrRd, as in the report
# nomogram SVG geometry (px): names left of X0, PX_PER_POINT px per nomogram point
_X0, _PX_PER_POINT, _ROW_PX, _FONT_PX, _SVG_W = 200.0, 8.6, 46.0, 13.0, 1090.0


def covariance_dict(result: Any) -> dict[str, Any] | None:
    """The fixed-effects covariance of a fitted model (statsmodels-like ``cov_params()`` or a
    ``cov`` attribute; an unlabelled matrix is in the order of ``result.params``) as
    ``{"terms": [...], "matrix": [[...]]}``; None when absent."""
    cov = result.cov_params() if hasattr(result, "cov_params") else getattr(result, "cov", None)
    if cov is None:
        return None
    if not isinstance(cov, pd.DataFrame):
        terms = [str(t) for t in result.params.index]
        cov = pd.DataFrame(np.asarray(cov, dtype=float), index=terms, columns=terms)
    return {"terms": [str(t) for t in cov.index],
            "matrix": [[float(v) for v in row] for row in cov.to_numpy()]}


def heatmap_dict(predicted: pd.DataFrame) -> dict[str, Any]:
    """The interaction heatmap (table ``interaction_predicted``: z_intermat, z_lmm,
    probability) as JSON: grid values and ``probability[i_lmm][i_intermat]`` (None where not
    estimable), rounded to 1e-6."""
    zi = np.sort(predicted["z_intermat"].unique())
    zl = np.sort(predicted["z_lmm"].unique())
    grid = (predicted.pivot(index="z_lmm", columns="z_intermat", values="probability")
            .reindex(index=zl, columns=zi).to_numpy(dtype=float))
    rows = [[round(float(v), 6) if math.isfinite(v) else None for v in row] for row in grid]
    return {"z_intermat": [float(v) for v in zi], "z_lmm": [float(v) for v in zl],
            "probability": rows,
            "model": "adjusted mixed model with the InterMAT × LMM product term, at the "
                     "reference covariates, site effect 0"}


def _fields(model: dict[str, Any]) -> list[dict[str, Any]]:
    metric = model.get("intermat_metric", "intermat_volume_ml")
    imat = "intermat_ml" if metric == "intermat_volume_ml" else "intermat_fraction"
    needs_height = bool(model["zscores"].get("height"))
    met_lo, met_hi = model.get("pa_breaks_met_min_week", (500.0, 5000.0))
    spec = [
        ("age", "Age", True, "at the examination"),
        ("bmi", "BMI", True, "body-mass index"),
        ("height_cm", "Height", needs_height,
         "needed by this model's Z reference" if needs_height
         else "optional: this model's Z reference does not use it"),
        ("lean_volume_ml", "Lean back-muscle volume", True,
         "lean_volume_ml of the back group, as quantify reports it"),
        (imat, "InterMAT volume" if imat == "intermat_ml" else "InterMAT fraction", True,
         f"{metric} of the back group, as quantify reports it"),
        ("met_min_week", "Physical activity", False,
         f"empty: taken as moderate (the reference); low < {met_lo:g}, high > {met_hi:g}"),
    ]
    fields: list[dict[str, Any]] = []
    for name, label, required, hint in spec:
        lo, hi, unit = INPUT_RANGES[name]
        fields.append({"name": name, "label": label, "kind": "number", "required": required,
                       "min": lo, "max": hi, "unit": unit, "hint": hint})
    fields.insert(1, {"name": "sex", "label": "Sex", "kind": "sex", "required": True,
                      "hint": "female or male"})
    fields += [{"name": n, "label": lab, "kind": "bool", "required": False, "hint": ""}
               for n, lab in _BOOLEANS]
    return fields


def _check_model(model: dict[str, Any], nomo: Nomogram) -> None:
    unknown = [p.name for p in nomo.predictors if p.name not in PREDICTOR_INPUTS]
    if unknown:
        raise ConfigError(f"model.json: nomogram predictor(s) {unknown} are not inputs the "
                          "calculator knows")
    z = model["zscores"]
    if set(z.get("metrics", {}).values()) != {"z_intermat", "z_lmm"}:
        raise ConfigError("model.json: the Z reference must define z_intermat and z_lmm")
    if z.get("method") not in ("cohort", "sex", "age_sex"):
        raise ConfigError(f"model.json: unknown Z-score method {z.get('method')!r}")


def _provenance(model: dict[str, Any]) -> dict[str, Any]:
    from myocomp.study.report import METRIC_DEFINITIONS

    nm = model["nomogram_model"]
    z = model["zscores"]
    metric = model.get("intermat_metric", "intermat_volume_ml")
    keep = ("lean_volume_ml", metric, "lmm", "z_intermat, z_lmm")
    return {
        "n": nm.get("n"), "n_dropped": nm.get("n_dropped"), "formula": nm.get("formula"),
        "auc": nm.get("auc"), "created_utc": model.get("created_utc"),
        "myocomp_version": model.get("myocomp_version"), "intermat_metric": metric,
        "lmm_definition": model.get("lmm_definition"),
        "zscore_method": z.get("method"), "zscore_definition": z.get("definition"),
        "zscore_height": bool(z.get("height")),
        "zscore_n": {m: p.get("n") for m, p in z.get("params", {}).items()
                     if isinstance(p, dict)},
        "pa_breaks": list(model.get("pa_breaks_met_min_week", (500.0, 5000.0))),
        "group": model.get("config", {}).get("options", {}).get("group", "back"),
        "metric_definitions": [list(r) for r in METRIC_DEFINITIONS if r[0] in keep],
        "reference_covariates": model.get("reference_covariates"),
    }


def calculator_data(model: dict[str, Any]) -> dict[str, Any]:
    """Everything the page's script needs, JSON-safe: the form fields (with the ranges of
    :data:`~myocomp.study.predict.INPUT_RANGES`), Z reference, nomogram, covariance, heatmap,
    sex codes, PA breaks, the nomogram drawing's geometry and the provenance."""
    nomo = Nomogram.from_dict(model["nomogram"])
    _check_model(model, nomo)
    metric = model.get("intermat_metric", "intermat_volume_ml")
    return {
        "fields": _fields(model),
        "intermat_metric": metric,
        "intermat_field": "intermat_ml" if metric == "intermat_volume_ml" else "intermat_fraction",
        "zscores": model["zscores"],
        "nomogram": model["nomogram"],
        "cov": model["nomogram_model"].get("cov_params"),
        "z_95": Z_95,
        "pa_breaks": list(model.get("pa_breaks_met_min_week", (500.0, 5000.0))),
        "sex_codes": dict(SEX_CODES),
        "heatmap": model.get("interaction_heatmap"),
        "heatmap_colors": list(_HEATMAP_COLORS),
        "drawing": {"x0": _X0, "px_per_point": _PX_PER_POINT,
                    "max_total_points": nomo.max_total_points},
        "provenance": _provenance(model),
    }


def _svg_text(x: float, y: float, text: str, anchor: str = "middle", cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{c}>'
            f"{html.escape(text)}</text>")


def _svg_axis(axis: NomogramAxis, places: list[Any], y: float) -> list[str]:
    px = lambda v: _X0 + v * _PX_PER_POINT  # noqa: E731
    out = [_svg_text(_X0 - 24, y + 4.5, axis.label, "end", "name")]
    if not axis.ticks:
        return out
    lo, hi = axis.span
    out.append(f'<line x1="{px(lo):.1f}" y1="{y:.1f}" x2="{px(hi):.1f}" y2="{y:.1f}"/>')
    out += [f'<line x1="{px(m):.1f}" y1="{y:.1f}" x2="{px(m):.1f}" y2="{y - 4:.1f}"/>'
            for m in axis.minor]
    anchors = {"center": "middle", "right": "end", "left": "start"}
    for tick, place in zip(axis.ticks, places, strict=True):
        out.append(f'<line x1="{px(tick.x):.1f}" y1="{y:.1f}" x2="{px(tick.x):.1f}" '
                   f'y2="{y - 7:.1f}"/>')
        ty = y - 11 if place.row == 0 else y + 17 + 15 * (place.row - 1)
        out.append(_svg_text(px(tick.x), ty, tick.text, anchors[place.align]))
    return out


def nomogram_svg(nomo: Nomogram, outcome_label: str = "Probability of CBP") -> str:
    """The nomogram as inline SVG with the figure's ticks and label layout
    (:func:`~myocomp.study.nomogram_figure.nomogram_axes`), plus hidden markers
    (``<circle id="nm-<axis name>">``) that the page's script moves to the person's values."""
    axes = nomogram_axes(nomo, outcome_label)
    units_per_px = 1.0 / _PX_PER_POINT
    rows = layout_rows(axes, lambda s: text_width_pt(s, _FONT_PX) * 1.08 * units_per_px,
                       gap=6.0 * units_per_px)
    parts: list[str] = []
    y = 30.0
    marks = {a.name for a in axes} - {"points", "linear_predictor"}
    for axis, places in zip(axes, rows, strict=True):
        parts += _svg_axis(axis, places, y)
        if axis.name in marks:
            parts.append(f'<circle id="nm-{html.escape(axis.name)}" class="marker" cx="0" '
                         f'cy="{y:.1f}" r="6" visibility="hidden"/>')
        below = max((p.row for p in places), default=0)
        y += _ROW_PX + (8.0 if below else 0.0) + 15.0 * max(below - 1, 0)
    parts.insert(0, '<line id="nm-guide" class="guide" x1="0" x2="0" y1="0" y2="0" '
                    'visibility="hidden"/>')
    height = y - _ROW_PX + 30.0
    return (f'<svg id="nomogram" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_SVG_W:.0f} '
            f'{height:.0f}" width="{_SVG_W:.0f}" height="{height:.0f}" role="img" '
            f'aria-label="nomogram">{"".join(parts)}</svg>')


def _asset(name: str) -> str:
    return resources.files("myocomp.study").joinpath("templates", name).read_text("utf-8")


def render_calculator(model: dict[str, Any]) -> str:
    """The calculator page as one HTML string (see the module docstring)."""
    data = calculator_data(model)
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    svg = nomogram_svg(Nomogram.from_dict(model["nomogram"]))
    page = _asset("calculator.html")
    return (page.replace("/*CSS*/", _asset("calculator.css"))
            .replace("<!--NOMOGRAM-->", svg)
            .replace("/*DATA*/", payload)
            .replace("/*JS*/", _asset("calculator.js")))


def write_calculator(model: dict[str, Any] | str | Path, path: str | Path) -> Path:
    """Write the calculator page for ``model`` (a ``model.json`` path or its contents)
    atomically to ``path``; refuses to overwrite the model file itself."""
    if not isinstance(model, dict):
        if Path(model).resolve() == Path(path).resolve():
            raise ConfigError("the output would overwrite the model file", source=path)
        model = load_model(model)
    text = render_calculator(model)
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise ConfigError(f"calculator page would be {size:,} bytes (> {MAX_BYTES:,})",
                          source=path)
    return write_text(text, path)
