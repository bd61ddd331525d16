"""Time the whole CBP study (``run_study``) on a NAKO-sized synthetic cohort and check that its
tables are reproducible.

    python benchmarks/bench_study.py [--n 27518] [--seed 0] [--bootstrap 200]
                                     [--reference DIR] [--keep DIR]

Runs the study twice on the same cohort: the first run is timed (per step, and the total
against a baseline from the same run: one plain statsmodels ``Logit`` of the main model's
design, i.e. the study costs "so many plain logistic fits"; target: the study <= 8 s); the
second run's tables must equal the first's (determinism). The CPU seconds of this process and
of the second process the study forks are printed with the machine's load average: on a
shared machine they bound the wall time on an idle one. ``--reference DIR`` also compares
every table with ``DIR/<name>.csv`` (e.g. ``tables/`` of an earlier version's run of
``myocomp synth-cohort --n 27518 --seed 0`` + ``myocomp study``), printing the largest
difference relative to max(1, |value|) (target <= 1e-8).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from myocomp.study import run_study
from myocomp.study.analyses import COVARIATES, MARKERS, main_formula, prepare_analysis_data
from myocomp.study.phenotypes import join_metrics, validate_phenotypes
from myocomp.synth.cohort import simulate_cohort


def _text(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col.notna(), "").astype(str)


def table_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest |a - b| / max(1, |b|) over numeric cells (inf if shapes, text or NaNs differ)."""
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return np.inf
    worst = 0.0
    for col in b.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(y) and pd.api.types.is_numeric_dtype(x):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            if not np.array_equal(np.isnan(xv), np.isnan(yv)):
                return np.inf
            ok = ~np.isnan(yv)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(xv[ok] - yv[ok])
                                                / np.maximum(1.0, np.abs(yv[ok])))))
        elif not _text(x).equals(_text(y)):
            return np.inf
    return worst


def compare(tables: dict[str, pd.DataFrame], folder: Path) -> dict[str, float]:
    return {name: table_difference(t, pd.read_csv(folder / f"{name}.csv"))
            for name, t in tables.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=27518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--reference", type=Path, help="folder of reference tables/*.csv")
    parser.add_argument("--keep", type=Path, help="write the first run's outputs here")
    args = parser.parse_args()

    cohort = simulate_cohort(args.n, args.seed).data
    print(f"cohort: {len(cohort)} people (seed {args.seed}), bootstrap B = {args.bootstrap}")
    joined, _ = join_metrics(validate_phenotypes(cohort), None)
    d, _ = prepare_analysis_data(joined)
    formula = main_formula("cbp", MARKERS, COVARIATES)
    t0 = time.perf_counter()
    smf.logit(formula, d).fit(disp=0)
    t_logit = time.perf_counter() - t0
    print(f"baseline: one statsmodels Logit of the main design: {t_logit:.3f} s")
    config = {"options": {"bootstrap": args.bootstrap, "seed": 0}}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out1 = args.keep or Path(tmp) / "run1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0, c0 = time.perf_counter(), os.times()
            first = run_study(cohort, config=config, out_dir=out1)
            t_study, c1 = time.perf_counter() - t0, os.times()
            second = run_study(cohort, config=config, out_dir=Path(tmp) / "run2")
    steps = ", ".join(f"{k} {v:.2f}" for k, v in first.timings.items())
    print(f"study: {t_study:.2f} s = {t_study / t_logit:.0f} Logit fits "
          f"(target <= 8 s: {'met' if t_study <= 8 else 'MISSED'}); steps (s): {steps}")
    main_cpu = c1.user - c0.user + c1.system - c0.system
    second_cpu = (c1.children_user - c0.children_user + c1.children_system
                  - c0.children_system)
    print(f"CPU: this process {main_cpu:.2f} s, second process(es) {second_cpu:.2f} s; machine "
          f"load average before the run {load:.2f} on {os.cpu_count()} cores")
    same = max(table_difference(second.tables[k], t) for k, t in first.tables.items())
    print(f"determinism: largest difference between the two runs' tables: {same:.1e} "
          f"({'identical' if same == 0 else 'DIFFERENT'})")
    if args.reference:
        diffs = compare(first.tables, args.reference)
        worst = max(diffs, key=diffs.get)
        print(f"against {args.reference}: largest relative difference {diffs[worst]:.1e} "
              f"(table {worst}; target <= 1e-8: {'met' if diffs[worst] <= 1e-8 else 'MISSED'})")
        for name, diff in sorted(diffs.items()):
            print(f"  {name:24s} {diff:.1e}")


if __name__ == "__main__":
    main()
