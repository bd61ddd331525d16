"""Time the study's main mixed logistic model on a NAKO-sized synthetic cohort (one thread).

    python benchmarks/bench_glmm.py [--n 27518] [--seed 1] [--repeat 3]

Model: cbp ~ z_intermat + z_lmm + age + sex + diabetes + dyslipidemia + osteoporosis
+ osteoarthritis + PA category (3 levels, reference 500-5000 MET-min/week) + (1 | site),
fitted by the Laplace approximation (nagq=1) and adaptive quadrature (nagq=10). Prints the best
of ``--repeat`` wall times, the number of deviance evaluations, and the ratio to a plain
fixed-effects logistic regression of the same design by statsmodels (baseline, same run).
Target: each mixed fit under 5 s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import statsmodels.formula.api as smf  # noqa: E402

from myocomp.stats import ZScoreModel, fit_mixed_logit  # noqa: E402
from myocomp.synth.cohort import simulate_cohort  # noqa: E402

FIXED = (
    "cbp ~ z_intermat + z_lmm + age + C(sex) + diabetes + dyslipidemia + osteoporosis"
    " + osteoarthritis + C(pa_cat, Treatment('500-5000'))"
)


def build_cohort(n: int, seed: int) -> pd.DataFrame:
    data = simulate_cohort(n, seed).data
    zmodel = ZScoreModel.fit(data, {"intermat_volume_ml": "z_intermat", "lmm": "z_lmm"})
    data = zmodel.transform(data)
    met = data["met_min_week"]
    data["pa_cat"] = np.where(met < 500, "<500", np.where(met > 5000, ">5000", "500-5000"))
    return data


def best_time(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=27518)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    data = build_cohort(args.n, args.seed)
    print(
        f"cohort: {len(data)} people, {data['site'].nunique()} sites, CBP {data['cbp'].mean():.1%}"
    )

    t_glm, glm = best_time(lambda: smf.logit(FIXED, data).fit(disp=0), args.repeat)
    print(
        f"baseline statsmodels Logit (fixed effects only): {t_glm:.3f} s, {glm.mle_retvals['iterations']} iterations"
    )
    for nagq in (1, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, res = best_time(
                lambda nagq=nagq: fit_mixed_logit(FIXED, data, "site", nagq=nagq), args.repeat
            )
        print(
            f"fit_mixed_logit nagq={nagq:<2d}: {t:.3f} s, {res.nfev} deviance evaluations, "
            f"ratio to Logit {t / t_glm:.1f}x, site SD {res.group_sd:.4f}, "
            f"converged {res.converged}, target < 5 s: {'met' if t < 5 else 'MISSED'}"
        )
    ors = res.odds_ratios(terms=["z_intermat", "z_lmm"])
    print("OR per 2 Z (nagq=10):")
    print(ors.to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
