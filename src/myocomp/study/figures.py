"""Figures of the CBP study (matplotlib, Agg backend), each written atomically to a PNG.

Every function takes the tidy tables of :mod:`myocomp.study.analyses` and a path, and returns
the path written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from myocomp.errors import DataError
from myocomp.stats.validation import CalibrationFit, delong_auc, roc_curve

__all__ = [
    "pyplot",
    "plot_calibration",
    "plot_roc",
    "plot_pa",
    "plot_forest",
    "plot_strata",
    "plot_interaction",
]

_BLUE = "#1f4e79"
_RED = "#b2182b"
_GREY = "#6b6b6b"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend with the study's style (the one matplotlib
    set-up of the presentation layer)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "axes.spines.top": False,
        "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 150,
        "font.family": "DejaVu Sans",
    })
    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 150) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    from myocomp import io

    try:
        return io.save_figure(fig, Path(path), dpi=dpi)
    finally:
        plt.close(fig)


def _p_text(p: float) -> str:
    if not np.isfinite(p):
        return "p = –"
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.3f}"


def plot_pa(prevalence: pd.DataFrame, spline: pd.DataFrame, path: str | os.PathLike[str],
            breaks: tuple[float, float] = (500.0, 5000.0)) -> Path:
    """Two panels: CBP prevalence by PA category (Wilson 95 % CI, chi-square p) and the
    spline-smoothed probability of CBP against MET-min/week (log axis, 95 % CI band)."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.0, 3.6),
                                   gridspec_kw={"width_ratios": [1, 1.5]})
    x = np.arange(len(prevalence))
    pct = 100 * prevalence["prevalence"].to_numpy()
    err = 100 * np.vstack([prevalence["prevalence"] - prevalence["lower"],
                           prevalence["upper"] - prevalence["prevalence"]])
    ax1.bar(x, pct, color=_BLUE, alpha=0.85, width=0.6)
    ax1.errorbar(x, pct, yerr=err, fmt="none", ecolor="black", capsize=4, lw=1)
    for xi, (p, n) in enumerate(zip(pct, prevalence["n"], strict=True)):
        ax1.text(xi, 1.0, f"n = {n:,}", ha="center", va="bottom", color="white", fontsize=8)
        ax1.text(xi, p + err[1, xi] + 0.4, f"{p:.1f} %", ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(x, [f"{c}\n({r})" for c, r in zip(prevalence["pa_category"],
                                                     prevalence["met_range"], strict=True)])
    ax1.set_ylabel("CBP prevalence (%)")
    ax1.set_ylim(0, max(pct + err[1]) * 1.25)
    ax1.set_title(f"a  CBP by physical activity (χ² {_p_text(float(prevalence['p'].iloc[0]))})",
                  loc="left")
    ax1.set_xlabel("MET-min/week")

    ax2.fill_between(spline["met_min_week"], 100 * spline["lower"], 100 * spline["upper"],
                     color=_BLUE, alpha=0.2, lw=0, label="95 % CI")
    ax2.plot(spline["met_min_week"], 100 * spline["probability"], color=_BLUE, lw=1.8,
             label="natural cubic spline")
    for b in breaks:
        ax2.axvline(b, color=_GREY, ls="--", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("Physical activity (MET-min/week, log scale)")
    ax2.set_ylabel("Predicted CBP probability (%)")
    ax2.set_title(f"b  Spline (nonlinearity {_p_text(float(spline['p_nonlinear'].iloc[0]))})",
                  loc="left")
    ax2.legend(frameon=False, loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_forest(table: pd.DataFrame, path: str | os.PathLike[str], *, row_label: str,
                title: str, terms: tuple[str, ...] = ("z_intermat", "z_lmm")) -> Path:
    """Forest plot of ORs (log axis) of ``terms``: one panel per term, one row per value of
    column ``row_label`` (e.g. model description or stratum), with OR [95 % CI] printed."""
    plt = pyplot()
    rows = table[table["term"].isin(terms)]
    labels = list(dict.fromkeys(rows[row_label]))
    height = max(2.4, 0.9 + 0.32 * len(labels))
    fig, axes = plt.subplots(1, len(terms), figsize=(4.6 * len(terms), height), sharey=True,
                             squeeze=False)
    finite = rows[["lower", "upper"]].to_numpy(float)
    finite = finite[np.isfinite(finite)]
    lo = min(0.5, float(finite.min()) * 0.9) if finite.size else 0.5
    hi = max(2.0, float(finite.max()) * 1.1) if finite.size else 2.0
    for ax, term in zip(axes[0], terms, strict=True):
        sub = rows[rows["term"] == term].set_index(row_label).reindex(labels)
        y = np.arange(len(labels))[::-1]
        colour = _RED if term == "z_intermat" else _BLUE
        ok = sub["OR"].notna().to_numpy()
        ax.errorbar(sub["OR"][ok], y[ok],
                    xerr=[(sub["OR"] - sub["lower"])[ok], (sub["upper"] - sub["OR"])[ok]],
                    fmt="s", color=colour, ms=5, capsize=2.5, lw=1.2)
        ax.axvline(1.0, color=_GREY, lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ticks = [t for t in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        for yi, (_, r) in zip(y, sub.iterrows(), strict=True):
            if np.isfinite(r["OR"]):
                text = f"{r['OR']:.2f} [{r['lower']:.2f}–{r['upper']:.2f}]"
            elif isinstance(r["note"], str) and r["note"]:
                text = "not estimable"
            else:
                text = "–"  # the term is not in this model
            ax.text(1.02, yi, text, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
        unit = sub["unit"].dropna().iloc[0] if sub["unit"].notna().any() else ""
        name = sub["label"].dropna().iloc[0] if sub["label"].notna().any() else term
        ax.set_title(f"{name}: OR {unit}", fontsize=9)
        ax.set_xlabel("Odds ratio (95 % CI, log scale)")
    axes[0][0].set_yticks(np.arange(len(labels))[::-1], labels)
    axes[0][0].set_ylim(-0.7, len(labels) - 0.3)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout(w_pad=6.0)
    return save_figure(fig, path)


def plot_strata(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Forest plot of the marker ORs within strata (rows "stratum: level (n)")."""
    t = table.copy()
    names = {"osteoarthritis": "Osteoarthritis", "osteoporosis": "Osteoporosis",
             "sex": "Sex", "pa_category": "Physical activity"}
    t["row"] = [f"{names.get(s, s)}: {lv} (n = {n:,})" for s, lv, n
                in zip(t["stratum"], t["level"], t["n"], strict=True)]
    return plot_forest(t, path, row_label="row",
                       title="Adjusted associations with CBP within strata")


def plot_interaction(predicted: pd.DataFrame, observed: pd.DataFrame,
                     path: str | os.PathLike[str], reference: dict[str, Any] | None = None
                     ) -> Path:
    """Heatmap of the predicted CBP probability over (Z InterMAT, Z LMM) in [-2, 2]² from the
    interaction model (reference covariates, site effect 0), beside the observed prevalence in
    the 5 × 5 cells of the Z quintiles."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.2))
    zi = np.sort(predicted["z_intermat"].unique())
    zl = np.sort(predicted["z_lmm"].unique())
    grid = (predicted.pivot(index="z_lmm", columns="z_intermat", values="probability")
            .reindex(index=zl, columns=zi).to_numpy())
    im = ax1.imshow(100 * grid, origin="lower", extent=(zi[0], zi[-1], zl[0], zl[-1]),
                    aspect="auto", cmap="YlOrRd")
    if np.isfinite(grid).all():
        cs = ax1.contour(zi, zl, 100 * grid, colors="black", linewidths=0.6, levels=6)
        ax1.clabel(cs, fmt="%.0f %%", fontsize=7)
    ax1.set_xlabel("InterMAT Z-score")
    ax1.set_ylabel("LMM Z-score")
    ref = ""
    if reference:
        ref = f"\nage {reference['age']:.0f} y, male, no comorbidity, moderate PA, site effect 0"
    ax1.set_title("a  Predicted CBP probability (interaction model)" + ref, loc="left",
                  fontsize=9)
    fig.colorbar(im, ax=ax1, label="Predicted probability (%)", fraction=0.046, pad=0.04)

    obs = observed.pivot(index="lmm_quintile", columns="intermat_quintile", values="prevalence")
    obs = obs.reindex(index=range(1, 6), columns=range(1, 6))
    n = observed.pivot(index="lmm_quintile", columns="intermat_quintile", values="n")
    n = n.reindex(index=range(1, 6), columns=range(1, 6))
    im2 = ax2.imshow(100 * obs.to_numpy(), origin="lower", cmap="YlOrRd", aspect="auto",
                     extent=(0.5, 5.5, 0.5, 5.5))
    vals = 100 * obs.to_numpy()
    mid = np.nanmean(vals) if np.isfinite(vals).any() else 0
    for i in range(5):
        for j in range(5):
            v = vals[i, j]
            if np.isfinite(v):
                ax2.text(j + 1, i + 1, f"{v:.0f} %\n(n={int(n.iloc[i, j]):,})", ha="center",
                         va="center", fontsize=7, color="white" if v > mid * 1.25 else "black")
    ax2.set_xticks(range(1, 6), ["Q1", "Q2", "Q3", "Q4", "Q5"])
    ax2.set_yticks(range(1, 6), ["Q1", "Q2", "Q3", "Q4", "Q5"])
    ax2.set_xlabel("InterMAT Z-score quintile")
    ax2.set_ylabel("LMM Z-score quintile")
    ax2.set_title("b  Observed CBP prevalence by Z-score quintiles", loc="left", fontsize=9)
    fig.colorbar(im2, ax=ax2, label="Observed prevalence (%)", fraction=0.046, pad=0.04)
    for ax in (ax1, ax2):
        ax.spines["top"].set_visible(True)
        ax.spines["right"].set_visible(True)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_calibration(
    curve: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    fit: CalibrationFit | None = None,
    dpi: int = 150,
) -> Path:
    """Calibration plot of a :func:`myocomp.stats.validation.calibration_curve` table
    (observed with Wilson intervals against mean predicted, and the identity line); written
    atomically (format from the suffix). Returns the path."""
    missing = {"mean_predicted", "observed", "lower", "upper"} - set(curve.columns)
    if missing:
        raise DataError(f"calibration curve table lacks columns {sorted(missing)}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    try:
        top = float(np.nanmax(curve[["mean_predicted", "upper"]].to_numpy()))
        lim = min(1.0, max(0.05, top * 1.08))
        ax.plot([0, lim], [0, lim], ls="--", color="grey", lw=1, label="ideal")
        ax.errorbar(
            curve["mean_predicted"],
            curve["observed"],
            yerr=[curve["observed"] - curve["lower"], curve["upper"] - curve["observed"]],
            fmt="o-",
            color="tab:blue",
            ms=4,
            capsize=2,
            lw=1.2,
            label="observed (95% Wilson CI)",
        )
        if fit is not None:
            ax.text(
                0.04,
                0.96,
                f"slope {fit.slope:.2f}\nintercept {fit.intercept:.2f}",
                transform=ax.transAxes,
                va="top",
                fontsize=9,
            )
        return _square_axes(fig, ax, (lim, lim), ("Predicted probability", "Observed proportion"),
                            8, title, path, dpi)
    finally:
        plt.close(fig)


def plot_roc(
    y: Any,
    p: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """ROC curve of the probabilities ``p`` of the 0/1 outcome ``y`` with the AUC and its
    DeLong CI in the legend; written atomically. Returns the path."""
    curve = roc_curve(y, p)
    res = delong_auc(y, p)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    try:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.plot(
            curve["fpr"],
            curve["tpr"],
            color="tab:blue",
            lw=1.5,
            label=f"AUC {res.auc:.3f} (95% CI {res.lower:.3f}-{res.upper:.3f})",
        )
        return _square_axes(fig, ax, (1.0, 1.005), ("1 - specificity (false-positive rate)",
                                                    "Sensitivity (true-positive rate)"),
                            9, title, path, dpi)
    finally:
        plt.close(fig)


def _square_axes(fig: Any, ax: Any, top: tuple[float, float], labels: tuple[str, str],
                 legend_size: float, title: str | None, path: str | os.PathLike[str],
                 dpi: int) -> Path:
    """Equal-aspect axes from 0 to ``top``, labels, legend at lower right, title; saved."""
    ax.set_xlim(0, top[0])
    ax.set_ylim(0, top[1])
    ax.set_aspect("equal")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(loc="lower right", fontsize=legend_size, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
