"""Time the study's main mixed logistic model on a NAKO-sized synthetic cohort (one thread),
side by side with a plain logistic fit and with R's lme4 ``glmer`` in the same run.

    python benchmarks/bench_glmm.py [--n 27518] [--seed 1] [--repeat 3] [--no-r]

Model: cbp ~ z_intermat + z_lmm + age + sex + diabetes + dyslipidemia + osteoporosis
+ osteoarthritis + PA category (3 levels, reference 500-5000 MET-min/week) + (1 | site),
fitted by the Laplace approximation (nagq=1) and adaptive quadrature (nagq=10).

Prints the best of ``--repeat`` wall times (formula processing included, as for the baselines),
the ratio of the Laplace fit to statsmodels ``Logit`` of the same design (baseline; target
<= 3x), and the speed-up over ``glmer`` (R ``lme4``, Debian ``r-base-core`` + ``r-cran-lme4``,
installed by ``make bench``; timed inside R, data loading excluded; targets >= 30x at Laplace,
>= 25x at nAGQ = 10) with the largest coefficient difference. Without R or lme4 the peer is
skipped with a line saying so.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import statsmodels.formula.api as smf  # noqa: E402

from myocomp.stats import ZScoreModel, fit_mixed_logit  # noqa: E402
from myocomp.synth.cohort import simulate_cohort  # noqa: E402

FIXED = (
    "cbp ~ z_intermat + z_lmm + age + C(sex) + diabetes + dyslipidemia + osteoporosis"
    " + osteoarthritis + C(pa_cat, Treatment('500-5000'))"
)
COLUMNS = ["cbp", "z_intermat", "z_lmm", "age", "sex", "diabetes", "dyslipidemia",
           "osteoporosis", "osteoarthritis", "pa_cat", "site"]

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
d$pa_cat <- relevel(factor(d$pa_cat), ref = "500-5000")
d$sex <- factor(d$sex)
d$site <- factor(d$site)
f <- cbp ~ z_intermat + z_lmm + age + sex + diabetes + dyslipidemia + osteoporosis +
  osteoarthritis + pa_cat + (1 | site)
q <- as.integer(args[2])
t <- system.time(m <- glmer(f, d, family = binomial, nAGQ = q))[["elapsed"]]
b <- fixef(m)
cat(sprintf('{"seconds": %.6f, "sd": %.12g, "fixef": {%s}}\n', t,
            attr(VarCorr(m)$site, "stddev"),
            paste(sprintf('"%s": %.12g', names(b), b), collapse = ", ")))
"""


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


def lme4_name(name: str) -> str:
    """Our (patsy) coefficient names -> lme4's, e.g. ``C(sex)[T.male]`` -> ``sexmale``."""
    if name == "Intercept":
        return "(Intercept)"
    return re.sub(r"^C\((\w+).*\)\[T\.(.+)\]$", r"\1\2", name)


def r_peer_missing() -> str | None:
    """Why glmer cannot run here (None if it can)."""
    if shutil.which("Rscript") is None:
        return "Rscript not found (apt-get install r-base-core r-cran-lme4, or `make bench`)"
    probe = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "R package lme4 not installed (apt-get install r-cran-lme4, or `make bench`)"
    return None


def run_glmer(csv: Path, nagq: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(R_SCRIPT)
    try:
        out = subprocess.run(["Rscript", fh.name, str(csv), str(nagq)], capture_output=True,
                             text=True, check=True)
    finally:
        os.unlink(fh.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=27518)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-r", action="store_true", help="skip the R lme4 peer")
    args = parser.parse_args()

    data = build_cohort(args.n, args.seed)
    print(
        f"cohort: {len(data)} people, {data['site'].nunique()} sites, CBP {data['cbp'].mean():.1%}"
    )
    t_glm, _ = best_time(lambda: smf.logit(FIXED, data).fit(disp=0), args.repeat)
    print(f"baseline statsmodels Logit (fixed effects only): {t_glm:.3f} s")
    ours = {}
    for nagq in (1, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, res = best_time(
                lambda nagq=nagq: fit_mixed_logit(FIXED, data, "site", nagq=nagq), args.repeat
            )
        ours[nagq] = (t, res)
        print(
            f"fit_mixed_logit nagq={nagq:<2d}: {t:.3f} s, {res.nfev} deviance evaluations, "
            f"ratio to Logit {t / t_glm:.2f}x, site SD {res.group_sd:.4f}, "
            f"converged {res.converged}"
        )
    t1 = ours[1][0]
    print(f"target Laplace <= 3x Logit: {'met' if t1 <= 3 * t_glm else 'MISSED'} "
          f"({t1 / t_glm:.2f}x)")
    why = "skipped by --no-r" if args.no_r else r_peer_missing()
    if why:
        print(f"peer R lme4 glmer: skipped: {why}")
        return
    targets = {1: 30.0, 10: 25.0}
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "cohort.csv"
        data[COLUMNS].to_csv(csv, index=False)
        for nagq, (t, res) in ours.items():
            peer = run_glmer(csv, nagq)
            diff = max(abs(float(v) - peer["fixef"][lme4_name(k)]) for k, v in res.params.items())
            speed = peer["seconds"] / t
            print(
                f"glmer nAGQ={nagq:<2d}: {peer['seconds']:.2f} s; myocomp {speed:.1f}x faster "
                f"(target >= {targets[nagq]:.0f}x: {'met' if speed >= targets[nagq] else 'MISSED'})"
                f"; max |beta - beta_lme4| {diff:.2e}, |SD - SD_lme4| "
                f"{abs(res.group_sd - peer['sd']):.2e}"
            )
    ors = ours[10][1].odds_ratios(terms=["z_intermat", "z_lmm"])
    print("OR per 2 Z (nagq=10):")
    print(ors.to_string(float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
