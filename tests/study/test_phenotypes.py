"""Phenotype validation and the study config: clear one-line errors, exit code 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from myocomp.cli import main
from myocomp.errors import ConfigError, DataError
from myocomp.study.phenotypes import (
    StudyConfig,
    join_metrics,
    load_config,
    validate_phenotypes,
)
from myocomp.synth.cohort import simulate_cohort


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return simulate_cohort(200, seed=11).data


def _run(tmp_path, capsys, table: pd.DataFrame, config: str | None = None, extra=()):
    data = tmp_path / "pheno.csv"
    table.to_csv(data, index=False)
    argv = ["study", "--data", str(data), "--out", str(tmp_path / "out"), "--bootstrap", "0"]
    if config is not None:
        cfg = tmp_path / "study.toml"
        cfg.write_text(config)
        argv += ["--config", str(cfg)]
    capsys.readouterr()
    rc = main([*argv, *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


def _assert_one_line(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    # progress lines may precede it; the error itself is the one last line
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], (needle, err)


def test_missing_column(tmp_path, capsys, cohort):
    rc, err = _run(tmp_path, capsys, cohort.drop(columns=["bmi"]))
    _assert_one_line(rc, err, "'bmi'", "missing")


def test_misspelt_column_gets_a_suggestion(tmp_path, capsys, cohort):
    rc, err = _run(tmp_path, capsys, cohort.rename(columns={"osteoporosis": "osteoporsis"}))
    _assert_one_line(rc, err, "'osteoporosis'", "did you mean 'osteoporsis'")


def test_text_in_numeric_column(tmp_path, capsys, cohort):
    bad = cohort.astype({"age": object})
    bad.loc[4, "age"] = "fifty"
    rc, err = _run(tmp_path, capsys, bad)
    _assert_one_line(rc, err, "'age'", "'fifty'", "row 6", bad.loc[4, "participant_id"])


@pytest.mark.parametrize("age", [-3, 300])
def test_out_of_range_age(tmp_path, capsys, cohort, age):
    bad = cohort.copy()
    bad.loc[10, "age"] = age
    rc, err = _run(tmp_path, capsys, bad)
    _assert_one_line(rc, err, "'age'", f"value {age}", "outside", "row 12")


def test_out_of_range_pain_and_bmi(tmp_path, capsys, cohort):
    bad = cohort.copy()
    bad.loc[0, "pain_intensity"] = 11
    _assert_one_line(*_run(tmp_path, capsys, bad), "'pain_intensity'", "[0, 10]")
    bad = cohort.copy()
    bad.loc[0, "bmi"] = 3.0
    _assert_one_line(*_run(tmp_path, capsys, bad), "'bmi'", "outside")


def test_unexpected_sex_code(tmp_path, capsys, cohort):
    bad = cohort.copy()
    bad.loc[3, "sex"] = "x"
    _assert_one_line(*_run(tmp_path, capsys, bad), "'sex'", "unexpected code 'x'", "row 5")


def test_numeric_sex_needs_config(tmp_path, capsys, cohort):
    coded = cohort.assign(sex=np.where(cohort["sex"] == "female", 1, 0))
    _assert_one_line(*_run(tmp_path, capsys, coded), "'sex'", "[sex_coding]")
    cfg = StudyConfig.from_dict({"sex_coding": {"female": 1, "male": 0}})
    clean = validate_phenotypes(coded, cfg)
    assert (clean["sex"] == cohort["sex"]).all()


def test_duplicate_ids(tmp_path, capsys, cohort):
    bad = cohort.copy()
    bad.loc[7, "participant_id"] = bad.loc[2, "participant_id"]
    _assert_one_line(*_run(tmp_path, capsys, bad), "duplicate participant_id",
                     bad.loc[2, "participant_id"])


def test_unknown_config_keys(tmp_path, capsys, cohort):
    rc, err = _run(tmp_path, capsys, cohort, "[options]\nbootstrp = 10\n")
    _assert_one_line(rc, err, "unknown config key 'bootstrp'", "did you mean 'bootstrap'",
                     "study.toml")
    rc, err = _run(tmp_path, capsys, cohort, "[colums]\nage = 'Alter'\n")
    _assert_one_line(rc, err, "unknown config key 'colums'", "did you mean 'columns'")
    rc, err = _run(tmp_path, capsys, cohort, "[columns]\nagee = 'Alter'\n")
    _assert_one_line(rc, err, "unknown column key 'agee'", "did you mean 'age'")
    rc, err = _run(tmp_path, capsys, cohort, "[options]\nzscore_method = 'weird'\n")
    _assert_one_line(rc, err, "zscore_method")
    rc, err = _run(tmp_path, capsys, cohort, "[options\n")
    _assert_one_line(rc, err, "not valid TOML")


def test_config_maps_missing_column(tmp_path, capsys, cohort):
    rc, err = _run(tmp_path, capsys, cohort.rename(columns={"age": "Alter"}),
                   "[columns]\nage = 'Altr'\n")
    _assert_one_line(rc, err, "'Altr'", "did you mean 'Alter'")


def test_mapping_codes_and_missing_values(cohort):
    raw = cohort.rename(columns={"age": "Alter", "sex": "Geschlecht", "cbp": "rueckenschmerz"})
    raw = raw.astype({"Geschlecht": object, "diabetes": object, "bmi": object})
    raw.loc[0, "Geschlecht"] = "W"
    raw.loc[1, "Geschlecht"] = "m"
    raw.loc[2, "diabetes"] = "yes"
    raw.loc[3, "diabetes"] = "nein"
    raw.loc[4, "bmi"] = None
    cfg = StudyConfig.from_dict({"columns": {"age": "Alter", "sex": "Geschlecht",
                                             "cbp": "rueckenschmerz"}})
    d = validate_phenotypes(raw, cfg)
    assert list(d["sex"][:2]) == ["female", "male"]
    assert list(d["diabetes"][2:4]) == [1.0, 0.0]
    assert np.isnan(d.loc[4, "bmi"])
    assert d["age"].equals(cohort["age"].astype(float))
    joined, _ = join_metrics(d, None)
    assert np.isnan(joined.loc[4, "lmm"])


def test_join_with_long_metrics_reports_unmatched(cohort):
    pheno = validate_phenotypes(cohort.drop(columns=["volume_ml", "lean_volume_ml",
                                                     "intermat_volume_ml", "group"]))
    m = cohort[["participant_id", "volume_ml", "lean_volume_ml", "intermat_volume_ml"]]
    metrics = pd.concat([m.assign(group="back"), m.assign(group="psoas", lean_volume_ml=1.0)])
    metrics = metrics[metrics["participant_id"] != cohort.loc[0, "participant_id"]]
    extra = m.iloc[:1].assign(participant_id="NOT_IN_PHENO", group="back")
    joined, report = join_metrics(pheno, pd.concat([metrics, extra]), group="back")
    assert report.n_joined == len(cohort) - 1 == len(joined)
    assert report.phenotypes_without_metrics == (cohort.loc[0, "participant_id"],)
    assert report.metrics_without_phenotypes == ("NOT_IN_PHENO",)
    # back rows were used (psoas rows have lean volume 1.0)
    assert (joined["lean_volume_ml"] > 100).all()
    np.testing.assert_allclose(joined["lmm"], joined["lean_volume_ml"] / joined["bmi"])
    with pytest.raises(DataError, match="no rows of group 'gluteal'"):
        join_metrics(pheno, metrics, group="gluteal")
    with pytest.raises(DataError, match="lacks lean_volume_ml"):
        join_metrics(pheno, None)


def test_load_config_options(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[options]\nbootstrap = 50\nseed = 9\nsymptom_threshold = 5\n"
                    "intermat_metric = 'intermat_fraction'\npa_breaks = [600, 3000]\n")
    cfg = load_config(path)
    assert (cfg.bootstrap, cfg.seed, cfg.symptom_threshold) == (50, 9, 5)
    assert cfg.intermat_metric == "intermat_fraction" and cfg.pa_breaks == (600.0, 3000.0)
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="intermat_metric"):
        StudyConfig(intermat_metric="intermat")


def test_read_tables_of_every_format(tmp_path, cohort):
    from myocomp.errors import InputFileError
    from myocomp.study.phenotypes import read_table

    small = cohort.head(20)
    small.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    # German spreadsheet export: semicolons and decimal commas
    small.to_csv(tmp_path / "p.csv", sep=";", decimal=",", index=False)
    small.to_parquet(tmp_path / "p.parquet")
    for name in ("p.tsv", "p.csv", "p.parquet"):
        d = validate_phenotypes(read_table(tmp_path / name))
        np.testing.assert_allclose(d["bmi"], small["bmi"])
        assert list(d["sex"]) == list(small["sex"])
    with pytest.raises(InputFileError, match="file not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(InputFileError, match="unsupported table format"):
        read_table(tmp_path / "p.xlsx")
