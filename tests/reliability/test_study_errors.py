"""`study` and `predict` refuse bad tables, options and models that cannot be estimated with one
line, exit 2, nothing written; QC-flagged participants are excluded unless --include-flagged."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pandas as pd
import pytest

from myocomp.study.checks import exclude_flagged

from .conftest import assert_refused, run_cli, snapshot

S = ["study", "--bootstrap", "0"]

STUDY_CASES = {
    "out_is_data_file": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/cohort.csv"], "same file as --data"),
    "out_is_metrics_file": (S + ["--data", "{c}/pheno.csv", "--metrics", "{c}/metrics.csv",
                                 "--out", "{c}/metrics.csv"], "same file as --metrics"),
    "out_under_a_file": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/cohort.csv/out"], "is a file"),
    "out_in_sys": (S + ["--data", "{c}/cohort.csv", "--out", "/sys/study"], "not writable"),
    "seed_negative": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/o", "--seed", "-1"], "--seed"),
    "seed_negative_in_toml": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/o", "--config",
                                   "{c}/seed_negative.toml"], "seed"),
    "bootstrap_negative": (["study", "--data", "{c}/cohort.csv", "--out", "{c}/o", "--bootstrap", "-1"],
                           "--bootstrap"),
    "bootstrap_text": (["study", "--data", "{c}/cohort.csv", "--out", "{c}/o", "--bootstrap", "x"],
                       "--bootstrap"),
    "pa_breaks_one_number": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/o", "--config",
                                  "{c}/pa_short.toml"], "pa_breaks"),
    "pa_breaks_not_a_list": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/o", "--config",
                                  "{c}/pa_int.toml"], "pa_breaks"),
    "pa_breaks_three_numbers": (S + ["--data", "{c}/cohort.csv", "--out", "{c}/o", "--config",
                                     "{c}/pa_long.toml"], "pa_breaks"),
    "met_1e300": (S + ["--data", "{c}/met_1e300.csv", "--out", "{c}/o"], "met_min_week"),
    "met_all_nan": (S + ["--data", "{c}/met_all_nan.csv", "--out", "{c}/o"], ""),
    "one_sex": (S + ["--data", "{c}/one_sex.csv", "--out", "{c}/o"], "are female"),
    "no_events": (S + ["--data", "{c}/no_events.csv", "--out", "{c}/o"], "column 'cbp'"),
    "covariate_without_variation": (S + ["--data", "{c}/no_osteoporosis.csv", "--out", "{c}/o"],
                                    "osteoporosis"),
    "single_person_site": (S + ["--data", "{c}/single_site.csv", "--out", "{c}/o"], "lonely"),
    "one_site": (S + ["--data", "{c}/one_site.csv", "--out", "{c}/o"], "one site"),
    "metrics_text": (S + ["--data", "{c}/pheno.csv", "--metrics", "{c}/metrics_text.csv",
                          "--out", "{c}/o"], "lean_volume_ml"),
    "metrics_negative": (S + ["--data", "{c}/pheno.csv", "--metrics", "{c}/metrics_negative.csv",
                              "--out", "{c}/o"], "lean_volume_ml"),
    # all females carry qc_swap_suspected: excluded by default -> one sex left -> refused
    "flagged_rows_excluded_by_default": (S + ["--data", "{c}/pheno.csv", "--metrics",
                                              "{c}/metrics_flag_females.csv", "--out", "{c}/o"],
                                         "are male"),
}


@pytest.fixture
def cwork(tmp_path, cohort):
    d = tmp_path / "c"
    shutil.copytree(cohort, d)
    return d


@pytest.mark.parametrize("case", sorted(STUDY_CASES))
def test_study_refused_with_one_line_and_nothing_written(case, cwork, capsys):
    template, expect = STUDY_CASES[case]
    before = snapshot(cwork)
    res = run_cli([a.replace("{c}", str(cwork)) for a in template], capsys)
    assert_refused(res, expect)
    assert snapshot(cwork) == before


def test_study_progress_is_on_stdout_not_before_the_error(cwork, capsys):
    res = run_cli(S + ["--data", str(cwork / "one_sex.csv"), "--out", str(cwork / "o")], capsys)
    assert_refused(res)
    assert "reading and validating" in res.out


def test_include_flagged_keeps_them_and_outputs_follow_the_umask(study_run):
    out, _ = study_run
    table1 = pd.read_csv(out / "tables" / "table1.csv")
    assert not table1.empty
    assert not list(out.parent.glob(".myocomp-stage-*"))  # staging folder gone
    for path in [out / "model.json", out / "report.html", out / "tables" / "table1.csv",
                 out / "figures" / "nomogram.png"]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
    model = json.loads((out / "model.json").read_text())
    assert model["config"]["options"]["include_flagged"] is True


def test_exclude_flagged_drops_participants_with_any_flag():
    table = pd.DataFrame({"participant_id": ["a", "a", "b", "c"], "group": ["back", "psoas"] * 2,
                          "qc_swap_suspected": [False, False, "True", False],
                          "qc_geometry": [False, True, False, False], "qc_notes": ["x"] * 4})
    said = []
    kept = exclude_flagged(table, say=said.append)
    assert list(kept["participant_id"]) == ["c"]
    assert "excluding 2" in said[0]
    assert len(exclude_flagged(table, include_flagged=True)) == 4
    # only the analysed group's rows count: a's psoas flag does not exclude it from 'back'
    assert list(exclude_flagged(table, group="back")["participant_id"]) == ["a", "a", "c"]


def test_truncated_field_of_view_is_said_not_excluded():
    table = pd.DataFrame({"participant_id": ["a", "b", "c"], "group": ["back"] * 3,
                          "qc_swap_suspected": [False, True, False],
                          "qc_truncated_fov": [True, False, True]})
    said = []
    kept = exclude_flagged(table, say=said.append, group="back")
    assert list(kept["participant_id"]) == ["a", "c"]
    assert any("2 participant(s) with muscles cut by the field of view" in m for m in said)
    assert any("excluding 1" in m for m in said)


PREDICT = ["predict", "--model", "{m}", "--age", "50", "--sex", "female", "--bmi", "25",
           "--intermat-ml", "40"]


def _bad_model(study_run, tmp_path, change):
    model = json.loads((study_run[0] / "model.json").read_text())
    change(model)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return path


@pytest.mark.parametrize("case,extra,expect", [
    ("lean_1e12", ["--lean-volume-ml", "1e12"], "lean_volume_ml"),
    ("lean_nan", ["--lean-volume-ml", "nan"], "lean_volume_ml"),
    ("lean_negative", ["--lean-volume-ml", "-5"], "lean_volume_ml"),
    ("age_15", ["--lean-volume-ml", "900", "--age", "15"], "age"),
    ("intermat_negative", ["--lean-volume-ml", "900", "--intermat-ml", "-1"], "intermat_ml"),
    ("bmi_200", ["--lean-volume-ml", "900", "--bmi", "200"], "bmi"),
    ("height_text", ["--lean-volume-ml", "900", "--height-cm", "tall"], "--height-cm"),
])
def test_predict_inputs_range_checked(case, extra, expect, study_run, capsys):
    argv = [a.replace("{m}", str(study_run[0] / "model.json")) for a in PREDICT] + extra
    assert_refused(run_cli(argv, capsys), expect)


@pytest.mark.parametrize("case,change,expect", [
    ("unknown_term", lambda m: m["nomogram_model"]["params"].update(bogus=0.3), "bogus"),
    ("nonfinite_coefficient", lambda m: m["nomogram_model"]["params"].update(age=None), "age"),
    ("no_params", lambda m: m["nomogram_model"].pop("params"), "params"),
])
def test_predict_refuses_a_broken_model(case, change, expect, study_run, tmp_path, capsys):
    path = _bad_model(study_run, tmp_path, change)
    argv = [a.replace("{m}", str(path)) for a in PREDICT] + ["--lean-volume-ml", "900"]
    assert_refused(run_cli(argv, capsys), expect)


def test_predict_still_scores_a_plausible_person(study_run, capsys):
    argv = [a.replace("{m}", str(study_run[0] / "model.json")) for a in PREDICT]
    res = run_cli(argv + ["--lean-volume-ml", "900", "--json"], capsys)
    assert res.code == 0, res.err
    assert 0 < json.loads(res.out)["probability"] < 1
