"""A NAKO-like synthetic cohort with known true coefficients.

The generative model (one row per participant; every random draw comes from one
``numpy.random.Generator`` seeded by ``seed``, so the same ``(n, seed, params)`` give the same
table):

1. **Site** ``s`` in ``site_1 .. site_5`` with probabilities ``site_weights``; a site random
   intercept ``u_s ~ N(0, site_sd)`` on the log-odds of CBP.
2. **Sex**: female with probability 0.443. **Age** (years, integer): ``N(49, 12.3)`` redrawn until
   inside [20, 72] (NAKO: median 49, IQR 41-57).
3. **Anthropometry**: height (cm) ``N(179, 7)`` in men, ``N(166, 6.5)`` in women, minus 0.08 cm
   per year of age over 40; BMI (kg/m²) log-normal around 27.4 (men) / 26.3 (women), rising
   0.05 per year, clipped to [16, 60].
4. **Physical activity** (MET-min/week): log-normal, ``log MET ~ N(6.664, 1.702)``, so that
   39.6 % are < 500 and 13.8 % are > 5,000 (NAKO: 10,892 / 12,826 / 3,800), truncated at
   30,000 as questionnaire scoring rules do.
5. **Comorbidities** (0/1), logistic in age, sex and BMI: diabetes (≈ 7 %), dyslipidaemia
   (≈ 20 %), osteoporosis (≈ 4 %, mostly older women), osteoarthritis (≈ 20 %).
6. **Back-muscle metrics** (both autochthon muscles, ``group = back``, no band):
   ``volume_ml`` log-normal, larger in men, growing with height² and BMI, shrinking 0.6 %/year;
   ``ff_mean`` logit-normal, higher in women, with age, BMI and lower physical activity;
   ``intermat_fraction`` (share of voxels with FF ≥ 0.5) logit-normal, rising steeply with
   ``ff_mean``; ``intermat_volume_ml = volume_ml × intermat_fraction``;
   ``lean_volume_ml = volume_ml × (1 - intermat_fraction) × (1 - ff of the lean voxels)``;
   ``lmm = lean_volume_ml / bmi`` (mL·m²/kg).
7. **Z-scores** by the ``cohort`` method: ``z_intermat``, ``z_lmm`` = (value - cohort mean) /
   cohort SD (ddof = 1) of ``intermat_volume_ml`` and ``lmm``, exactly as the study computes them.
8. **CBP** ~ Bernoulli(p) with the true conditional model (the study's main model plus a small
   InterMAT × LMM synergy term)::

       logit p = b0 + u_s + b_i z_intermat + b_l z_lmm + g z_intermat z_lmm + b_age age
                 + b_f female + b_dm diabetes + b_dl dyslipidemia + b_op osteoporosis
                 + b_oa osteoarthritis + b_low [MET < 500] + b_high [MET > 5000]

   with ``2 b_l = log 0.87`` and ``b_i`` set so that the study's adjusted main model (which
   has no product term) estimates an OR of 1.22 per 2 units of Z (NAKO): leaving out ``g`` shifts
   the fitted InterMAT log-OR by ``-0.4617 g`` (``b_i = log(1.22)/2 + 0.4617 g``, calibrated
   by simulation on 2 × 10⁶ people; with ``g = 0`` it is exactly ``log(1.22)/2``). ``b_age``,
   ``b_f``, ``b_low`` and ``b_high`` were calibrated once (by simulation on 10⁶ people) so that
   the marginal facts hold (female 50.0 % among CBP vs 42.7 %; median age 53 vs 48; CBP 24.6 %,
   19.4 %, 22.0 % by PA category); ``b0`` is solved numerically on each drawn cohort so that the
   expected prevalence is exactly ``prevalence`` (21.8 %).
9. **Pain intensity** (0-10, integer): proportional-odds model
   ``P(pain >= k) = expit(eta - theta_k)``, ``eta = c_cbp [CBP] + a_i z_intermat + a_l z_lmm
   + a_age (age - 50) + a_f female``; among people with CBP, moderate-to-severe pain (>= 4) is
   a logistic model with exactly the coefficients ``a_i``, ``a_l``, ``a_age``, ``a_f``.

:func:`simulate_cohort` returns the table and the true parameters; :func:`write_cohort` saves
both (``true_parameters.json`` beside the data).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from myocomp.errors import ConfigError, InputFileError
from myocomp.io import write_bytes

__all__ = [
    "CohortParameters",
    "SyntheticCohort",
    "simulate_cohort",
    "write_cohort",
    "PA_BREAKS",
]

#: MET-min/week cut points of the physical-activity categories (low < 500 <= moderate <= 5000 < high).
PA_BREAKS = (500.0, 5000.0)
#: upper truncation of MET-min/week
MET_CAP = 30_000.0


@dataclass(frozen=True)
class CohortParameters:
    """True parameters of the generative model (log-odds scale unless stated)."""

    prevalence: float = 0.218
    female_share: float = 0.443
    age_mean: float = 49.0
    age_sd: float = 12.3
    age_range: tuple[float, float] = (20.0, 72.0)
    site_weights: tuple[float, ...] = (0.24, 0.22, 0.20, 0.18, 0.16)
    site_sd: float = 0.15
    log_met_mean: float = 6.664
    log_met_sd: float = 1.702
    or_intermat_per_2z: float = 1.22
    or_lmm_per_2z: float = 0.87
    interaction: float = -0.012  # per 1 x 1 unit of Z
    #: d(fitted main-model log-OR of z_intermat)/d(interaction) when the product term is left
    #: out of the model (E[z_i^2 z_l] != 0 for skewed metrics); calibrated by simulation
    intermat_projection_slope: float = -0.4617
    beta_age: float = 0.028  # per year
    beta_female: float = 0.225
    beta_diabetes: float = 0.10
    beta_dyslipidemia: float = 0.08
    beta_osteoporosis: float = 0.25
    beta_osteoarthritis: float = 0.45
    beta_pa_low: float = 0.30
    beta_pa_high: float = 0.19
    pain_cbp_shift: float = 0.5
    pain_no_cbp_shift: float = -2.5
    pain_intermat: float = 0.15  # per 1 unit of Z
    pain_lmm: float = -0.10
    pain_age: float = 0.01
    pain_female: float = 0.15
    pain_thresholds: tuple[float, ...] = field(
        default=(-2.0, -1.2, -0.5, 0.1, 0.7, 1.3, 1.9, 2.6, 3.4, 4.4)
    )

    @property
    def beta_intermat(self) -> float:
        """Conditional log-OR of CBP per 1 unit of ``z_intermat`` in the generating model (with
        the product term), chosen so that the main model *without* the product term estimates
        ``log(or_intermat_per_2z) / 2``."""
        return math.log(self.or_intermat_per_2z) / 2.0 - self.intermat_projection_slope * (
            self.interaction)

    @property
    def beta_lmm(self) -> float:
        """True log-OR of CBP per 1 unit of ``z_lmm``."""
        return math.log(self.or_lmm_per_2z) / 2.0


@dataclass(frozen=True)
class SyntheticCohort:
    """A drawn cohort: ``data`` (one row per participant) and its ``true_parameters`` (dict)."""

    data: pd.DataFrame
    true_parameters: dict[str, Any]


def _truncated_normal(rng: np.random.Generator, n: int, mean: float, sd: float,
                      lo: float, hi: float) -> np.ndarray:
    out = rng.normal(mean, sd, n)
    bad = (out < lo) | (out > hi)
    while bad.any():
        out[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (out < lo) | (out > hi)
    return out


def _solve_intercept(eta: np.ndarray, prevalence: float) -> float:
    """The intercept ``b0`` with ``mean(expit(b0 + eta)) == prevalence``."""
    def gap(b0: float) -> float:
        return float(special.expit(b0 + eta).mean() - prevalence)

    return float(optimize.brentq(gap, -30.0, 30.0, xtol=1e-12))


def simulate_cohort(n: int = 27518, seed: int = 0,
                    params: CohortParameters | None = None) -> SyntheticCohort:
    """Draw a NAKO-like cohort of ``n`` participants (see the module docstring for the model).

    Parameters
    ----------
    n : number of participants (>= 50).
    seed : seed of the ``numpy.random.Generator``; same ``(n, seed, params)`` -> identical table.
    params : true parameters; default :class:`CohortParameters()`.

    Returns
    -------
    SyntheticCohort with ``data`` columns: participant_id, site, age (years), sex
    ("female"/"male"), height_cm, bmi (kg/m²), met_min_week, diabetes, dyslipidemia,
    osteoporosis, osteoarthritis, cbp (0/1), pain_intensity (0-10), group ("back"), volume_ml,
    ff_mean (0-1), lean_volume_ml, intermat_volume_ml, intermat_fraction (0-1), lmm (mL·m²/kg).
    """
    if n < 50:
        raise ConfigError(f"n must be at least 50, got {n}")
    p = params or CohortParameters()
    rng = np.random.default_rng(seed)
    # the draws happen in this order (the table depends on it for a given seed)
    site_effects, site = _draw_sites(rng, n, p)
    person = _draw_people(rng, n, p)
    a50, b27, female = person["age"] - 50.0, person["bmi"] - 27.0, person["female"]
    disease = _draw_comorbidities(rng, n, a50, b27, female)
    muscle = _draw_back_muscle(rng, n, p, person)
    z_i, z_l = _z(muscle["intermat_volume_ml"]), _z(muscle["lmm"])

    eta = (site_effects[site] + p.beta_intermat * z_i + p.beta_lmm * z_l
           + p.interaction * z_i * z_l + p.beta_age * person["age"] + p.beta_female * female
           + p.beta_diabetes * disease["diabetes"] + p.beta_dyslipidemia * disease["dyslipidemia"]
           + p.beta_osteoporosis * disease["osteoporosis"]
           + p.beta_osteoarthritis * disease["osteoarthritis"]
           + p.beta_pa_low * person["pa_low"] + p.beta_pa_high * person["pa_high"])
    b0 = _solve_intercept(eta, p.prevalence)
    cbp = (rng.random(n) < special.expit(b0 + eta)).astype(np.int8)

    eta_pain = (np.where(cbp == 1, p.pain_cbp_shift, p.pain_no_cbp_shift)
                + p.pain_intermat * z_i + p.pain_lmm * z_l + p.pain_age * a50
                + p.pain_female * female)
    latent = eta_pain + rng.logistic(0.0, 1.0, n)
    pain = np.searchsorted(np.asarray(p.pain_thresholds), latent).astype(np.int8)

    data = _cohort_table(n, len(site_effects), site, person, disease, cbp, pain, muscle)
    truth = _true_parameters(p, b0, site_effects, n, seed)
    return SyntheticCohort(data=data, true_parameters=truth)


def _z(x: np.ndarray) -> np.ndarray:
    """Standardised ``x`` (sample standard deviation)."""
    return (x - x.mean()) / x.std(ddof=1)


def _draw_sites(rng: np.random.Generator, n: int, p: CohortParameters) -> tuple[np.ndarray, np.ndarray]:
    """Site random effects (n_sites,) on the logit scale and each participant's site index (n,)."""
    weights = np.asarray(p.site_weights, float)
    weights = weights / weights.sum()
    site_effects = rng.normal(0.0, p.site_sd, len(weights))
    return site_effects, rng.choice(len(weights), size=n, p=weights)


def _draw_people(rng: np.random.Generator, n: int, p: CohortParameters) -> dict[str, np.ndarray]:
    """Sex (``female`` 0/1), age (years), height (cm), BMI (kg/m²), physical activity (MET
    min/week, capped and rounded; ``log_met`` before that) and its low/high indicators, (n,) each."""
    female = (rng.random(n) < p.female_share).astype(np.int8)
    age = np.round(_truncated_normal(rng, n, p.age_mean, p.age_sd, *p.age_range))

    height = np.where(female == 1, rng.normal(166.0, 6.5, n), rng.normal(179.0, 7.0, n))
    height -= 0.08 * np.clip(age - 40.0, 0.0, None)
    log_bmi = np.log(np.where(female == 1, 26.3, 27.4)) + 0.0018 * (age - 49.0)
    bmi = np.clip(np.exp(log_bmi + rng.normal(0.0, 0.16, n)), 16.0, 60.0)

    log_met = rng.normal(p.log_met_mean, p.log_met_sd, n)
    met = np.round(np.minimum(np.exp(log_met), MET_CAP), 1)
    return {"female": female, "age": age, "height": height, "bmi": bmi, "log_met": log_met, "met": met,
            "pa_low": (met < PA_BREAKS[0]).astype(np.int8), "pa_high": (met > PA_BREAKS[1]).astype(np.int8)}


def _draw_comorbidities(rng: np.random.Generator, n: int, a50: np.ndarray, b27: np.ndarray,
                        female: np.ndarray) -> dict[str, np.ndarray]:
    """Diabetes, dyslipidemia, osteoporosis, osteoarthritis (0/1, (n,) each) from age - 50,
    BMI - 27 and sex."""
    def bern(logit: np.ndarray) -> np.ndarray:
        return (rng.random(n) < special.expit(logit)).astype(np.int8)

    return {
        "diabetes": bern(-2.9 + 0.06 * a50 + 0.12 * b27 - 0.3 * female),
        "dyslipidemia": bern(-1.55 + 0.05 * a50 + 0.06 * b27 - 0.25 * female),
        "osteoporosis": bern(-4.6 + 0.09 * a50 + 1.3 * female - 0.06 * b27),
        "osteoarthritis": bern(-1.6 + 0.065 * a50 + 0.06 * b27 + 0.3 * female),
    }


def _draw_back_muscle(rng: np.random.Generator, n: int, p: CohortParameters,
                      person: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Back-muscle metrics (n,) each: volume_ml, ff_mean (0-1), lean_volume_ml,
    intermat_volume_ml, intermat_fraction (0-1), lmm (mL·m²/kg, from the unrounded BMI)."""
    female, bmi = person["female"], person["bmi"]
    a50, b27 = person["age"] - 50.0, bmi - 27.0
    log_vol = (np.log(1450.0) - 0.30 * female + 2.0 * np.log(person["height"] / 175.0)
               + 0.30 * np.log(bmi / 27.0) - 0.006 * a50 + rng.normal(0.0, 0.10, n))
    volume = np.exp(log_vol)
    ff_logit = (special.logit(0.085) + 0.35 * female + 0.022 * a50 + 0.035 * b27
                - 0.06 * (person["log_met"] - p.log_met_mean) + rng.normal(0.0, 0.28, n))
    ff_mean = special.expit(ff_logit)
    q_logit = -3.3 + 9.0 * (ff_mean - 0.10) + rng.normal(0.0, 0.35, n)
    intermat_fraction = special.expit(q_logit)
    lean_ff = np.clip(ff_mean - 0.6 * intermat_fraction, 0.01, 0.45)
    lean = volume * (1.0 - intermat_fraction) * (1.0 - lean_ff)
    return {"volume_ml": volume, "ff_mean": ff_mean, "lean_volume_ml": lean,
            "intermat_volume_ml": volume * intermat_fraction, "intermat_fraction": intermat_fraction,
            "lmm": lean / bmi}


def _cohort_table(n: int, n_sites: int, site: np.ndarray, person: dict, disease: dict,
                  cbp: np.ndarray, pain: np.ndarray, muscle: dict) -> pd.DataFrame:
    """The cohort table (columns as :func:`simulate_cohort` documents them)."""
    width = max(6, len(str(n)))
    data = pd.DataFrame({
        "participant_id": [f"SYN{i:0{width}d}" for i in range(1, n + 1)],
        "site": pd.Series([f"site_{k + 1}" for k in range(n_sites)]).to_numpy()[site],
        "age": person["age"].astype(np.int16),
        "sex": np.where(person["female"] == 1, "female", "male"),
        "height_cm": np.round(person["height"], 1),
        "bmi": np.round(person["bmi"], 2),
        "met_min_week": person["met"],
        **disease,
        "cbp": cbp,
        "pain_intensity": pain,
        "group": "back",
        **muscle,
    })
    # bmi was rounded for the table: recompute lmm from the stored bmi so lmm == lean / bmi holds
    data["lmm"] = data["lean_volume_ml"] / data["bmi"]
    return data


def _true_parameters(p: CohortParameters, b0: float, site_effects: np.ndarray,
                     n: int, seed: int) -> dict[str, Any]:
    cbp_coef = {
        "Intercept": b0,
        "z_intermat": p.beta_intermat,
        "z_lmm": p.beta_lmm,
        "z_intermat:z_lmm": p.interaction,
        "age": p.beta_age,
        "sex[female]": p.beta_female,
        "diabetes": p.beta_diabetes,
        "dyslipidemia": p.beta_dyslipidemia,
        "osteoporosis": p.beta_osteoporosis,
        "osteoarthritis": p.beta_osteoarthritis,
        "pa_category[low]": p.beta_pa_low,
        "pa_category[high]": p.beta_pa_high,
    }
    raw = asdict(p)
    return {
        "description": "True parameters of myocomp.synth.cohort (see its module docstring).",
        "n": n,
        "seed": seed,
        "z_method": "cohort (mean, SD with ddof=1 of this cohort)",
        "intermat_metric": "intermat_volume_ml",
        "pa_breaks_met_min_week": list(PA_BREAKS),
        "cbp_model": {
            "link": "logit",
            "coefficients": cbp_coef,
            "site_sd": p.site_sd,
            "site_effects": {f"site_{k + 1}": float(v) for k, v in enumerate(site_effects)},
            "intercept_solved_for_prevalence": p.prevalence,
        },
        "odds_ratios_per_2z": {
            "z_intermat": p.or_intermat_per_2z,
            "z_lmm": p.or_lmm_per_2z,
        },
        "odds_ratios_per_2z_note": (
            "ORs per 2 units of Z that the adjusted main model (without the product term) "
            "estimates; cbp_model.coefficients are the conditional coefficients of the "
            "generating model, which has the product term"),
        "pain_model": {
            "link": "cumulative logit (proportional odds), P(pain >= k) = expit(eta - theta_k)",
            "thresholds": list(p.pain_thresholds),
            "shift_cbp": p.pain_cbp_shift,
            "shift_no_cbp": p.pain_no_cbp_shift,
            "coefficients": {
                "z_intermat": p.pain_intermat,
                "z_lmm": p.pain_lmm,
                "age_minus_50": p.pain_age,
                "sex[female]": p.pain_female,
            },
        },
        "parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in raw.items()},
    }


def write_cohort(cohort: SyntheticCohort, path: str | Path) -> tuple[Path, Path]:
    """Write the cohort (.parquet, .csv or .tsv by suffix) and ``true_parameters.json`` beside it.

    Both files are written atomically. Returns ``(data_path, parameters_path)``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv"):
        raise InputFileError("output must end in .parquet, .csv or .tsv", source=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import io

        buf = io.BytesIO()
        cohort.data.to_parquet(buf, index=False)
        payload = buf.getvalue()
    else:
        sep = "," if suffix == ".csv" else "\t"
        payload = cohort.data.to_csv(index=False, sep=sep, lineterminator="\n").encode()
    write_bytes(payload, path)
    params_path = path.parent / "true_parameters.json"
    text = json.dumps(cohort.true_parameters, indent=2, sort_keys=False) + "\n"
    write_bytes(text.encode(), params_path)
    return path, params_path
