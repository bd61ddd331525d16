"""End to end: `myocomp study` on a small cohort with a column mapping and a long metrics
table, then `myocomp predict` from its model.json."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.study.report import SECTIONS
from myocomp.synth.cohort import simulate_cohort

N = 3000
MISSING_BMI = (5, 6, 7)
TABLES = ("table1", "pa_prevalence", "met_spline", "main_models", "strata_models",
          "symptom_burden", "symptom_ordinal", "interaction_model", "interaction_predicted",
          "interaction_observed", "nomogram_points", "nomogram_total_points", "validation",
          "bootstrap_validation", "calibration_curve", "nomogram_model", "models")
PNGS = ("pa", "forest_main", "forest_strata", "forest_symptoms", "interaction", "nomogram",
        "calibration", "roc")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    cohort = simulate_cohort(N, seed=4).data
    metric_cols = ["volume_ml", "ff_mean", "lean_volume_ml", "intermat_volume_ml",
                   "intermat_fraction", "lmm"]
    pheno = cohort.drop(columns=[*metric_cols, "group"]).rename(
        columns={"age": "Alter", "sex": "Geschlecht", "participant_id": "ID"})
    pheno["Geschlecht"] = np.where(pheno["Geschlecht"] == "female", 1, 2)
    pheno.loc[list(MISSING_BMI), "bmi"] = np.nan
    pheno.to_csv(tmp / "pheno.csv", index=False)
    m = cohort[["participant_id", *metric_cols]]
    metrics = pd.concat([m.assign(group="back"),
                         m.assign(group="psoas", lean_volume_ml=m["lean_volume_ml"] / 3)])
    lost = cohort.loc[0, "participant_id"]
    metrics = metrics[metrics["participant_id"] != lost]
    metrics.to_parquet(tmp / "metrics.parquet")
    (tmp / "study.toml").write_text(
        '[columns]\nparticipant_id = "ID"\nage = "Alter"\nsex = "Geschlecht"\n'
        '[sex_coding]\n"1" = "female"\n"2" = "male"\n[options]\ngroup = "back"\n')
    out = tmp / "out"
    rc = main(["study", "--data", str(tmp / "pheno.csv"), "--metrics",
               str(tmp / "metrics.parquet"), "--config", str(tmp / "study.toml"),
               "--out", str(out), "--bootstrap", "20", "--seed", "3"])
    return {"rc": rc, "out": out, "cohort": cohort, "lost": lost}


def test_study_writes_every_output(study_run):
    assert study_run["rc"] == 0
    out = study_run["out"]
    rows = {name: len(pd.read_csv(out / "tables" / f"{name}.csv")) for name in TABLES}
    # fixed by the design of each analysis: 3 PA levels, a 200-point MET grid, 9 strata x 2
    # markers, a 41 x 41 heatmap, 5 x 5 quintile cells, 4 bootstrap metrics, 7 validation
    # rows, 10 calibration deciles, 8 models, the 11 coefficients of the nomogram model
    expected = {"pa_prevalence": 3, "met_spline": 200, "strata_models": 18,
                "interaction_predicted": 41 * 41, "interaction_observed": 25,
                "bootstrap_validation": 4, "validation": 7, "calibration_curve": 10,
                "models": 8, "nomogram_model": 11, "symptom_ordinal": 2 + 8}
    assert {k: rows[k] for k in expected} == expected
    main_models = pd.read_csv(out / "tables" / "main_models.csv")
    # every coefficient but the intercept of the 6 models: 10 + 2 + 9 + 9 + 1 + 1
    assert len(main_models) == rows["main_models"] == 32
    for name in PNGS:
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figures" / "nomogram.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in html, section
    # self-contained: every PNG inline, nothing loaded from elsewhere
    assert html.count("data:image/png;base64,") == len(PNGS)
    assert not re.search(r"""src=["'](?!data:)""", html)
    assert "statsmodels" in html and "intermat_volume_ml" in html and "Alter" in html


def test_complete_case_counts_and_join(study_run):
    out = study_run["out"]
    models = pd.read_csv(out / "tables" / "models.csv").set_index("model")
    # one participant has no metrics, three have no BMI (so no LMM)
    assert models.loc["adjusted", "n"] == N - 1 - len(MISSING_BMI)
    assert models.loc["adjusted", "n_dropped"] == len(MISSING_BMI)
    assert models.loc["intermat_only_unadjusted", "n"] == N - 1
    assert models.loc["intermat_only_unadjusted", "n_dropped"] == 0
    cohort = study_run["cohort"]
    table1 = pd.read_csv(out / "tables" / "table1.csv")
    n_row = table1[table1["variable"] == "n"].iloc[0]
    joined = cohort[cohort["participant_id"] != study_run["lost"]]
    assert n_row["cbp"] == int(joined["cbp"].sum()) and np.isnan(n_row["cbp_percent"])
    female = table1[(table1["variable"] == "sex") & (table1["level"] == "female")].iloc[0]
    k = int(((joined["sex"] == "female") & (joined["cbp"] == 1)).sum())
    assert female["cbp"] == k
    assert female["cbp_percent"] == pytest.approx(100 * k / joined["cbp"].sum())
    boot = pd.read_csv(out / "tables" / "bootstrap_validation.csv")
    assert (boot["n"] == 20).all()


def test_model_json_matches_tables(study_run):
    out = study_run["out"]
    model = json.loads((out / "model.json").read_text())
    for key in ("zscores", "main_model", "nomogram_model", "nomogram", "config"):
        assert key in model
    main_tab = pd.read_csv(out / "tables" / "main_models.csv")
    adj = main_tab[main_tab["model"] == "adjusted"].set_index("term")
    for term in ("z_intermat", "z_lmm", "age"):
        assert math.isclose(model["main_model"]["params"][term], adj.loc[term, "estimate"],
                            rel_tol=1e-9)
    assert model["config"]["columns"]["age"] == "Alter"
    assert model["zscores"]["params"]["intermat_volume_ml"]["n"] == N - 1


def _independent_probability(model: dict, person: dict) -> tuple[float, dict]:
    zp = model["zscores"]["params"]
    z_i = (person["intermat_ml"] - zp["intermat_volume_ml"]["mean"]) / zp[
        "intermat_volume_ml"]["sd"]
    lmm = person["lean_volume_ml"] / person["bmi"]
    z_l = (lmm - zp["lmm"]["mean"]) / zp["lmm"]["sd"]
    values = {"z_intermat": z_i, "z_lmm": z_l, "age": person["age"], "female": 1.0,
              "diabetes": 0.0, "dyslipidemia": 0.0, "osteoporosis": 0.0,
              "osteoarthritis": 1.0}
    params = model["nomogram_model"]["params"]
    lp = params["Intercept"]
    for term, beta in params.items():
        if term == "Intercept":
            continue
        if term.startswith("C(pa_category"):
            lp += beta * float(term.endswith("[T.high]"))  # 6000 MET-min/week is "high"
        else:
            lp += beta * values[term]
    return 1.0 / (1.0 + math.exp(-lp)), {"z_intermat": z_i, "z_lmm": z_l, "lp": lp}


def test_predict_round_trip(study_run, capsys):
    model_path = study_run["out"] / "model.json"
    model = json.loads(model_path.read_text())
    person = {"age": 61.0, "bmi": 29.5, "intermat_ml": 70.0, "lean_volume_ml": 850.0}
    argv = ["predict", "--model", str(model_path), "--age", "61", "--sex", "w", "--bmi", "29.5",
            "--intermat-ml", "70", "--lean-volume-ml", "850", "--osteoarthritis",
            "--met-min-week", "6000"]
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    expected, parts = _independent_probability(model, person)
    assert math.isclose(res["probability"], expected, rel_tol=1e-9)
    assert math.isclose(res["zscores"]["z_intermat"], parts["z_intermat"], rel_tol=1e-12)
    assert math.isclose(res["zscores"]["z_lmm"], parts["z_lmm"], rel_tol=1e-12)
    # nomogram: points add up and total points map to the model's linear predictor
    assert math.isclose(sum(res["points"].values()), res["total_points"], rel_tol=1e-12)
    nomo = model["nomogram"]
    lp_from_points = nomo["lp_at_zero_points"] + res["total_points"] / nomo["points_per_lp_unit"]
    assert math.isclose(lp_from_points, parts["lp"], rel_tol=1e-9, abs_tol=1e-12)
    assert res["inputs"]["pa_category"] == "high"
    # the human-readable output prints the same probability
    assert main(argv) == 0
    text = capsys.readouterr().out
    printed = float(re.search(r"probability of CBP: ([0-9.]+)", text).group(1))
    assert abs(printed - expected) < 1e-6
    assert "Osteoarthritis" in text and "total points" in text


def test_predict_errors(study_run, capsys):
    model_path = str(study_run["out"] / "model.json")
    base = ["predict", "--model", model_path, "--age", "61", "--bmi", "29.5",
            "--lean-volume-ml", "850"]
    assert main([*base, "--sex", "female"]) == 2  # no --intermat-ml
    assert "--intermat-ml" in capsys.readouterr().err
    assert main([*base, "--sex", "x", "--intermat-ml", "70"]) == 2
    assert "sex 'x'" in capsys.readouterr().err
    old_age = ["predict", "--model", model_path, "--age", "300", "--bmi", "29.5",
               "--lean-volume-ml", "850", "--sex", "m", "--intermat-ml", "70"]
    assert main(old_age) == 2
    assert "age = 300 is outside" in capsys.readouterr().err
    assert main(["predict", "--model", model_path + ".nope", "--age", "50", "--sex", "m",
                 "--bmi", "25", "--lean-volume-ml", "900", "--intermat-ml", "40"]) == 2


def test_synthetic_cohort_without_metrics_table(tmp_path, capsys):
    """The cohort file already holds the metrics: --metrics is optional; thin strata are
    reported as not estimable instead of stopping the study."""
    cohort = tmp_path / "cohort.parquet"
    assert main(["synth-cohort", "--n", "800", "--seed", "8", "--out", str(cohort)]) == 0
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["study", "--data", str(cohort), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "InterMAT (Z): OR" in capsys.readouterr().out
    strata = pd.read_csv(out / "tables" / "strata_models.csv")
    op_yes = strata[(strata["stratum"] == "osteoporosis") & (strata["level"] == "yes")]
    n_op = int(pd.read_parquet(cohort)["osteoporosis"].sum())
    assert (op_yes["n"] == n_op).all()
    if n_op < 40:  # too few events for a model: a row saying so, with no estimate
        assert op_yes["note"].str.startswith("not estimable").all()
        assert op_yes["OR"].isna().all()
    html = (out / "report.html").read_text()
    main_models = pd.read_csv(out / "tables" / "main_models.csv").set_index(["model", "term"])
    adj = main_models.loc[("adjusted", "z_intermat")]
    assert (f"InterMAT (Z): OR {adj['OR']:.2f} (95 % CI {adj['lower']:.2f}–{adj['upper']:.2f})"
            in html)
    auc = pd.read_csv(out / "tables" / "validation.csv").iloc[0]
    assert f"AUC {auc['value']:.3f} (DeLong 95 % CI {auc['lower']:.3f}–{auc['upper']:.3f})" in html


def test_source_date_epoch_makes_model_json_reproducible(tmp_path, capsys, monkeypatch):
    """Two runs with SOURCE_DATE_EPOCH set write byte-identical model.json, stamped with that
    time; a malformed value stops the study before any output, exit 2."""
    cohort = tmp_path / "cohort.parquet"
    assert main(["synth-cohort", "--n", "600", "--seed", "2", "--out", str(cohort)]) == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1735689600")
    for run in ("a", "b"):
        assert main(["study", "--data", str(cohort), "--out", str(tmp_path / run),
                     "--bootstrap", "3"]) == 0
    a, b = ((tmp_path / run / "model.json").read_bytes() for run in ("a", "b"))
    assert a == b
    assert json.loads(a)["created_utc"] == "2025-01-01T00:00:00+00:00"
    assert "generated 2025-01-01 00:00 UTC" in (tmp_path / "a" / "report.html").read_text()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "tomorrow")
    capsys.readouterr()
    assert main(["study", "--data", str(cohort), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: SOURCE_DATE_EPOCH: 'tomorrow' is not an integer")
    assert len(err.splitlines()) == 1 and not (tmp_path / "c").exists()
